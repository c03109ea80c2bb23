"""A resumed run must be the saved run: every checkpoint keeps the run's resolved settings, and resuming
with a setting that changes what the run computes is refused, in one line that lists the differences.

``RESUME_MAY_CHANGE`` are the settings that only say where files go, how often they are written or what
is shown; a resume may change them (docs/reliability.md lists them). Everything else -- learning rate,
KL coefficient, seed, reward source, batch sizes, data, models, ... -- must match. A checkpoint written
before checkpoints kept their settings is accepted with a note: its settings cannot be compared.
Light: no torch import.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from classic_rl.safe_io import UserError

__all__ = ["RESUME_MAY_CHANGE", "check_same_settings", "comparable"]

RESUME_MAY_CHANGE = frozenset({
    "logging_steps", "save_steps", "save_total_limit", "output_dir", "report_to", "disable_tqdm",
    "num_sample_generations", "resume_from_checkpoint", "overwrite_output_dir",
    "logging_dir", "run_name",  # transformers' names for where and under which name the logs go
})


def comparable(settings: Any) -> dict[str, Any]:
    """``settings`` (a config, or sections of configs) as plain JSON values, as a checkpoint stores them."""
    from rlhf.common.utils import to_plain

    return json.loads(json.dumps(to_plain(settings)))


def _flat(settings: dict[str, Any]) -> dict[str, Any]:
    """``{"training": {"seed": 1}}`` -> ``{"seed": 1}``; a name in two sections keeps its section."""
    if not all(isinstance(v, dict) for v in settings.values()):
        return dict(settings)  # one config (the RL methods)
    names = [name for section in settings.values() for name in section]
    return {(name if names.count(name) == 1 else f"{sec}.{name}"): value
            for sec, section in settings.items() for name, value in section.items()}


def _same(saved: Any, now: Any, roots: tuple[Path, Path] | None = None) -> bool:
    """Equal values; for paths, the same file given another way (relative, ~), or the same place relative
    to the folder that holds the run (``roots``: saved, now) -- a pipeline folder moved or copied whole."""
    if saved == now:
        return True
    if not (isinstance(saved, str) and isinstance(now, str)):
        return False
    a, b = Path(saved.split(":")[0]).expanduser(), Path(now.split(":")[0]).expanduser()
    if saved.partition(":")[2] != now.partition(":")[2]:
        return False
    if a.exists() and b.exists() and a.resolve() == b.resolve():
        return True
    if roots is not None and a.is_absolute() and b.is_absolute():
        try:
            return a.relative_to(roots[0]) == b.relative_to(roots[1])
        except ValueError:
            return False
    return False


def _run_roots(saved: dict[str, Any], now: dict[str, Any]) -> tuple[Path, Path] | None:
    out_saved, out_now = saved.get("output_dir"), now.get("output_dir")
    if isinstance(out_saved, str) and isinstance(out_now, str):
        return Path(out_saved).expanduser().absolute().parent, Path(out_now).expanduser().absolute().parent
    return None


def _short(value: Any) -> str:
    text = json.dumps(value)  # a long value keeps both ends (a path's file name is at the end)
    return text if len(text) <= 90 else f"{text[:40]}...{text[-45:]}"


def check_same_settings(checkpoint: Path, saved: dict[str, Any] | None, now: dict[str, Any], where: str) -> None:
    """Refuse (:class:`UserError`, one line) a resume whose settings differ from those saved in
    ``checkpoint`` (``where``: the file that holds them), but for ``RESUME_MAY_CHANGE``. ``saved`` None:
    a checkpoint of an earlier version; a note says the settings were not compared."""
    if saved is None:
        if os.environ.get("RANK", "0") == "0":
                print(f"note: {checkpoint} was written by an earlier version that did not keep the run's settings; "
                  "resuming with the flags given now, unchecked", file=sys.stderr, flush=True)
        return
    saved_flat, now_flat = _flat(saved), _flat(now)
    roots = _run_roots(saved_flat, now_flat)
    differ = [name for name in sorted(set(saved_flat) | set(now_flat))
              if name.rpartition(".")[2] not in RESUME_MAY_CHANGE
              and not _same(saved_flat.get(name), now_flat.get(name), roots)]
    if differ:
        changes = ", ".join(f"{name} {_short(saved_flat.get(name))} -> {_short(now_flat.get(name))}" for name in differ)
        raise UserError(
            f"--resume_from_checkpoint {checkpoint}: the run was saved with other settings ({changes}); a resumed "
            f"run must be the saved run: resume with the saved settings ({where}), or start a new run in a new "
            "--output_dir"
        )
