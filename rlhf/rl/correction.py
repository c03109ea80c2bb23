"""The train/inference mismatch of a separate sampling engine (vLLM), measured and corrected.

The engine samples token ``y_t`` with probability ``pi_engine(y_t)``; the trainer's own forward gives it
``pi_train(y_t)`` (kernels, precision and batching differ, and a stale engine differs more). The losses
are estimated on the engine's samples, so each token's policy loss is weighted by the truncated
importance ratio ``min(pi_train / pi_engine, cap)`` (TRL's ``vllm_importance_sampling_mode=
"token_truncate"``; verl's truncated importance sampling, TIS): the ratio is 1 where the two agree, and
the cap bounds the variance where they do not. The KL penalty and the value loss are not weighted (TRL).

The metric names are TRL's: ``sampling/sampling_logp_difference/{mean,max}`` (``|log pi_train -
log pi_engine|`` over the trained tokens) and ``sampling/importance_sampling_ratio/{min,mean,max}``
(after the cap).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MISMATCH_KEYS", "apply_importance_weight", "reduce_mismatch_metrics", "truncated_importance_weight"]

MISMATCH_KEYS = (
    "sampling/sampling_logp_difference/mean", "sampling/sampling_logp_difference/max",
    "sampling/importance_sampling_ratio/min", "sampling/importance_sampling_ratio/mean",
    "sampling/importance_sampling_ratio/max",
)


def truncated_importance_weight(train_logprobs: Tensor, engine_logprobs: Tensor, loss_mask: Tensor,
                                cap: float | None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """The per-token weight ``min(exp(train - engine), cap)`` (1 off the loss mask), the per-sequence one
    ``min(exp(sum_t (train - engine)), cap)`` for losses on the sequence's ratio (RLOO), and this rank's
    mismatch statistics (sums, counts and extremes, reduced over ranks by :func:`reduce_mismatch_metrics`)."""
    mask = loss_mask > 0
    diff = (train_logprobs.float() - engine_logprobs.float()).masked_fill(~mask, 0.0)
    token, sequence = diff.exp(), diff.sum(1, keepdim=True).exp()
    if cap is not None:
        token, sequence = token.clamp(max=cap), sequence.clamp(max=cap)
    token = torch.where(mask, token, torch.ones_like(token))
    inf = torch.tensor(float("inf"), device=diff.device)
    stats = {
        "diff_sum": diff.abs().sum().double(), "diff_max": diff.abs().max() if diff.numel() else -inf,
        "ratio_sum": (token * mask).sum().double(), "ratio_min": torch.where(mask, token, inf).min() if mask.any() else inf,
        "ratio_max": torch.where(mask, token, -inf).max() if mask.any() else -inf, "count": mask.sum().double(),
    }
    return token, sequence, stats


def reduce_mismatch_metrics(accelerator, stats: dict[str, Tensor]) -> dict[str, float]:
    """TRL's five mismatch metrics over every rank's trained tokens (the extremes over all of them)."""
    device = accelerator.device
    sums = torch.stack([stats["diff_sum"], stats["ratio_sum"], stats["count"]]).double().to(device)
    low = torch.stack([stats["ratio_min"]]).double().to(device)
    high = torch.stack([stats["diff_max"], stats["ratio_max"]]).double().to(device)
    if accelerator.num_processes > 1:
        sums = accelerator.reduce(sums, reduction="sum")
        low = accelerator.gather(low).min().reshape(1)
        high = accelerator.gather(high.reshape(1, 2)).max(dim=0).values
    diff_sum, ratio_sum, count = sums.tolist()
    count = max(count, 1.0)
    return dict(zip(MISMATCH_KEYS, (diff_sum / count, high[0].item(), low[0].item(), ratio_sum / count, high[1].item())))


def apply_importance_weight(per_token: Tensor, micro: dict[str, Tensor]) -> Tensor:
    """``per_token`` policy loss (B, R), or a per-sequence one (B, 1), times the micro batch's importance
    weight when it has one (vLLM sampling with the correction on); the same tensor otherwise, so the
    numbers without vLLM are unchanged."""
    key = "sequence_importance_weight" if per_token.shape[-1] == 1 else "importance_weight"
    weight = micro.get(key)
    return per_token if weight is None else per_token * weight
