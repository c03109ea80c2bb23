"""The on-policy speed paths compute the same numbers as the straightforward code they replace:
the PPO agent's update loop (mask dropping, per-epoch shuffles, statistics reduced once) and the
flat parameter tensor of PPO and A2C (one-op optimizer, clipping and
zeroing)."""

import copy

import pytest
import torch

from classic_rl.agents.actor_critic import A2C
from classic_rl.agents.on_policy import compute_gae
from classic_rl.agents.ppo import PPO
from classic_rl.core.losses import masked_whiten, policy_loss, value_mse


@pytest.mark.parametrize("agent_class,settings", [
    (PPO, {"num_envs": 2, "n_steps": 32, "batch_size": 16, "n_epochs": 2, "ent_coef": 0.01}),
    (A2C, {"num_envs": 2, "n_steps": 5}),
])
def test_flat_parameters_train_exactly_like_separate_tensors(monkeypatch, agent_class, settings):
    flat = agent_class("CartPole-v1", seed=0, **settings)
    flat.learn(total_steps=256, progress=False)
    monkeypatch.setattr(agent_class, "use_flat_parameters", False)
    separate = agent_class("CartPole-v1", seed=0, **settings)
    separate.learn(total_steps=256, progress=False)
    assert flat.flat_params is not None and separate.flat_params is None
    for (name, p), q in zip(flat.policy.named_parameters(), separate.policy.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    fresh = agent_class("CartPole-v1", seed=0, **settings)
    moved = 0.0
    for p, q in zip(flat.policy.parameters(), fresh.policy.parameters()):
        moved = max(moved, float((p - q).abs().max()))
    assert moved > 1e-4  # training did change the weights (the comparison is not between two untouched nets)


def _reference_agent_update(batch, policy, optimizer, cfg):
    """PPO's update written the plain way: a gather per minibatch, losses and statistics per step."""
    n = batch["mask"].shape[0]
    mb_size = cfg.batch_size
    totals, count = {}, 0
    for _ in range(cfg.n_epochs):
        perm = torch.randperm(n)
        for start in range(0, n, mb_size):
            mb = {k: v[perm[start : start + mb_size]] for k, v in batch.items()}
            advantages = masked_whiten(mb["advantages"]) if cfg.normalize_advantage else mb["advantages"]
            dist, values = policy(mb["obs"])
            pg, pg_stats = policy_loss(dist.log_prob(mb["actions"]), mb["logprobs"], advantages, None, cfg.clip_range)
            v_loss, v_clip = value_mse(values, mb["values"], mb["returns"], None, cfg.clip_range_vf)
            entropy = dist.entropy().mean()
            loss = pg + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()
            step = {"loss/policy": pg, "loss/value": v_loss, "policy/approxkl": pg_stats["approx_kl"],
                    "policy/clipfrac": pg_stats["clipfrac"], "policy/ratio": pg_stats["ratio"], "val/clipfrac": v_clip}
            if cfg.ent_coef:
                step["loss/entropy"] = entropy
            for k, v in step.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            count += 1
    return {k: v / count for k, v in totals.items()}


@pytest.mark.parametrize("settings", [
    {"ent_coef": 0.01, "clip_range_vf": None, "normalize_advantage": False, "batch_size": 16},
    {"ent_coef": 0.0, "clip_range_vf": 0.2, "normalize_advantage": True, "batch_size": 24},  # last minibatch 16
])
def test_ppo_agent_loop_equals_the_plain_minibatch_loop(monkeypatch, settings):
    monkeypatch.setattr(PPO, "use_flat_parameters", False)
    agent = PPO("CartPole-v1", seed=0, num_envs=2, n_steps=32, n_epochs=3, learning_rate=0.01,
                max_grad_norm=0.5, clip_range=0.1, **settings)
    agent.collector = agent.make_collector()
    rollout = agent.collector.collect(64)
    policy, optimizer = copy.deepcopy((agent.policy, agent.optimizers()["optimizer"]))
    torch.manual_seed(7)
    stats = agent.update(rollout, 1.0)
    advantages, returns = compute_gae(rollout, agent.config.gamma, agent.config.gae_lambda)
    batch = {"obs": rollout.obs.flatten(0, 1), "actions": rollout.actions.flatten(0, 1),
             "logprobs": rollout.logprobs.flatten(), "values": rollout.values.flatten(),
             "advantages": advantages.flatten(), "returns": returns.flatten(), "mask": rollout.mask.flatten()}
    torch.manual_seed(7)
    expected = _reference_agent_update(batch, policy, optimizer, agent.config)
    assert stats["epochs_run"] == 3
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert stats["policy/clipfrac"] > 0  # the clipped branch was exercised
    for p, q in zip(agent.policy.parameters(), policy.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
