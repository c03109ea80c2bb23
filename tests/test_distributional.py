"""The C51 projection of r + discount * Z onto a fixed support, on hand-computed cases."""

import numpy as np
import pytest
import torch

from classic_rl.core.distributional import categorical_projection, make_support

SUPPORT = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])  # v_min 0, v_max 4, dz 1


def project(probs, reward, discount, support=SUPPORT):
    probs = torch.as_tensor(probs, dtype=torch.float32)[None]
    return categorical_projection(probs, torch.tensor([reward]), torch.tensor([discount]), support)[0]


def test_shift_between_atoms_splits_mass_evenly():
    # all mass on z=1; 0.5 + 1 * 1 = 1.5 lies halfway between atoms 1 and 2
    out = project([0, 1, 0, 0, 0], reward=0.5, discount=1.0)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.5, 0.5, 0.0, 0.0]))


def test_terminal_transition_puts_all_mass_around_the_reward():
    # discount 0: every atom maps to r = 2.25 -> 0.75 on atom 2, 0.25 on atom 3
    out = project([0.2] * 5, reward=2.25, discount=0.0)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, 0.75, 0.25, 0.0]))


def test_values_outside_the_support_are_clipped_to_its_ends():
    torch.testing.assert_close(project([0.2] * 5, reward=10.0, discount=1.0), torch.tensor([0.0, 0, 0, 0, 1.0]))
    torch.testing.assert_close(project([0.2] * 5, reward=-3.0, discount=0.5), torch.tensor([1.0, 0, 0, 0, 0]))


def test_shift_onto_atoms_keeps_mass_on_them():
    # Tz = [1, 2, 3, 4, 5->4]: atom i's mass lands exactly on atom i+1, the last two pile up at 4
    out = project([0.2] * 5, reward=1.0, discount=1.0)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.2, 0.2, 0.2, 0.4]))


def test_discount_shrinks_the_distribution():
    # Tz = 0.5 * z = [0, .5, 1, 1.5, 2]; p = [.1,.2,.3,.2,.2]
    out = project([0.1, 0.2, 0.3, 0.2, 0.2], reward=0.0, discount=0.5)
    expected = torch.tensor([0.1 + 0.1, 0.1 + 0.3 + 0.1, 0.1 + 0.2, 0.0, 0.0])
    torch.testing.assert_close(out, expected)


def _reference_projection(probs, rewards, discounts, support):
    """The paper's algorithm 1, loop by loop (l = floor(b), u = ceil(b))."""
    v_min, v_max, k = support[0], support[-1], len(support)
    dz = (v_max - v_min) / (k - 1)
    out = np.zeros_like(probs)
    for b_i in range(len(probs)):
        for j in range(k):
            tz = min(max(rewards[b_i] + discounts[b_i] * support[j], v_min), v_max)
            b = (tz - v_min) / dz
            lo, hi = int(np.floor(b)), int(np.ceil(b))
            if lo == hi:
                out[b_i, lo] += probs[b_i, j]
            else:
                out[b_i, lo] += probs[b_i, j] * (hi - b)
                out[b_i, hi] += probs[b_i, j] * (b - lo)
    return out


def test_matches_the_papers_algorithm_on_random_batches():
    rng = np.random.default_rng(0)
    support = torch.linspace(-10.0, 10.0, 51, dtype=torch.float64)
    probs = rng.dirichlet(np.ones(51), size=16)
    rewards = rng.normal(0, 3, size=16)
    discounts = rng.choice([0.0, 0.99, 0.99**3], size=16)
    out = categorical_projection(torch.tensor(probs), torch.tensor(rewards), torch.tensor(discounts), support)
    expected = _reference_projection(probs, rewards, discounts, support.numpy())
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-9)
    np.testing.assert_allclose(out.sum(1).numpy(), 1.0, atol=1e-9)


def test_make_support_rejects_bad_ranges():
    with pytest.raises(ValueError, match="v_max"):
        make_support(1.0, 1.0, 51)
    with pytest.raises(ValueError, match="n_atoms"):
        make_support(-1.0, 1.0, 1)
