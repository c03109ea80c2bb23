"""Our DDPG update is Stable-Baselines3's: from the same weights on the same minibatch, both
libraries end at the same weights (up to float rounding). This pins down that return differences
in docs/benchmarks.md come from seeds and exploration draws, not from a different update rule."""

import gymnasium as gym
import numpy as np
import pytest
import stable_baselines3 as sb3  # a dev dependency: the peer of the benchmarks
import torch

import classic_rl


def _linears(seq):
    return [m for m in seq if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize("update_backend", ["fused", "autograd"])
def test_ddpg_update_equals_sb3_from_the_same_weights_and_batch(update_backend):
    from stable_baselines3.common.type_aliases import ReplayBufferSamples

    hidden = [32, 32]
    ours = classic_rl.make("ddpg", "Pendulum-v1", seed=0, hidden=hidden, learning_starts=300,
                           update_backend=update_backend)
    ours.learn(total_steps=300, progress=False)  # random warm-up: replay only, no update
    peer = sb3.DDPG("MlpPolicy", gym.make("Pendulum-v1"), learning_starts=10**9, batch_size=64, seed=0,
                    device="cpu", learning_rate=1e-3, tau=0.005, gamma=ours.config.gamma,
                    policy_kwargs={"net_arch": hidden})
    peer._setup_learn(1000)
    with torch.no_grad():  # SB3's initial weights into ours (nn.Linear (out, in); our critic (in, out))
        for dst, src in [(ours.actor.module, peer.actor.mu), (ours.actor_target.module, peer.actor_target.mu)]:
            for d, s in zip(_linears(dst), _linears(src), strict=True):
                d.weight.copy_(s.weight)
                d.bias.copy_(s.bias)
        for dst, src in [(ours.critic.module, peer.critic.qf0), (ours.critic_target.module, peer.critic_target.qf0)]:
            for i, s in enumerate(_linears(src)):
                getattr(dst, f"w{i}")[0].copy_(s.weight.t())
                getattr(dst, f"b{i}")[0, 0].copy_(s.bias)
    batch = ours.buffer.sample(64)
    n = len(batch)
    dones = (batch.discounts == 0).float()[:, None]
    normalized = ours.normalize_actions(batch.actions)  # SB3's replay holds actions in [-1, 1]
    samples = ReplayBufferSamples(batch.obs.clone(), normalized.clone(), batch.next_obs.clone(), dones,
                                  batch.rewards[:, None].clone())
    peer.replay_buffer.sample = lambda batch_size, env=None: samples
    for _ in range(3):
        ours.train_step(batch)
        peer.train(gradient_steps=1, batch_size=n)
    for dst, src in [(ours.actor.module, peer.actor.mu), (ours.actor_target.module, peer.actor_target.mu)]:
        for d, s in zip(_linears(dst), _linears(src), strict=True):
            np.testing.assert_allclose(d.weight.detach(), s.weight.detach(), atol=1e-5)
    for dst, src in [(ours.critic.module, peer.critic.qf0), (ours.critic_target.module, peer.critic_target.qf0)]:
        for i, s in enumerate(_linears(src)):
            np.testing.assert_allclose(getattr(dst, f"w{i}")[0].detach(), s.weight.detach().t(), atol=1e-5)
            np.testing.assert_allclose(getattr(dst, f"b{i}")[0, 0].detach(), s.bias.detach(), atol=1e-5)
    # the updates moved the weights well beyond the tolerance, so the comparison is not vacuous
    first = _linears(peer.actor.mu)[0].weight.detach()
    assert not torch.allclose(first, _linears(peer.actor_target.mu)[0].weight.detach(), atol=1e-4)
