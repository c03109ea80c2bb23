"""Advantage estimators: plain functions of tensors, shared by the gym agents and the LM trainers.

- :func:`gae` -- generalised advantage estimation, GAE(lambda), for methods with a critic (PPO, A2C):
  terminated vs truncated episodes (bootstrap on truncation, not on termination) and padding.
- :func:`group_advantages` -- GRPO: each completion's reward against the other completions of the
  same prompt, ``(r - mean_g) / (std_g + 1e-4)``; no critic.
- :func:`rloo_advantages` -- RLOO: REINFORCE with the leave-one-out baseline
  ``r_i - mean_{j != i} r_j``; no critic.
- :func:`whiten_advantages` -- REINFORCE++: advantages whitened over the whole batch.

Group layout: the ``group_size`` completions of one prompt are contiguous rows
(``[p0 c0, p0 c1, ..., p1 c0, ...]``), as TRL's trainers lay them out.
"""

from __future__ import annotations

import torch
from torch import Tensor

from classic_rl.core.losses import masked_whiten

__all__ = ["GROUP_SCALES", "gae", "group_advantages", "rloo_advantages", "whiten_advantages"]

GROUP_SCALES = ("group", "batch", "none")


@torch.no_grad()
def gae(
    rewards: Tensor,
    values: Tensor,
    *,
    mask: Tensor | None = None,
    next_values: Tensor | None = None,
    terminated: Tensor | None = None,
    episode_end: Tensor | None = None,
    last_values: Tensor | None = None,
    gamma: float = 0.99,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """GAE(lambda) advantages and lambda-returns over ``(batch, time)`` tensors.

    ``delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t)``
    ``A_t = delta_t + gamma * lam * (1 - episode_end_t) * A_{t+1}``, ``returns = A + V``.

    Args:
        rewards, values: ``(B, T)``.
        mask: ``(B, T)``, 1 for real steps. Masked steps get advantage 0 and do not pass
            advantage back to earlier steps, so a padded batch equals the unpadded one.
        next_values: ``(B, T)`` value of the state after step t. For a truncated episode this
            must be the value of the *final* observation (the time limit is not the end of the
            task, so we bootstrap). Default: ``values`` shifted left by one (padding counts as 0),
            with ``last_values`` (or 0) after the last column -- the LM case.
        terminated: ``(B, T)`` 1 where the episode really ended at step t: no bootstrap.
        episode_end: ``(B, T)`` 1 where the episode ended for any reason (terminated or
            truncated): the advantage recursion stops there. Defaults to ``terminated``.
        last_values: ``(B,)`` bootstrap value after the final column when ``next_values`` is None.
    """
    B, T = rewards.shape
    dtype = values.dtype
    valid = torch.ones_like(values) if mask is None else mask.to(dtype)
    if next_values is None:
        tail = torch.zeros(B, 1, dtype=dtype, device=values.device)
        if last_values is not None:
            tail = last_values.reshape(B, 1).to(dtype)
        next_values = torch.cat([(values * valid)[:, 1:], tail], dim=1)
    not_terminal = torch.ones_like(values) if terminated is None else 1.0 - terminated.to(dtype)
    ends = terminated if episode_end is None else episode_end
    carry_on = torch.ones_like(values) if ends is None else 1.0 - ends.to(dtype)

    deltas = (rewards + gamma * next_values * not_terminal - values) * valid
    advantages = torch.zeros_like(values)
    running = torch.zeros(B, dtype=dtype, device=values.device)
    for t in reversed(range(T)):
        running = deltas[:, t] + gamma * lam * carry_on[:, t] * running
        running = running * valid[:, t]
        advantages[:, t] = running
    returns = (advantages + values) * valid
    return advantages, returns


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """``rewards`` (N,) as ``(N / group_size, group_size)``, with a clear error when N does not divide."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be one scalar per completion, shape (N,), got {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards cannot be split into groups of {group_size}")
    return rewards.view(-1, group_size)


@torch.no_grad()
def group_advantages(rewards: Tensor, group_size: int, scale: str = "group") -> Tensor:
    """GRPO's group-relative advantages, one per completion.

    ``A_i = (r_i - mean_g) / (std_g + 1e-4)`` where ``g`` is the group of ``group_size`` completions
    of the same prompt and ``std`` is the unbiased (Bessel-corrected) standard deviation, as TRL
    computes it. ``scale="batch"`` divides by the whole batch's std instead (more robust when a
    group's rewards are all equal); ``scale="none"`` is Dr. GRPO's ``r_i - mean_g`` (no division,
    so easy and hard prompts are not re-weighted).
    """
    grouped = _grouped(rewards, group_size)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
    if scale == "none":
        return centred
    if scale == "group":
        std = grouped.std(dim=1, keepdim=True).expand_as(grouped).reshape(-1) if group_size > 1 else torch.zeros_like(rewards)
    elif scale == "batch":
        std = rewards.std().expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    else:
        raise ValueError(f"scale must be one of {', '.join(GROUP_SCALES)}, got {scale!r}")
    return centred / (std + 1e-4)


@torch.no_grad()
def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """RLOO's leave-one-out advantages: ``A_i = r_i - mean_{j != i} r_j`` within each prompt's group.

    The baseline of each completion is the mean of its siblings' rewards, so it does not depend on
    the completion itself and the policy gradient stays unbiased. Needs ``group_size >= 2``.
    """
    if group_size < 2:
        raise ValueError("RLOO needs at least 2 completions per prompt (group_size >= 2)")
    grouped = _grouped(rewards, group_size)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).reshape(-1)


@torch.no_grad()
def whiten_advantages(advantages: Tensor, mask: Tensor | None = None) -> Tensor:
    """REINFORCE++'s batch-whitened advantages: ``(A - mean) / std`` over every valid position of the
    batch (a global baseline instead of a critic or a per-prompt group)."""
    return masked_whiten(advantages, mask)
