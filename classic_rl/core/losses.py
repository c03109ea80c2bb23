"""Policy-gradient losses and the masked statistics they rest on: plain functions of tensors.

Nothing here owns an optimizer, calls ``backward`` or steps anything: each trainer (the gym agents in
``classic_rl.agents``, the LM trainers in ``rlhf``) writes its own epochs x minibatches loop and calls
these. Tensors are ``(batch, time)`` with a validity ``mask`` (1 = real step or token, 0 = padding);
for a gym rollout every row is one step and the tensors may be 1-D ``(batch,)``.

Pieces
------
- masked statistics: :func:`masked_sum`, :func:`masked_mean`, :func:`masked_var`, :func:`masked_whiten`.
- :func:`clipped_surrogate` -- PPO's per-token clipped objective
  ``-min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A)``, with DAPO's clip-higher
  (``epsilon_high``) and GSPO's sequence-level importance ratio.
- :func:`aggregate_loss` -- how per-token losses become one number (TRL's ``loss_type``).
- :func:`policy_loss` -- the two above with PPO's token mean, plus statistics (the gym agents' form).
- :func:`surrogate_stats` -- approximate KL, clip fraction, mean ratio.
- :func:`value_loss` -- ``0.5 * (V - R)^2``, optionally the pessimistic max with the error of a
  prediction clipped around the old values (CleanRL's and TRL's form; the LM trainers').
- :func:`value_mse` -- ``(V_pred - R)^2`` with ``V_pred`` optionally clipped around the old values
  (Stable-Baselines3's form; the gym PPO agent's).
- :func:`kl_penalty` -- the k1 / k2 / k3 estimators of ``KL(pi || pi_ref)`` per token.

One vocabulary for PPO's settings in the core: ``epsilon`` / ``epsilon_high`` (the ratio's lower
and upper clip widths), ``epsilon_value`` (the value clip around the old values), ``num_epochs``
and ``num_minibatches`` (the caller's loop). Each front end keeps its users' names and maps them
in one place: the classic CLI Stable-Baselines3's (``clip_range``, ``clip_range_vf``, ``n_epochs``,
in :func:`classic_rl.agents.ppo.core_settings`), ``rlhf`` TRL's (``cliprange``, ``cliprange_value``,
``num_ppo_epochs``; GRPO/RLOO already say ``epsilon``, ``epsilon_high``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "LOSS_TYPES",
    "KL_ESTIMATORS",
    "aggregate_loss",
    "clipped_surrogate",
    "kl_penalty",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "policy_loss",
    "surrogate_stats",
    "value_loss",
    "value_mse",
]

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
KL_ESTIMATORS = ("k1", "k2", "k3")


# ----------------------------------------------------------------------------- masked statistics
def masked_sum(x: Tensor, mask: Tensor | None = None, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over the positions where ``mask`` is 1 (all positions if ``mask`` is None)."""
    if mask is not None:
        x = x * mask.to(x.dtype)
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor | None = None, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (all positions if ``mask`` is None)."""
    if mask is None:
        return x.mean() if dim is None else x.mean(dim)
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor | None = None, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over the valid positions (Bessel-corrected by default)."""
    mean = masked_mean(x, mask)
    sq = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = x.numel() if mask is None else mask.sum()
        n = torch.as_tensor(n, dtype=x.dtype)
        sq = sq * n / (n - 1).clamp(min=1.0)
    return sq


