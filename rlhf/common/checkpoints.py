"""The output folder and its checkpoints, shared by every rlhf command.

Layout (as transformers' Trainer): ``OUTPUT_DIR/checkpoint-<step>/`` for each checkpoint, the final
model and run files directly in ``OUTPUT_DIR``. Rules that keep a user's work safe:

- :func:`prepare_output_dir` refuses an existing non-empty folder unless the user says
  ``--overwrite_output_dir`` (then only the files the command writes are replaced) or resumes a run
  there. Nothing in the folder is ever deleted wholesale.
- :func:`checkpoint_writer` writes a checkpoint into a hidden temporary folder and renames it into
  place only once complete, so a kill at any instant leaves every earlier checkpoint loadable and
  never a half-written ``checkpoint-<step>``.
- :func:`prune_checkpoints` (``--save_total_limit``) deletes only checkpoints written by the current
  process, never those of an earlier run.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from classic_rl.safe_io import UserError, atomic_directory

__all__ = [
    "CHECKPOINT_PREFIX",
    "checkpoint_step",
    "checkpoint_writer",
    "latest_checkpoint",
    "list_checkpoints",
    "prepare_output_dir",
    "prune_checkpoints",
    "resolve_resume_path",
]

CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def prepare_output_dir(output_dir: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Check that ``output_dir`` may be written, create it, and return its absolute path.

    An existing non-empty folder is refused (:class:`UserError`) unless ``overwrite`` (the command
    then replaces only the files it writes) or ``resume`` (continuing a run saved there).
    Call it on every rank: it only reads, and ``mkdir(exist_ok=True)`` is safe to race.
    """
    path = Path(output_dir).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise UserError(f"--output_dir {output_dir} is a file, not a folder; choose a folder path")
    if path.is_dir() and any(path.iterdir()) and not (overwrite or resume):
        raise UserError(
            f"--output_dir {output_dir} already exists and is not empty; choose a new folder, pass "
            "--overwrite_output_dir to write into it (only this command's files are replaced), or "
            "--resume_from_checkpoint to continue the run saved there"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--output_dir {output_dir} cannot be created: {err.strerror}") from err
    return path


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a ``checkpoint-<step>`` folder name, None for any other name."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest (lowest step) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``output_dir`` (None if there is none)."""
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def resolve_resume_path(resume_from_checkpoint: str | bool | None, output_dir: str | Path) -> Path | None:
    """``--resume_from_checkpoint`` as a folder: ``true`` means the latest in ``output_dir``.

    None/False/"false" means no resume. A missing folder is a :class:`UserError`.
    """
    if resume_from_checkpoint in (None, False, "", "false", "False"):
        return None
    if resume_from_checkpoint in (True, "true", "True"):
        latest = latest_checkpoint(output_dir)
        if latest is None:
            raise UserError(
                f"--resume_from_checkpoint true: no checkpoint-<step> folder in {output_dir}; "
                "pass the path of a checkpoint, or start without --resume_from_checkpoint"
            )
        return latest
    path = Path(str(resume_from_checkpoint)).expanduser()
    if not path.is_dir():
        raise UserError(f"--resume_from_checkpoint {resume_from_checkpoint}: no such checkpoint folder")
    return path.resolve()


def checkpoint_writer(
    output_dir: str | Path, step: int, *, main: bool = True, barrier: Callable[[], None] | None = None
) -> contextlib.AbstractContextManager[Path]:
    """A folder to fill that becomes ``output_dir/checkpoint-<step>`` whole on success
    (``classic_rl.safe_io.atomic_directory``: every rank may write its part between the barriers)."""
    return atomic_directory(Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}", main=main, barrier=barrier)


def prune_checkpoints(written: Iterable[Path], limit: int | None) -> list[Path]:
    """Delete the oldest of the checkpoints in ``written`` (this run's) beyond ``limit``; return the kept."""
    kept = sorted((Path(p) for p in written if Path(p).is_dir()), key=lambda p: checkpoint_step(p) or 0)
    if limit is None or limit <= 0:
        return kept
    for old in kept[:-limit]:
        shutil.rmtree(old, ignore_errors=True)
    return kept[-limit:]
