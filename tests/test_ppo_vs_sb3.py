"""Our PPO update is Stable-Baselines3's ``PPO.train``: from the same weights, on the same rollout
batch and with the same minibatch order, both libraries end at the same weights (up to float
rounding) -- per-minibatch advantage whitening, the shorter last minibatch, the plain-MSE value loss
(clipped prediction with ``clip_range_vf``), the entropy term, gradient clipping and the
``target_kl`` early stop (checked before the step, at 1.5x) included. Return differences in
docs/benchmarks.md then come from seeds and the collection, not from a different update rule."""

import warnings

import numpy as np
import pytest
import stable_baselines3 as sb3  # a dev dependency: the peer of the benchmarks
import torch
from stable_baselines3.common.env_util import make_vec_env
from torch import nn

from classic_rl.agents.on_policy import compute_gae
from classic_rl.agents.ppo import PPO

HIDDEN = [16, 16]


def _linears(module):
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _pairs(ours, peer):
    """(our parameter, SB3's) for every weight of the actor, the critic and the log-std."""
    sb3_actor = _linears(peer.policy.mlp_extractor.policy_net) + [peer.policy.action_net]
    sb3_critic = _linears(peer.policy.mlp_extractor.value_net) + [peer.policy.value_net]
    pairs = []
    for mine, theirs in ((_linears(ours.policy.actor), sb3_actor), (_linears(ours.policy.critic), sb3_critic)):
        for a, b in zip(mine, theirs, strict=True):
            pairs += [(a.weight, b.weight), (a.bias, b.bias)]
    if hasattr(ours.policy, "log_std"):
        pairs.append((ours.policy.log_std, peer.policy.log_std))
    return pairs


def _peer(env_id, cfg, seed):
    """SB3's PPO with our settings (no translation of any number: the same names mean the same)."""
    venv = make_vec_env(env_id, n_envs=cfg.num_envs, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its note that batch_size does not divide the rollout
        peer = sb3.PPO("MlpPolicy", venv, n_steps=cfg.n_steps, batch_size=cfg.batch_size, n_epochs=cfg.n_epochs,
                       learning_rate=cfg.learning_rate, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda,
                       clip_range=cfg.clip_range, clip_range_vf=cfg.clip_range_vf, ent_coef=cfg.ent_coef,
                       vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm, target_kl=cfg.target_kl,
                       normalize_advantage=cfg.normalize_advantage, seed=seed, device="cpu",
                       policy_kwargs={"net_arch": {"pi": HIDDEN, "vf": HIDDEN}, "activation_fn": nn.Tanh})
    peer._setup_learn(cfg.num_envs * cfg.n_steps)  # its logger, which train() writes to
    return peer


def _fill_buffer(peer, rollout, advantages, returns):
    """Our rollout in SB3's buffer, (n_steps, n_envs, ...) as it stores it; its swap-and-flatten
    then orders the transitions env-major, as our ``flatten(0, 1)`` of (n_envs, n_steps)."""
    buf = peer.rollout_buffer
    buf.reset()

    def steps_first(x):
        return x.transpose(0, 1).numpy().astype(np.float32)

    buf.observations[:] = steps_first(rollout.obs).reshape(buf.observations.shape)
    buf.actions[:] = steps_first(rollout.actions).reshape(buf.actions.shape)
    buf.values[:] = steps_first(rollout.values)
    buf.log_probs[:] = steps_first(rollout.logprobs)
    buf.advantages[:] = steps_first(advantages)
    buf.returns[:] = steps_first(returns)
    buf.full, buf.generator_ready = True, False


CASES = {
    # discrete; ent_coef; 64 transitions in minibatches of 24, 24 and 16
    "cartpole-entropy-short-last-minibatch": ("CartPole-v1", dict(
        num_envs=2, n_steps=32, batch_size=24, n_epochs=3, learning_rate=3e-3, ent_coef=0.01, clip_range=0.1)),
    # Gaussian with a free log-std; SB3's value clipping; no advantage whitening
    "pendulum-clip-range-vf": ("Pendulum-v1", dict(
        num_envs=2, n_steps=32, batch_size=16, n_epochs=4, learning_rate=3e-3, clip_range_vf=0.2,
        normalize_advantage=False)),
    # a large step and a small target_kl: the update stops inside its fifth epoch
    "cartpole-target-kl-early-stop": ("CartPole-v1", dict(
        num_envs=2, n_steps=32, batch_size=16, n_epochs=10, learning_rate=1e-2, target_kl=0.01)),
}


@pytest.mark.parametrize("update_backend", ["fused", "autograd"])
@pytest.mark.parametrize("case", list(CASES))
def test_ppo_update_equals_sb3_train_from_the_same_weights_and_rollout(case, update_backend, monkeypatch):
    env_id, settings = CASES[case]
    ours = PPO(env_id, seed=0, hidden=HIDDEN, update_backend=update_backend, **settings)
    cfg = ours.config
    peer = _peer(env_id, cfg, seed=0)
    with torch.no_grad():  # our initial weights into SB3's nets: the rollout's log-probs are both's
        for mine, theirs in _pairs(ours, peer):
            theirs.copy_(mine)
    ours.collector = ours.make_collector()
    rollout = ours.collector.collect(cfg.n_steps)
    advantages, returns = compute_gae(rollout, cfg.gamma, cfg.gae_lambda)
    _fill_buffer(peer, rollout, advantages, returns)
    before = [mine.detach().clone() for mine, _ in _pairs(ours, peer)]

    # the same minibatch order: SB3 draws each epoch's with np.random.permutation, ours with torch.randperm
    n = cfg.num_envs * cfg.n_steps
    torch.manual_seed(11)
    orders = [torch.randperm(n).numpy() for _ in range(cfg.n_epochs)]
    monkeypatch.setattr(np.random, "permutation", lambda size: orders[peer._n_updates])
    torch.manual_seed(11)
    stats = ours.update(rollout, 1.0)
    peer.train()

    assert stats["epochs_run"] == peer._n_updates  # SB3 counts the epoch it stops in, as ours
    if cfg.target_kl is not None:
        assert 1 < stats["epochs_run"] < cfg.n_epochs  # it did stop early, and not at once
    else:
        assert stats["epochs_run"] == cfg.n_epochs
    moved = 0.0
    for (mine, theirs), start in zip(_pairs(ours, peer), before, strict=True):
        np.testing.assert_allclose(mine.detach().numpy(), theirs.detach().numpy(), atol=1e-5, rtol=0)
        moved = max(moved, float((mine.detach() - start).abs().max()))
    assert moved > 1e-3  # the updates moved the weights well beyond the tolerance: not a vacuous comparison
    if cfg.target_kl is None:  # SB3 also logs the minibatch it stopped on, ours only the steps taken
        assert stats["loss/value"] == pytest.approx(peer.logger.name_to_value["train/value_loss"], rel=1e-4)
