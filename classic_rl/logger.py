"""Run logging: ``episodes.csv``, TensorBoard scalars and a progress bar, in one object.

Agents report finished episodes and scalars to a :class:`RunLogger`; without a run directory it
only drives the progress bar (``agent.learn()`` from Python), with one it also writes files
(``classic-rl train``).
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections import deque
from pathlib import Path

from tqdm.auto import tqdm

EPISODE_COLUMNS = ("step", "episode", "return", "length", "wall_s")


def _wait_to_sort_after(tb_dir: Path) -> None:
    """TensorBoard reads a folder's event files in name order, and a name starts with the second the
    file was made: wait (under a second, only for a resume made within the second the interrupted run's
    file was) so that the resumed run's file sorts last and its purge applies to the older events."""
    stamps = [int(part[3]) for part in (p.name.split(".") for p in tb_dir.glob("events.out.tfevents.*"))
              if len(part) > 3 and part[3].isdigit()]
    while stamps and time.time() < max(stamps) + 1:
        time.sleep(0.05)


class RunLogger:
    """Collects training progress.

    Args:
        out_dir: run directory; None keeps everything in memory.
        total: size of the budget for the progress bar (steps or episodes).
        unit: ``"step"`` or ``"episode"``: what :meth:`advance` counts.
        initial: how much of ``total`` was done before (a resumed run's checkpoint), so the bar
            shows the whole run: ``48128/50000``.
        progress: show a progress bar.
        tensorboard: write TensorBoard event files under ``out_dir/tb``.
        resume: the log position saved with the checkpoint a resumed run starts from.
        purge_step: on resume, the first step after that checkpoint; TensorBoard then drops the
            events the interrupted run logged from this step on (they are logged again).
    """

    def __init__(
        self,
        out_dir: str | Path | None = None,
        total: int | None = None,
        unit: str = "step",
        progress: bool = True,
        tensorboard: bool = True,
        resume: dict | None = None,
        purge_step: int | None = None,
        initial: int = 0,
    ) -> None:
        self.out_dir = Path(out_dir) if out_dir is not None else None
        resume = resume or {}
        self.start = time.perf_counter() - float(resume.get("wall_s") or 0.0)
        self.episodes = int(resume.get("episodes", 0))
        self.recent_returns: deque[float] = deque(maxlen=20)
        self.episode_returns: list[float] = [float(r) for r in resume.get("recent_returns", [])]
        self.recent_returns.extend(self.episode_returns)
        self.episode_steps: list[int] = []
        self._csv_file = None
        self._csv = None
        self._tb = None
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = self.out_dir / "episodes.csv"
            if resume:
                truncate_episode_log(path, self.episodes)
            append = path.exists() and path.stat().st_size > 0
            self._csv_file = open(path, "a", newline="")
            self._csv = csv.writer(self._csv_file)
            if not append:
                self._csv.writerow(EPISODE_COLUMNS)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    # A resumed run: TensorBoard hides the events a killed run logged after its last
                    # checkpoint (from purge_step on), so the curves show each step once.
                    if purge_step is not None:
                        _wait_to_sort_after(self.out_dir / "tb")
                    self._tb = SummaryWriter(log_dir=str(self.out_dir / "tb"), purge_step=purge_step)
                except ImportError:  # tensorboard is optional at run time
                    self._tb = None
        self.unit = unit
        self._bar = tqdm(total=total, initial=initial, unit=unit, disable=not progress, dynamic_ncols=True,
                         leave=False)

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self.start

    def episode(self, step: int, episode_return: float, length: int) -> None:
        """Record one finished training episode (undiscounted return)."""
        self.episodes += 1
        ret = float(episode_return)
        self.recent_returns.append(ret)
        self.episode_returns.append(ret)
        self.episode_steps.append(int(step))
        if self._csv is not None:
            self._csv.writerow([int(step), self.episodes, f"{ret:.6g}", int(length), f"{self.wall_s:.3f}"])
        if self._tb is not None:
            self._tb.add_scalar("charts/episodic_return", ret, step)
            self._tb.add_scalar("charts/episodic_length", length, step)
        if self.unit == "episode":
            self.advance(1)
        self._bar.set_postfix(ret=f"{sum(self.recent_returns) / len(self.recent_returns):.2f}", refresh=False)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._tb is not None and value is not None and math.isfinite(float(value)):
            self._tb.add_scalar(tag, float(value), step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.scalar(tag, value, step)

    def position(self, keep_returns: int = 100) -> dict:
        """Where the log stands (for a checkpoint): rows written, the last returns, wall time."""
        return {"episodes": self.episodes, "recent_returns": self.episode_returns[-keep_returns:],
                "wall_s": round(self.wall_s, 3)}

    def flush(self) -> None:
        """Put every row written so far on disk (before a checkpoint records the log position)."""
        if self._csv_file is not None:
            self._csv_file.flush()
            os.fsync(self._csv_file.fileno())
        if self._tb is not None:
            self._tb.flush()

    def advance(self, n: int = 1) -> None:
        """Move the progress bar by ``n`` units of the budget (``unit``)."""
        total = self._bar.total
        if total is not None:
            # A last rollout may overshoot the budget; past its total tqdm would drop the total
            # and show a bare count ("50176step"), so the bar stops at the budget.
            n = max(0, min(n, total - self._bar.n))
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()
        if self._csv_file is not None:
            self.flush()
            self._csv_file.close()
            self._csv_file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def truncate_episode_log(path: Path, episodes: int) -> None:
    """Keep the header and the first ``episodes`` rows of ``episodes.csv`` (atomically).

    Raises ValueError when the file holds fewer rows than the checkpoint recorded (it was edited
    or lost): resuming would then log a run that does not match the saved agent.
    """
    from classic_rl.safe_io import atomic_write_text

    if not path.exists():
        if episodes:
            raise ValueError(f"{path} is missing but the checkpoint recorded {episodes} episodes in it")
        return
    lines = path.read_text().splitlines(keepends=True)
    complete = [line for line in lines if line.endswith("\n")]  # a kill may cut the last row short
    if episodes and len(complete) - 1 < episodes:
        raise ValueError(
            f"{path} holds {max(len(complete) - 1, 0)} complete rows but the checkpoint recorded {episodes}"
        )
    keep = complete[: episodes + 1]
    if keep != lines:
        atomic_write_text(path, "".join(keep))
