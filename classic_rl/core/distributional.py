"""Categorical (C51) distributional RL math, shared by C51/Rainbow and D4PG's critic.

The return distribution Z(s, a) lives on a fixed support of K atoms
``z_j = v_min + j * dz``, ``dz = (v_max - v_min) / (K - 1)`` (Bellemare et al. 2017). The target
``r + discount * Z(s')`` falls between atoms, so it is projected back onto the support: each
shifted atom ``Tz_i = clip(r + discount * z_i, v_min, v_max)`` splits its probability between
its two neighbouring atoms in proportion to closeness,

    (Phi T Z)_j = sum_i p_i * max(0, 1 - |Tz_i - z_j| / dz),

computed as in the paper: with ``b_i = (Tz_i - v_min) / dz``, ``l = floor(b_i)``, ``u = ceil(b_i)``,
atom i sends ``p_i (u - b_i)`` to atom l and ``p_i (b_i - l)`` to atom u (and all of ``p_i`` to l
when ``b_i`` is a whole number, where both of those are 0). O(B K) work and memory. The loss is
the cross-entropy ``-sum_j (Phi T Z)_j log p_j(s, a)``.
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
    n_atoms = support.numel()
    v_min, v_max = support[0], support[-1]
    delta = (v_max - v_min) / (n_atoms - 1)
    shifted = (rewards[:, None] + discounts[:, None] * support[None, :]).clamp(v_min, v_max)  # (B, K): Tz_i
    b = ((shifted - v_min) / delta).clamp(0, n_atoms - 1)
    lower, upper = b.floor(), b.ceil()
    to_lower = next_probs * (upper - b + (lower == upper).to(b.dtype))
    to_upper = next_probs * (b - lower)
    target = torch.zeros_like(next_probs)
    target.scatter_add_(1, lower.long(), to_lower)
    target.scatter_add_(1, upper.long(), to_upper)
    return target
