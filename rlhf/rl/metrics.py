"""Metrics of the RL trainers: the reduction of a rank's scalars to one number per metric and the stop on a
non-finite one (the rows go to ``rlhf.common.metrics.MetricsSink``)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from rlhf.common.errors import TrainingDiverged

__all__ = ["check_finite", "mean_over_ranks"]


def mean_over_ranks(accelerator, values: dict[str, Any]) -> dict[str, float]:
    """Average scalar metrics over all processes (one collective, the same on every rank)."""
    keys = list(values)
    local = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    mean = accelerator.reduce(local, reduction="mean") if accelerator.num_processes > 1 else local
    return dict(zip(keys, mean.tolist()))


def check_finite(metrics: dict[str, float], model: nn.Module, update: int, output_dir: str | None) -> None:
    """Stop on a non-finite metric (loss, reward, ...) or weight; metrics are averaged over ranks and
    weights are equal on every rank, so every rank takes the same decision."""
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if not bad:
        params = [p for p in model.parameters() if p.requires_grad]
        total = torch.stack([p.detach().float().sum() for p in params]).sum()
        if not bool(torch.isfinite(total)):
            bad = ["weights"]
    if bad:
        raise TrainingDiverged(
            f"non-finite {', '.join(bad[:4])} at update {update}; the run stops "
            "without saving this update's model. Lower --learning_rate, check the reward scale, or resume from "
            f"the last checkpoint in {output_dir}"
        )