def masked_whiten(x: Tensor, mask: Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / std`` over valid positions; padding stays 0.

    ``shift_mean=False`` only rescales (used for rewards, whose sign carries meaning).
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out if mask is None else out * mask.to(x.dtype)


# ----------------------------------------------------------------------------- policy losses
def clipped_surrogate(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor | None = None,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    importance_sampling_level: str = "token",
) -> tuple[Tensor, Tensor]:
    """PPO's clipped objective per token (to minimise), and the log importance ratio it used.

    ``ratio = exp(log pi - log pi_old)``;
    ``loss_t = -min(ratio_t * A_t, clip(ratio_t, 1 - epsilon, 1 + epsilon_high) * A_t)``.

    Args:
        logprobs, old_logprobs: ``(B, T)`` (or ``(B,)``) log-probabilities of the taken actions/tokens.
        advantages: same shape, or ``(B, 1)`` / ``(B,)`` for one advantage per sequence (broadcast).
        mask: validity of each position; only needed for ``"sequence"`` level.
        epsilon, epsilon_high: lower and upper clip widths; ``epsilon_high`` defaults to ``epsilon``
            (DAPO's clip-higher sets it larger, e.g. 0.28, so rare tokens can gain probability).
        importance_sampling_level: ``"token"`` (PPO, GRPO) or ``"sequence"`` (GSPO: one ratio per
            sequence, ``exp`` of the mean log ratio over its real tokens, shape ``(B, 1)``).
    Returns:
        ``(per_token_loss, log_ratio)``, the loss with the shape of ``logprobs``; aggregate it with
        :func:`aggregate_loss` (or :func:`masked_mean`).
    """
    high = epsilon if epsilon_high is None else epsilon_high
    log_ratio = logprobs - old_logprobs
    if importance_sampling_level == "sequence":
        if log_ratio.dim() != 2:
            raise ValueError("sequence-level importance ratios need (batch, time) log-probabilities")
        log_ratio = masked_mean(log_ratio, mask, dim=-1).unsqueeze(-1)
    elif importance_sampling_level != "token":
        raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {importance_sampling_level!r}")
    if advantages.dim() == 1 and logprobs.dim() == 2:
        advantages = advantages.unsqueeze(-1)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - epsilon, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    return per_token.expand_as(logprobs) if per_token.shape != logprobs.shape else per_token, log_ratio


def aggregate_loss(
    per_token_loss: Tensor,
    mask: Tensor | None,
    loss_type: str = "bnpo",
    *,
    max_length: int | None = None,
    num_items: Tensor | float | None = None,
) -> Tensor:
    """One scalar from ``(B, T)`` per-token losses, by TRL's ``loss_type`` names.

    - ``"grpo"``: mean over each sequence's real tokens, then over sequences (long answers weigh
      less per token; the original GRPO).
    - ``"bnpo"``: mean over all real tokens of the batch (PPO's token mean).
    - ``"dr_grpo"``: sum over real tokens / (sequences x ``max_length``): no length bias (Dr. GRPO).
    - ``"dapo"``: sum over real tokens / ``num_items``, the real-token count of the whole global
      batch (all processes and accumulation steps), which the caller passes; default: this batch's.
    """
    if mask is None:
        mask = torch.ones_like(per_token_loss)
    mask = mask.to(per_token_loss.dtype)
    if loss_type == "grpo":
        return masked_mean(per_token_loss, mask, dim=-1).mean()
    if loss_type == "bnpo":
        return masked_mean(per_token_loss, mask)
    if loss_type == "dr_grpo":
        length = max_length if max_length is not None else per_token_loss.shape[-1]
        return masked_sum(per_token_loss, mask) / (per_token_loss.shape[0] * length)
    if loss_type == "dapo":
        total = mask.sum() if num_items is None else torch.as_tensor(num_items, dtype=mask.dtype)
        return masked_sum(per_token_loss, mask) / total.clamp(min=1.0)
    raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")


@torch.no_grad()
def surrogate_stats(
    log_ratio: Tensor,
    advantages: Tensor,
    mask: Tensor | None = None,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    dim: tuple[int, ...] | None = None,
) -> dict[str, Tensor]:
    """Diagnostics of :func:`clipped_surrogate`: ``approx_kl`` (the unbiased k3 estimator
    ``(ratio - 1) - log ratio``), ``clipfrac`` (share of positions where the clipped branch is the
    active one) and ``ratio`` (mean). With ``dim``, per leading index (for stacked minibatches)."""
    high = epsilon if epsilon_high is None else epsilon_high
    if advantages.dim() < log_ratio.dim():
        advantages = advantages.unsqueeze(-1)
    ratio = torch.exp(log_ratio)
    clipped_active = -advantages * torch.clamp(ratio, 1.0 - epsilon, 1.0 + high) > -advantages * ratio
    if mask is not None and clipped_active.shape != mask.shape:
        clipped_active = clipped_active.expand_as(mask)
        ratio, log_ratio = ratio.expand_as(mask), log_ratio.expand_as(mask)

    def mean(x: Tensor) -> Tensor:
        if dim is None:
            return masked_mean(x, mask)
        return x.mean(dim) if mask is None else (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)

    return {
        "approx_kl": mean((ratio - 1.0) - log_ratio),
        "clipfrac": mean(clipped_active.to(ratio.dtype)),
        "ratio": mean(ratio),
    }


def policy_loss(
    new_logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor | None,
    epsilon: float,
    epsilon_high: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate averaged over valid positions, and its :func:`surrogate_stats`.

    ``loss = mean(max(-A * ratio, -A * clip(ratio, 1 - epsilon, 1 + epsilon_high)))``.
    """
    per_token, log_ratio = clipped_surrogate(
        new_logprobs, old_logprobs, advantages, mask, epsilon=epsilon, epsilon_high=epsilon_high
    )
    stats = surrogate_stats(log_ratio.detach(), advantages, mask, epsilon, epsilon_high)
    return masked_mean(per_token, mask), stats


# ----------------------------------------------------------------------------- value loss
def value_loss(
    new_values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor | None, epsilon_value: float | None
) -> tuple[Tensor, Tensor]:
    """``0.5 * mean((V - R)^2)``; with ``epsilon_value`` the pessimistic max of the plain and the
    clipped error, where ``V_clipped = V_old + clip(V - V_old, -epsilon_value, epsilon_value)``.
    Returns (loss, clipfrac)."""
    if epsilon_value is None:
        if mask is None:  # one fused op (and one backward node) instead of three
            return 0.5 * F.mse_loss(new_values, returns), torch.zeros((), device=new_values.device)
        return 0.5 * masked_mean((new_values - returns) ** 2, mask), torch.zeros((), device=new_values.device)
    unclipped = (new_values - returns) ** 2
    v_clipped = old_values + torch.clamp(new_values - old_values, -epsilon_value, epsilon_value)
    clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).to(new_values.dtype), mask)
    return loss, clipfrac


def value_mse(
    new_values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor | None, epsilon_value: float | None
) -> tuple[Tensor, Tensor]:
    """Stable-Baselines3's PPO value loss: ``mean((V_pred - R)^2)``, no factor 1/2, where
    ``V_pred = V`` or, with ``epsilon_value``, ``V_old + clip(V - V_old, -epsilon_value, epsilon_value)``
    (the clipped prediction alone, not a max with the unclipped error as in :func:`value_loss`).
    Returns (loss, clipfrac), clipfrac the share of positions whose prediction was clipped."""
    if epsilon_value is None:
        zero = torch.zeros((), device=new_values.device)
        if mask is None:  # one fused op (and one backward node) instead of three
            return F.mse_loss(new_values, returns), zero
        return masked_mean((new_values - returns) ** 2, mask), zero
    delta = new_values - old_values
    predicted = old_values + torch.clamp(delta, -epsilon_value, epsilon_value)
    loss = masked_mean((predicted - returns) ** 2, mask)
    with torch.no_grad():
        clipfrac = masked_mean((delta.abs() > epsilon_value).to(new_values.dtype), mask)
    return loss, clipfrac


# ----------------------------------------------------------------------------- KL to a reference
def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from samples of ``pi``, ``d = logprobs - ref_logprobs``.

    - ``"k1"``: ``d`` (unbiased, high variance, can be negative; the classic RLHF reward penalty).
    - ``"k2"``: ``d^2 / 2`` (biased, low variance, its gradient is the KL's).
    - ``"k3"``: ``exp(-d) - 1 + d`` (unbiased, always >= 0; GRPO's penalty in the loss).
    """
    d = logprobs - ref_logprobs
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d.square()
    if estimator == "k3":
        return torch.expm1(-d) + d
    raise ValueError(f"KL estimator must be one of {', '.join(KL_ESTIMATORS)}, got {estimator!r}")
