"""The one metrics sink of every rlhf command: ``OUT/metrics.jsonl`` (one strict-JSON row per logged step,
appended as it happens, rewritten atomically from the rows a checkpoint kept on resume) and the
``--report_to`` tracker. The RL trainers write through :class:`MetricsSink` directly; the TRL
Trainer-based steps (sft, reward) through :class:`JsonlMetricsCallback`, which feeds the same sink."""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from classic_rl.safe_io import atomic_write_text, dumps_strict
from rlhf.common.utils import METRICS_FILE, is_main_process, to_plain

__all__ = ["JsonlMetricsCallback", "MetricsSink", "Tracker", "metrics_text", "read_rows"]


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


def read_rows(path: Path, until_step: int) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl up to ``until_step`` (a line cut short by a kill is dropped)."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError, TypeError, ValueError, AttributeError):
                row = json.loads(line)
                if int(row.get("step", 0)) <= until_step:
                    rows.append(row)
    return rows


class JsonlMetricsCallback(TrainerCallback):
    """A `Trainer` callback that sends every log event (train and eval) to a :class:`MetricsSink` on rank 0.

    :meth:`start` begins the file for a run: a fresh run replaces an earlier metrics.jsonl (this command's
    own file), a resumed run keeps the rows up to the checkpoint's step, so the file ends up as the
    uninterrupted run's. (transformers sends the rows to --report_to itself, so the sink has no tracker.)
    """

    def __init__(self, output_dir: str | Path):
        self.sink = MetricsSink(Path(output_dir), is_main_process(), "none", None)
        self.path = self.sink.path or Path(output_dir) / METRICS_FILE
        self.skip_until_step = -1  # events up to this step are already in the file (a resumed run)

    def start(self, resume_step: int | None = None) -> None:
        self.skip_until_step = -1 if resume_step is None else resume_step
        if not is_main_process() or not self.path.exists():
            return
        # a session's closing row (train_runtime, ...) is not a row of the uninterrupted run: a run
        # stopped by Ctrl-C writes one before its checkpoint's step ends the file
        kept = [] if resume_step is None else read_rows(self.path, resume_step)
        self.sink.history = [row for row in kept if "train_runtime" not in row]
        self.sink.open(resume_step or 0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or state.global_step <= self.skip_until_step:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sink.log(state.global_step, {"epoch": state.epoch, **logs})
