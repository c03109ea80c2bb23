"""The core's critic-free advantage estimators, KL estimators and loss aggregations, against values
computed by hand from their definitions."""

import math

import pytest
import torch

from classic_rl.core.advantages import group_advantages, rloo_advantages, whiten_advantages
from classic_rl.core.losses import aggregate_loss, clipped_surrogate, kl_penalty, surrogate_stats

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 5.0])  # two prompts x 4 completions


def test_group_advantages_use_each_prompts_mean_and_unbiased_std():
    adv = group_advantages(REWARDS, group_size=4, scale="group")
    # group 0: mean 0.5, unbiased std sqrt(((0.5^2) * 4) / 3) = sqrt(1/3)
    std0 = math.sqrt(1 / 3)
    assert adv[:4].tolist() == pytest.approx([0.5 / (std0 + 1e-4), -0.5 / (std0 + 1e-4), -0.5 / (std0 + 1e-4), 0.5 / (std0 + 1e-4)])
    # group 1: mean 2.75, deviations -0.75 x3, 2.25; unbiased var (3 * 0.5625 + 5.0625) / 3 = 2.25
    assert adv[4:].tolist() == pytest.approx([-0.75 / 1.5001, -0.75 / 1.5001, -0.75 / 1.5001, 2.25 / 1.5001])


def test_group_advantages_batch_scale_and_dr_grpo_none():
    centred = [0.5, -0.5, -0.5, 0.5, -0.75, -0.75, -0.75, 2.25]
    assert group_advantages(REWARDS, 4, scale="none").tolist() == pytest.approx(centred)
    batch_std = REWARDS.std().item()  # unbiased, over all 8 rewards
    assert group_advantages(REWARDS, 4, scale="batch").tolist() == pytest.approx([c / (batch_std + 1e-4) for c in centred])


def test_equal_rewards_in_a_group_give_zero_advantage_not_nan():
    adv = group_advantages(torch.tensor([3.0, 3.0, 3.0, 1.0, 2.0, 3.0]), 3)
    assert adv[:3].tolist() == [0.0, 0.0, 0.0]
    assert torch.isfinite(adv).all()


def test_rloo_baseline_leaves_the_completion_itself_out():
    adv = rloo_advantages(REWARDS, 4)
    # completion 0 of group 0: 1 - mean(0, 0, 1) = 2/3; completion 7: 5 - mean(2, 2, 2) = 3
    expected = [1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3, 2 - 3, 2 - 3, 2 - 3, 5 - 2]
    assert adv.tolist() == pytest.approx(expected)
    # RLOO's advantages equal group-centred rewards scaled by k / (k - 1)
    assert adv.tolist() == pytest.approx((group_advantages(REWARDS, 4, "none") * 4 / 3).tolist())


def test_group_sizes_that_do_not_divide_the_batch_are_refused():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(REWARDS, 3)
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(REWARDS, 1)


def test_reinforce_pp_whitening_over_valid_positions():
    adv = torch.tensor([[1.0, 3.0, 99.0], [5.0, 99.0, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    out = whiten_advantages(adv, mask)
    # valid values 1, 3, 5: mean 3, unbiased std 2
    assert out[mask.bool()].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
    assert out[~mask.bool()].tolist() == [0.0, 0.0, 0.0]


def test_kl_estimators_match_their_formulas():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -1.0, -0.5])
    d = [0.5, -1.0, 0.0]
    assert kl_penalty(logp, ref, "k1").tolist() == pytest.approx(d)
    assert kl_penalty(logp, ref, "k2").tolist() == pytest.approx([x * x / 2 for x in d])
    assert kl_penalty(logp, ref, "k3").tolist() == pytest.approx([math.exp(-x) - 1 + x for x in d])
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(logp, ref, "k4")


def test_clip_higher_lets_positive_advantages_grow_further():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.25, 0.75]]))  # ratios 1.25 and 0.75
    adv = torch.tensor([[1.0, -1.0]])
    sym, _ = clipped_surrogate(new, old, adv, epsilon=0.2)
    high, _ = clipped_surrogate(new, old, adv, epsilon=0.2, epsilon_high=0.28)
    # symmetric: 1.25 clipped to 1.2 -> -1.2; 0.75 with A<0: max(0.75, 0.8) -> 0.8
    assert sym[0].tolist() == pytest.approx([-1.2, 0.8])
    # clip-higher: 1.25 < 1.28 is not clipped -> -1.25; the lower side is unchanged
    assert high[0].tolist() == pytest.approx([-1.25, 0.8])
    stats = surrogate_stats(torch.log(torch.tensor([[1.25, 0.75]])), adv, None, 0.2)
    assert stats["clipfrac"].item() == pytest.approx(1.0)


def test_sequence_level_ratio_is_the_mean_log_ratio_of_real_tokens():
    old = torch.zeros(1, 3)
    new = torch.tensor([[0.1, 0.3, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    per_token, log_ratio = clipped_surrogate(new, old, torch.tensor([1.0]), mask, epsilon=0.5,
                                             importance_sampling_level="sequence")
    assert log_ratio.shape == (1, 1) and log_ratio.item() == pytest.approx(0.2)
    assert per_token[0].tolist() == pytest.approx([-math.exp(0.2)] * 3)


def test_loss_aggregations_weigh_tokens_as_trl_names_them():
    loss = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    assert aggregate_loss(loss, mask, "grpo").item() == pytest.approx((1.0 + 4.0) / 2)  # per-sequence means
    assert aggregate_loss(loss, mask, "bnpo").item() == pytest.approx(8.0 / 5)  # token mean
    assert aggregate_loss(loss, mask, "dr_grpo", max_length=8).item() == pytest.approx(8.0 / (2 * 8))
    assert aggregate_loss(loss, mask, "dapo", num_items=10).item() == pytest.approx(8.0 / 10)
    assert aggregate_loss(loss, mask, "dapo").item() == pytest.approx(8.0 / 5)
