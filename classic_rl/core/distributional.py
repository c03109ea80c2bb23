"""Categorical (C51) distributional RL math, shared by C51/Rainbow and D4PG's critic.

The return distribution Z(s, a) lives on a fixed support of K atoms
``z_j = v_min + j * dz``, ``dz = (v_max - v_min) / (K - 1)`` (Bellemare et al. 2017). The target
``r + discount * Z(s')`` falls between atoms, so it is projected back onto the support: each
shifted atom ``Tz_i = clip(r + discount * z_i, v_min, v_max)`` splits its probability between
its two neighbouring atoms in proportion to closeness,

    (Phi T Z)_j = sum_i p_i * max(0, 1 - |Tz_i - z_j| / dz),

which is the "l / u" projection of the paper written as a triangle kernel (it needs no special
case when ``Tz_i`` lands exactly on an atom). The loss is the cross-entropy
``-sum_j (Phi T Z)_j log p_j(s, a)``.
"""

from __future__ import annotations

import torch


def make_support(v_min: float, v_max: float, n_atoms: int) -> torch.Tensor:
    """The K atoms ``linspace(v_min, v_max, K)``; raises ValueError on an empty or degenerate range."""
    if n_atoms < 2:
        raise ValueError(f"n_atoms must be at least 2, got {n_atoms}")
    if not v_max > v_min:
        raise ValueError(f"v_max ({v_max}) must be greater than v_min ({v_min})")
    return torch.linspace(v_min, v_max, n_atoms)


def categorical_projection(
    next_probs: torch.Tensor,
    rewards: torch.Tensor,
    discounts: torch.Tensor,
    support: torch.Tensor,
) -> torch.Tensor:
    """Project ``r + discount * Z`` onto ``support``.

    Args:
        next_probs: ``(B, K)`` probabilities of the next-state distribution (rows sum to 1).
        rewards: ``(B,)`` (n-step) rewards.
        discounts: ``(B,)`` bootstrap discounts, 0 for terminal transitions (then all mass goes
            to the atoms around ``r``).
        support: ``(K,)`` evenly spaced atoms.

    Returns:
        ``(B, K)`` target probabilities; each row sums to the row sum of ``next_probs``.
    """
    v_min, v_max = support[0], support[-1]
    delta = (v_max - v_min) / (support.numel() - 1)
    shifted = (rewards[:, None] + discounts[:, None] * support[None, :]).clamp(v_min, v_max)  # (B, K): Tz_i
    # weight[b, i, j] = max(0, 1 - |Tz_i - z_j| / dz): how much of atom i goes to atom j
    weight = (1.0 - (shifted[:, :, None] - support[None, None, :]).abs() / delta).clamp(min=0.0)
    return torch.bmm(next_probs[:, None, :], weight).squeeze(1)
