"""Checkpoints that survive a kill at any instant, stop requests, and the divergence guard.

A saved agent is four files in a directory (``config.yaml``, ``model.safetensors``,
``training_state.pt``, ``state.json``). Replacing them one by one is not atomic: a kill between
two replacements would leave the weights of one step beside the counters of another. So a
checkpoint is written in two phases, as a journal:

1. every file goes into a fresh staging folder ``.checkpoint-tmp-*`` (flushed to disk), which is
   then renamed to ``.checkpoint-next``: that rename is the commit point;
2. the files are moved from ``.checkpoint-next`` over the top-level ones (``state.json`` last) and
   the folder is removed.

A kill during phase 1 leaves the previous checkpoint untouched (the staging folder is swept on the
next save); a kill during phase 2 leaves a complete ``.checkpoint-next`` that readers prefer file
by file (:func:`checkpoint_file`) and the next save rolls forward. Either way the run directory
always holds one whole checkpoint.

Training loops call ``Agent._safe_point`` between whole steps/updates; there a
:class:`Checkpointer` saves every ``save_freq`` steps, a pending Ctrl-C/SIGTERM becomes
:class:`StopRequested` (after which the caller saves and stops), and non-finite losses stop the
run with :class:`TrainingDiverged` before anything is saved.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from classic_rl.safe_io import TrainingDiverged  # noqa: F401  (raised by train.py through this module)

CHECKPOINT_FILES = ("config.yaml", "model.safetensors", "training_state.pt", "state.json")
"""The files of a saved agent, in the order they are moved into place (``state.json`` last)."""
PENDING_DIR = ".checkpoint-next"
STAGING_PREFIX = ".checkpoint-tmp-"


# ----------------------------------------------------------------------------- journaled files
def checkpoint_file(run_dir: str | os.PathLike, name: str) -> Path:
    """Where to read ``name`` of the newest complete checkpoint in ``run_dir`` (see module docstring)."""
    pending = Path(run_dir) / PENDING_DIR / name
    return pending if pending.exists() else Path(run_dir) / name


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported everywhere (Windows); the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def finish_pending_checkpoint(run_dir: str | os.PathLike) -> None:
    """Roll forward a checkpoint whose phase 2 was cut short, and sweep abandoned staging folders."""
    run_dir = Path(run_dir)
    pending = run_dir / PENDING_DIR
    if pending.is_dir():
        for name in CHECKPOINT_FILES:
            if (pending / name).exists():
                os.replace(pending / name, run_dir / name)
        _fsync_dir(run_dir)
        pending.rmdir()
    for stale in run_dir.glob(f"{STAGING_PREFIX}*"):
        if stale.is_dir():  # our own unfinished phase 1 (the name is ours alone)
            shutil.rmtree(stale, ignore_errors=True)


def write_checkpoint(run_dir: str | os.PathLike, writers: Mapping[str, Callable[[Path], None]]) -> Path:
    """Write a checkpoint atomically: ``writers[name](path)`` writes file ``name`` at ``path``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    finish_pending_checkpoint(run_dir)
    staging = Path(tempfile.mkdtemp(dir=run_dir, prefix=STAGING_PREFIX))
    try:
        for name, write in writers.items():
            target = staging / name
            try:
                write(target)
                with open(target, "rb+") as fh:
                    os.fsync(fh.fileno())
            except (OSError, RuntimeError) as err:  # torch's own writer errors are RuntimeErrors
                # Name the file where it was going, not its staging copy.
                reason = getattr(err, "strerror", None) or " ".join(str(err).split())
                raise CheckpointFileError(getattr(err, "errno", None), reason, str(run_dir / name)) from err
        _fsync_dir(staging)
        os.rename(staging, run_dir / PENDING_DIR)  # the commit point
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(run_dir)
    finish_pending_checkpoint(run_dir)
    return run_dir


def checkpoint_sizes(run_dir: str | os.PathLike) -> dict[str, int]:
    """Bytes of each file of the newest complete checkpoint in ``run_dir``."""
    sizes = {}
    for name in CHECKPOINT_FILES:
        path = checkpoint_file(run_dir, name)
        if path.is_file():
            sizes[name] = path.stat().st_size
    return sizes


class InexactResumeWarning(RuntimeWarning):
    """A resume keeps everything learned but will not give the numbers of an uninterrupted run
    (the command line prints it as one ``warning:`` line)."""


# ----------------------------------------------------------------------------- file writers
class CheckpointFileError(OSError):
    """Writing one file of a checkpoint failed; ``filename`` is where the file was going."""


class _KeepWriteError:
    """A file for ``torch.save`` that remembers the OS error of a failed write: torch reports one
    only as ``RuntimeError('[enforce fail at inline_container.cc] ... unexpected pos')``, which
    names neither the cause (a full disk) nor the file."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.error = fh, None

    def write(self, data: Any) -> int:
        try:
            return self.fh.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.fh.flush()


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, raising the OS's own error (ENOSPC ...) when a write fails."""
    with open(path, "wb") as fh:
        sink = _KeepWriteError(fh)
        try:
            torch.save(obj, sink)
        except RuntimeError:
            if sink.error is not None:
                raise sink.error from None
            raise


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``safetensors.torch.save_file``, raising the OS's own error when a write fails (safetensors
    reports one as its own SafetensorError)."""
    from safetensors.torch import save

    data = save(dict(tensors))
    with open(path, "wb") as fh:
        fh.write(data)


# ----------------------------------------------------------------------------- stop requests
class StopRequested(KeyboardInterrupt):
    """Ctrl-C or SIGTERM arrived; raised at a safe point, so the agent's state is whole."""

    def __init__(self, signal_name: str = "SIGINT") -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


class _StopFlag:
    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.received_at = 0.0  # time.monotonic() of the first signal

    def check(self) -> None:
        if self.signal_name is not None:
            name, self.signal_name = self.signal_name, None
            raise StopRequested(name)


STOP = _StopFlag()
"""Set by the handlers of :func:`stop_signals`; checked at every safe point."""

LAUNCHER_ECHO_S = 1.0
"""Under a distributed launcher (``accelerate launch``, ``torchrun``) one Ctrl-C in a terminal reaches each
rank twice: from the terminal, which signals the whole foreground process group, and from the launcher,
which forwards the signal it got to its workers at once. A second signal that soon after the first is
that echo, not a second Ctrl-C; without this rule every Ctrl-C under a launcher stopped at once."""


def _under_launcher() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


@contextmanager
def stop_signals() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into a request honoured at the next safe point (a second one stops at once).

    Outside the main thread (where handlers cannot be set) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:  # a forked worker inherited this handler: behave as by default
            if signum == signal.SIGTERM:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
            raise KeyboardInterrupt
        if STOP.signal_name is not None:  # asked twice: stop now
            if _under_launcher() and time.monotonic() - STOP.received_at < LAUNCHER_ECHO_S:
                return  # the launcher passing on the same Ctrl-C
            raise KeyboardInterrupt
        STOP.signal_name = names.get(signum, "SIGINT")
        STOP.received_at = time.monotonic()

    previous = {sig: signal.getsignal(sig) for sig in names}
    STOP.signal_name = None
    for sig in names:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        STOP.signal_name = None


# ----------------------------------------------------------------------------- divergence
def first_non_finite(values: Mapping[str, Any]) -> tuple[str, float] | None:
    """The first (name, value) of ``values`` (floats or tensors) that is not finite, else None."""
    for name, value in values.items():
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad = value[~torch.isfinite(value)].flatten()[0]
                return name, float(bad)
        elif isinstance(value, float) and not math.isfinite(value):
            return name, value
    return None
