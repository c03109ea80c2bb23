"""The on-policy speed paths compute the same numbers as the straightforward code they replace:
the PPO agent's update loop (mask dropping, per-epoch shuffles, statistics reduced once), rlhf's
former update loop, and the flat parameter tensor of PPO and A2C (one-op optimizer, clipping and
zeroing)."""

import copy

import pytest
import torch

from classic_rl.agents.actor_critic import A2C
from classic_rl.agents.on_policy import compute_gae
from classic_rl.agents.ppo import PPO
from classic_rl.core.ppo import (
    PolicyEvaluation,
    PPOUpdateConfig,
    masked_mean,
    policy_loss,
    ppo_update,
    value_loss,
)


class _TokenPolicy(torch.nn.Module):
    """A linear policy and value over (B, T, F) features, like an LM over tokens."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pi = torch.nn.Linear(5, 3)
        self.v = torch.nn.Linear(5, 1)

    def forward(self, mb: dict) -> PolicyEvaluation:
        logp = torch.log_softmax(self.pi(mb["features"]), -1)
        new = logp.gather(-1, mb["actions"][..., None]).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1)
        return PolicyEvaluation(new, self.v(mb["features"]).squeeze(-1), entropy)


def _batch(masked: bool) -> dict:
    g = torch.Generator().manual_seed(1)
    B, T = 8, 4
    mask = torch.ones(B, T)
    if masked:
        mask[::2, 2:] = 0.0
    return {
        "features": torch.randn(B, T, 5, generator=g),
        "actions": torch.randint(0, 3, (B, T), generator=g),
        "logprobs": torch.log(torch.full((B, T), 1 / 3)) + 0.1 * torch.randn(B, T, generator=g),
        "values": torch.randn(B, T, generator=g),
        "advantages": torch.randn(B, T, generator=g),
        "returns": torch.randn(B, T, generator=g),
        "mask": mask,
    }


def _reference_update(batch, model, optimizer, config, generator):
    """The plain loop: a gather per minibatch, masked losses, statistics summed step by step."""
    n, mb_size = batch["mask"].shape[0], batch["mask"].shape[0] // config.num_minibatches
    totals, count = {}, 0
    for _ in range(config.num_epochs):
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, mb_size):
            mb = {k: v[perm[start : start + mb_size]] for k, v in batch.items()}
            out = model(mb)
            pg, pg_stats = policy_loss(out.logprobs, mb["logprobs"], mb["advantages"], mb["mask"], config.clip_range)
            v_loss, v_clip = value_loss(out.values, mb["values"], mb["returns"], mb["mask"], config.clip_range_value)
            entropy = masked_mean(out.entropy, mb["mask"])
            loss = pg + config.vf_coef * v_loss - config.ent_coef * entropy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            step = {"loss/policy": pg, "loss/value": v_loss, "loss/entropy": entropy,
                    "policy/approxkl": pg_stats["approx_kl"], "policy/clipfrac": pg_stats["clipfrac"],
                    "policy/ratio": pg_stats["ratio"], "val/clipfrac": v_clip}
            for k, v in step.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            count += 1
    return {k: v / count for k, v in totals.items()}


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("clip_value", [None, 0.2])
def test_ppo_update_equals_the_plain_minibatch_loop(masked, clip_value):
    config = PPOUpdateConfig(num_epochs=3, num_minibatches=2, clip_range=0.1, clip_range_value=clip_value,
                             ent_coef=0.01, max_grad_norm=0.5, normalize_advantages=False)
    batch = _batch(masked)
    fast, plain = _TokenPolicy(), _TokenPolicy()
    opt_fast = torch.optim.Adam(fast.parameters(), lr=0.05)
    opt_plain = torch.optim.Adam(plain.parameters(), lr=0.05)
    stats = ppo_update(batch, fast, opt_fast, fast.parameters(), config, generator=torch.Generator().manual_seed(3))
    expected = _reference_update(batch, plain, opt_plain, config, torch.Generator().manual_seed(3))
    assert stats["epochs_run"] == 3
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert stats["policy/clipfrac"] > 0  # the clipped branch was exercised
    for p, q in zip(fast.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_one_minibatch_update_uses_the_batch_unshuffled_with_the_same_result():
    config = PPOUpdateConfig(num_epochs=2, num_minibatches=1, ent_coef=0.0, normalize_advantages=True)
    batch = _batch(masked=False)
    fast, plain = _TokenPolicy(), _TokenPolicy()
    opt_fast = torch.optim.SGD(fast.parameters(), lr=0.1)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.1)
    ppo_update(batch, fast, opt_fast, fast.parameters(), config)
    reference = {**batch, "advantages": (batch["advantages"] - batch["advantages"].mean()) / batch["advantages"].std()}
    _reference_update(reference, plain, opt_plain, PPOUpdateConfig(**{**config.__dict__, "normalize_advantages": False}),
                      torch.Generator().manual_seed(0))
    for p, q in zip(fast.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


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
            dist, values = policy(mb["obs"])
            pg, pg_stats = policy_loss(dist.log_prob(mb["actions"]), mb["logprobs"], mb["advantages"], None, cfg.clip_range)
            v_loss, v_clip = value_loss(values, mb["values"], mb["returns"], None, cfg.clip_range_vf)
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


@pytest.mark.parametrize("settings", [{"ent_coef": 0.01, "clip_range_vf": None}, {"ent_coef": 0.0, "clip_range_vf": 0.2}])
def test_ppo_agent_loop_equals_the_plain_minibatch_loop(monkeypatch, settings):
    monkeypatch.setattr(PPO, "use_flat_parameters", False)
    agent = PPO("CartPole-v1", seed=0, num_envs=2, n_steps=32, batch_size=16, n_epochs=3, learning_rate=0.01,
                normalize_advantage=False, max_grad_norm=0.5, clip_range=0.1, **settings)
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
