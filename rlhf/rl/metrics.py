"""The metrics sink of the RL trainers: ``metrics.jsonl`` (one strict-JSON row per logged update, rewritten
atomically from a checkpoint's rows on resume) and the ``--report_to`` tracker; the reduction of a
rank's scalars to one number per metric, and the stop on a non-finite one."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from classic_rl.safe_io import atomic_write_text, dumps_strict
from rlhf.common.errors import TrainingDiverged
from rlhf.common.utils import METRICS_FILE, to_plain

__all__ = ["MetricsSink", "Tracker", "check_finite", "mean_over_ranks", "metrics_text"]


def metrics_text(rows: list[dict[str, Any]]) -> str:
    return "".join(dumps_strict(to_plain(r)) + "\n" for r in rows)


class Tracker:
    """Sends the metrics.jsonl numbers to --report_to (tensorboard, wandb, trackio; none: nothing)."""

    def __init__(self, report_to: str, output_dir: Path, config: Any, start_step: int = 0):
        self.kind = report_to
        self.run = None
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run logged after the checkpoint it resumes from.
            self.run = SummaryWriter(log_dir=str(output_dir / "runs"), purge_step=start_step + 1 if start_step else None)
        elif report_to in ("wandb", "trackio"):
            module = __import__(report_to)
            self.run = module.init(project=os.environ.get("WANDB_PROJECT", "rlhf"), config=to_plain(config),
                                   name=Path(output_dir).name)
            self.module = module

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.kind == "tensorboard":
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.run.add_scalar(key, value, step)
        elif self.run is not None:
            self.module.log(metrics, step=step)

    def close(self) -> None:
        if self.kind == "tensorboard":
            self.run.close()
        elif self.run is not None:
            self.module.finish()


class MetricsSink:
    """Keeps every logged row (``history``, saved in checkpoints) and writes them out on the main rank."""

    def __init__(self, output_dir: Path | None, main: bool, report_to: str, config: Any):
        self.output_dir, self.main, self.report_to, self.config = output_dir, main, report_to, config
        self.history: list[dict[str, Any]] = []
        self.path = output_dir / METRICS_FILE if (output_dir is not None and main) else None
        self.tracker: Tracker | None = None

    def attach(self, output_dir: Path | None) -> None:
        """Write into ``output_dir`` (None: keep the rows in memory only)."""
        self.output_dir = output_dir
        self.path = output_dir / METRICS_FILE if (output_dir is not None and self.main) else None

    def open(self, start_step: int) -> None:
        """Start writing: metrics.jsonl holds the rows so far (none, or a checkpoint's), replacing any older file."""
        if self.path is not None:
            atomic_write_text(self.path, metrics_text(self.history))
            self.tracker = Tracker(self.report_to, self.output_dir, self.config, start_step)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **metrics}
        self.history.append(row)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(dumps_strict(to_plain(row)) + "\n")
        if self.tracker is not None:
            self.tracker.log(metrics, step)

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None


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
