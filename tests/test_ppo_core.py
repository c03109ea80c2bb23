"""The shared PPO core: GAE, clipped losses, masking and the update loop."""

import pytest
import torch

from classic_rl.core.advantages import gae
from classic_rl.core.losses import masked_mean, masked_whiten, policy_loss, surrogate_stats, value_loss


def _reference_gae(rewards, values, next_values, terminated, ends, gamma, lam):
    """Plain-Python GAE written from the definition, one environment."""
    T = len(rewards)
    adv = [0.0] * T
    running = 0.0
    for t in reversed(range(T)):
        delta = rewards[t] + gamma * next_values[t] * (1 - terminated[t]) - values[t]
        running = delta + gamma * lam * (1 - ends[t]) * running
        adv[t] = running
    return adv


def test_gae_matches_hand_computation_with_termination_and_truncation():
    gamma, lam = 0.9, 0.8
    # env 0: terminates at t=1 (no bootstrap), a new episode then runs to the end of the rollout
    # env 1: truncated at t=2 by a time limit (bootstrap with V(final obs) = 5.0)
    rewards = torch.tensor([[1.0, 2.0, 0.5, 1.0], [0.0, 1.0, 1.0, 2.0]])
    values = torch.tensor([[0.5, 1.0, 2.0, 1.5], [1.0, 1.0, 1.0, 0.5]])
    next_values = torch.tensor([[1.0, 9.0, 1.5, 3.0], [1.0, 1.0, 5.0, 0.7]])
    terminated = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    truncated = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    ends = torch.maximum(terminated, truncated)
    adv, ret = gae(rewards, values, next_values=next_values, terminated=terminated, episode_end=ends,
                   gamma=gamma, lam=lam)
    # by hand, env 0: t=1 delta = 2 - 1 = 1 (no bootstrap, the 9.0 must be ignored)
    d3 = 1.0 + 0.9 * 3.0 - 1.5
    d2 = 0.5 + 0.9 * 1.5 - 2.0
    a2 = d2 + 0.72 * d3
    d1 = 2.0 - 1.0
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    a0 = d0 + 0.72 * d1  # the recursion stops at the termination
    torch.testing.assert_close(adv[0], torch.tensor([a0, d1, a2, d3]))
    # env 1: t=2 truncated: delta bootstraps on 5.0 but nothing flows back from t=3
    expected1 = _reference_gae(rewards[1].tolist(), values[1].tolist(), next_values[1].tolist(),
                               terminated[1].tolist(), ends[1].tolist(), gamma, lam)
    torch.testing.assert_close(adv[1], torch.tensor(expected1))
    assert abs(adv[1, 2].item() - (1.0 + 0.9 * 5.0 - 1.0)) < 1e-6
    torch.testing.assert_close(ret, adv + values)


def test_gae_padded_batch_equals_unpadded_sequences():
    torch.manual_seed(0)
    lengths = [5, 3, 1]
    T = max(lengths)
    rewards = torch.randn(3, T)
    values = torch.randn(3, T)
    mask = torch.zeros(3, T)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    # garbage in the padding must not leak into real positions
    rewards = torch.where(mask.bool(), rewards, torch.full_like(rewards, 100.0))
    values_p = torch.where(mask.bool(), values, torch.full_like(values, -50.0))
    adv, ret = gae(rewards, values_p, mask=mask, gamma=1.0, lam=0.95)
    for i, n in enumerate(lengths):
        a_i, r_i = gae(rewards[i : i + 1, :n], values[i : i + 1, :n], gamma=1.0, lam=0.95)
        torch.testing.assert_close(adv[i, :n], a_i[0])
        torch.testing.assert_close(ret[i, :n], r_i[0])
        assert torch.all(adv[i, n:] == 0)


def test_clipped_policy_loss_value_and_gradient_inside_and_outside_clip_range():
    eps = 0.2
    old = torch.zeros(4)
    # ratios 1.1 (inside), 1.5 (outside, positive advantage: clipped, no gradient),
    # 0.5 (outside, positive advantage: unclipped branch is the min, gradient flows),
    # 1.5 with a negative advantage (unclipped branch is pessimistic: gradient flows)
    ratios = torch.tensor([1.1, 1.5, 0.5, 1.5])
    new = torch.log(ratios).requires_grad_(True)
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0])
    loss, stats = policy_loss(new, old, adv, None, eps)
    expected = -torch.tensor([1.1 * 1.0, 1.2 * 1.0, 0.5 * 1.0, 1.5 * -1.0]).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    # d(-A*ratio)/dlogp = -A*ratio / 4 for active unclipped entries, 0 for the clipped one
    torch.testing.assert_close(new.grad, torch.tensor([-1.1, 0.0, -0.5, 1.5]) / 4)
    assert abs(stats["clipfrac"].item() - 0.25) < 1e-6
    assert stats["approx_kl"].item() > 0


def test_value_loss_clipping_takes_the_pessimistic_branch():
    old = torch.tensor([0.0, 0.0])
    new = torch.tensor([1.0, 0.1])
    returns = torch.tensor([1.0, 1.0])
    plain, _ = value_loss(new, old, returns, None, None)
    torch.testing.assert_close(plain, 0.5 * torch.tensor((0.0 + 0.81) / 2))
    clipped, frac = value_loss(new, old, returns, None, 0.2)
    # first: clipped to 0.2 -> error 0.64 > 0; second: inside the range -> 0.81
    torch.testing.assert_close(clipped, 0.5 * torch.tensor((0.64 + 0.81) / 2))
    assert frac.item() == 0.5


def test_masked_statistics_ignore_padding():
    x = torch.tensor([[1.0, 2.0, 99.0], [3.0, 99.0, 99.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert masked_mean(x, m).item() == 2.0
    w = masked_whiten(x, m)
    assert torch.all(w[m == 0] == 0)
    assert abs(masked_mean(w, m).item()) < 1e-6


@pytest.mark.slow
def test_clipped_surrogate_in_a_plain_loop_improves_a_bandit_policy_and_kl_grows():
    """The core's losses are enough for a caller's own loop (no update function in the core)."""
    torch.manual_seed(0)
    logits = torch.zeros(3, requires_grad=True)
    actions = torch.randint(0, 3, (64,))
    rewards = (actions == 2).float()  # action 2 is the good arm
    with torch.no_grad():
        old = torch.log_softmax(logits, -1)[actions]
    advantages = rewards - rewards.mean()
    opt = torch.optim.Adam([logits], lr=0.1)
    for _epoch in range(4):
        for idx in torch.randperm(64).split(16):
            new = torch.log_softmax(logits, -1)[actions[idx]]
            loss, stats = policy_loss(new, old[idx], advantages[idx], None, 0.2)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert torch.softmax(logits, -1)[2] > 0.5
    with torch.no_grad():
        final = surrogate_stats(torch.log_softmax(logits, -1)[actions] - old, advantages)
    assert final["approx_kl"] > 0 and final["clipfrac"] > 0
