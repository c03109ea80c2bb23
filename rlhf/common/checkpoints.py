"""The output folder and its checkpoints, shared by every rlhf command.

Layout (as transformers' Trainer): ``OUTPUT_DIR/checkpoint-<step>/`` for each checkpoint, the final
model and run files directly in ``OUTPUT_DIR``. Rules that keep a user's work safe:

- :func:`prepare_output_dir` refuses an existing non-empty folder unless the user says
  ``--overwrite_output_dir`` (then only the files the command writes are replaced) or resumes a run
  there. Nothing in the folder is ever deleted wholesale.
- :func:`locked_output_dir` does the same under the folder's lock (``OUTPUT_DIR/.lock``, an OS file
  lock held by the main process for the whole command): a second command on the same folder stops
  with one line naming the holder's PID instead of mixing its model, checkpoints and log with ours.
- :func:`checkpoint_writer` writes a checkpoint into a hidden temporary folder and renames it into
  place only once complete, so a kill at any instant leaves every earlier checkpoint loadable and
  never a half-written ``checkpoint-<step>``.
- :func:`prune_checkpoints` (``--save_total_limit``) deletes only checkpoints written by the current
  process, never those of an earlier run.
- :func:`full_disk_reported` turns a write that failed for want of space (whatever the writer calls it:
  ``OSError(ENOSPC)``, safetensors' ``SafetensorError ... No space left on device``, torch's ``unexpected
  pos`` from a zip file cut short) into one line naming the file and the last complete checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from classic_rl.safe_io import (
    LOCK_FILE,
    STAGING_DIR,
    RunDirLocked,
    UserError,
    atomic_directory,
    has_run_files,
    lock_holder,
    lock_run_dir,
)
from rlhf.common.errors import DiskFull

__all__ = [
    "CHECKPOINT_PREFIX",
    "full_disk_reported",
    "is_out_of_space",
    "checkpoint_step",
    "checkpoint_writer",
    "latest_checkpoint",
    "list_checkpoints",
    "locked_output_dir",
    "prepare_output_dir",
    "prune_checkpoints",
    "refuse_if_in_use",
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
    if path.is_dir() and has_run_files(path) and not (overwrite or resume):
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


@contextlib.contextmanager
def locked_output_dir(output_dir: str | Path, *, overwrite: bool = False, resume: bool = False) -> Iterator[Path]:
    """:func:`prepare_output_dir` under the folder's lock, held for the ``with`` block (the command).

    Only the main process (global rank 0) takes the lock; the other ranks of the same launch write the
    same folder and just check it. The lock is ``classic_rl.safe_io.lock_run_dir``: the kernel drops it
    when the process ends in any way, so a killed run never leaves a stale lock. The folder is checked
    before the lock file is created (a refused folder is left untouched) and again under the lock
    (another command may have filled it in between). A folder this block created and that holds
    nothing but the lock when the block fails is removed again.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        yield prepare_output_dir(output_dir, overwrite=overwrite, resume=resume)
        return
    path = Path(output_dir).expanduser().resolve()
    existed = path.exists()
    refuse_if_in_use(output_dir)
    prepare_output_dir(output_dir, overwrite=overwrite, resume=resume)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(lock_run_dir(path))
        except RunDirLocked:  # it started between our check and our lock
            raise RunDirLocked(_in_use(output_dir, path, lock_holder(path) or -1)) from None
        try:
            prepare_output_dir(output_dir, overwrite=overwrite, resume=resume)
            yield path
        except BaseException:
            if not existed and path.is_dir() and not has_run_files(path):
                (path / LOCK_FILE).unlink(missing_ok=True)  # our own empty folder: a failed start leaves nothing
                path.rmdir()
            raise


def refuse_if_in_use(output_dir: str | Path) -> None:
    """Raise :class:`RunDirLocked` (one line naming the holder's PID) when another process holds the
    folder's lock. Call it on the main process only: the other ranks of a launch share the folder."""
    path = Path(output_dir).expanduser().resolve()
    holder = lock_holder(path) if path.is_dir() else None
    if holder is not None:
        raise RunDirLocked(_in_use(output_dir, path, holder))


def _in_use(output_dir: str | Path, path: Path, holder: int) -> str:
    who = f"PID {holder}" if holder > 0 else "a process that is just starting"
    return (f"--output_dir {output_dir} is in use by another run ({who} holds {path / LOCK_FILE}); wait for it "
            "to finish or stop it, or choose another --output_dir")


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


# ----------------------------------------------------------------------------------------------- a full disk
_NO_SPACE_TEXT = ("No space left on device", "StorageFull", "Disk quota exceeded", "os error 28")
_LOW_SPACE = 1 << 20  # bytes: below this a failed write is taken for a full disk (torch says "unexpected pos")


def is_out_of_space(err: BaseException, folder: Path) -> bool:
    """Whether ``err`` (or an exception it came from) is a write that found no space: an OSError with
    ENOSPC/EDQUOT, an error whose text says so, or any failure while ``folder``'s disk is (nearly) full."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(seen) for text in _NO_SPACE_TEXT):
            return True
        seen = seen.__cause__ or seen.__context__
    with contextlib.suppress(OSError):
        return shutil.disk_usage(folder).free < _LOW_SPACE
    return False


def _written_file(err: BaseException, writing: Path) -> Path:
    """The file ``err`` names, as it would have been called once in place (``writing`` if none)."""
    seen: BaseException | None = err
    while seen is not None:
        name = getattr(seen, "filename", None)
        if name:
            parts = list(Path(name).parts)
            for hidden in (STAGING_DIR, ".rlhf-staging"):  # the staging folder stands for its final place
                if hidden in parts:
                    i = parts.index(hidden)
                    parts = parts[:i] + parts[i + 1:]
            return Path(*parts)
        seen = seen.__cause__ or seen.__context__
    return writing


@contextlib.contextmanager
def full_disk_reported(output_dir: str | Path, writing: str | Path) -> Iterator[None]:
    """Run a write of ``writing`` (a file or folder in ``output_dir``); if it fails for want of space, raise
    :class:`DiskFull`: one line naming the file and the last complete checkpoint. The writers' staging
    folders are cleaned by their own context managers before this one sees the error."""
    try:
        yield
    except Exception as err:
        if isinstance(err, DiskFull) or not is_out_of_space(err, Path(output_dir)):
            raise
        last = latest_checkpoint(output_dir)
        kept = (f"the last complete checkpoint is step {checkpoint_step(last)} ({last}); free some space and "
                "continue with the same command and --resume_from_checkpoint true" if last is not None else
                "no checkpoint was saved before; free some space and start the run again")
        raise DiskFull(f"no space left on device writing {_written_file(err, Path(writing))}; {kept}") from err
