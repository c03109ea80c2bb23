"""Writing files without losing data, strict JSON, and the one exception type for user mistakes.

Shared by both command-line tools (``classic-rl`` and ``rlhf``):

- :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`atomic_write_json`: write a
  temporary file in the same folder, flush it to disk, then ``os.replace`` it over the target, so
  a kill at any instant leaves either the old file or the new one, never half of either.
- :func:`to_strict_json`: NaN and +-Infinity become ``null`` (Python's ``json`` would write the
  bare tokens ``NaN``/``Infinity``, which are not JSON and which other tools refuse).
- :func:`atomic_directory`: a folder (a checkpoint) filled in a hidden staging folder and renamed
  into place once complete, so it is there whole or not at all.
- :class:`TrainingDiverged`: a loss, gradient norm or weight became NaN or infinite (exit status 1).
- :class:`UserError`: raised for a mistake in the user's input (a bad flag value, a malformed
  file). The CLIs print its one-line message and exit with status 2, without a traceback, unless
  debugging is asked for (``--debug`` or the environment variable ``RL_TOOLKIT_DEBUG=1``).
- :func:`lock_run_dir`: one writer per run folder. Two processes writing the same folder (a run
  and its ``--resume`` started twice) interleave their logs and checkpoints; the second one gets
  :class:`RunDirLocked` (a UserError naming the folder and the holder's PID) instead.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ConfigError",
    "DEBUG_ENV",
    "LOCK_FILE",
    "RunDirLocked",
    "STAGING_DIR",
    "TrainingDiverged",
    "UserError",
    "atomic_directory",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "current_umask",
    "debug_enabled",
    "default_file_mode",
    "dumps_strict",
    "exit_status",
    "one_line",
    "read_yaml",
    "has_run_files",
    "lock_holder",
    "lock_run_dir",
    "to_strict_json",
]

DEBUG_ENV = "RL_TOOLKIT_DEBUG"


class UserError(Exception):
    """A mistake in the user's input; its message is one line naming the file, line or flag and
    the fix. Exit status 2 at the command line."""


class TrainingDiverged(RuntimeError):
    """A loss, gradient norm or weight became NaN or infinite: the run stops (exit status 1) before the
    broken step is saved; the message names the step, the quantity and where the last good checkpoint is."""


class ConfigError(UserError, ValueError):
    """A bad config file or flag value (a :class:`UserError`, exit status 2; a ValueError for library callers)."""


def read_yaml(path: str | os.PathLike, flag: str | None = None) -> Any:
    """``yaml.safe_load`` of a file: the one YAML reader of both command lines. A missing file, a file that
    is not text, or invalid YAML (bad syntax, a ``!tag`` that safe loading refuses) is a one-line
    :class:`ConfigError` naming the file (and line and column; ``flag`` when the path came from one)."""
    import yaml

    path = Path(path).expanduser()
    named = f"{flag} {path}" if flag else str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{named}: no such file") from None
    except (IsADirectoryError, UnicodeDecodeError) as err:
        raise ConfigError(f"{named}: not a readable YAML text file ({type(err).__name__})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = " ".join(str(getattr(err, "problem", None) or str(err).splitlines()[0]).split())
        context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context and start is not None and mark is not None and start.line != mark.line:
            problem += f" ({context} at line {start.line + 1})"
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None


def exit_status(err: BaseException) -> int:
    """The one mapping from an error to the exit status of both command lines: 2 for a mistake in the
    input (:class:`UserError`, and the ValueError / FileNotFoundError / FileExistsError raised for bad values
    and paths), 3 when training diverged, 130 / 143 for Ctrl-C / SIGTERM, 1 for anything else."""
    if isinstance(err, KeyboardInterrupt):
        return 143 if getattr(err, "signal_name", None) == "SIGTERM" else 130
    if isinstance(err, (UserError, ValueError, FileNotFoundError, FileExistsError)):
        return 2
    if isinstance(err, TrainingDiverged):
        return 3
    return 1


def one_line(err: BaseException) -> str:
    """An error's message on one line (a failure message is read in a terminal, next to a prompt)."""
    return " ".join(str(err).split()) or type(err).__name__


def debug_enabled() -> bool:
    """True when the user asked for full tracebacks (``RL_TOOLKIT_DEBUG=1``; ``--debug`` sets it)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def to_strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None and numpy/torch scalars made plain,
    recursively through dicts, lists and tuples (ready for ``json.dumps(..., allow_nan=False)``)."""
    if isinstance(value, Mapping):
        return {str(k): to_strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_strict_json(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()  # numpy / torch scalars
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def dumps_strict(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes NaN/Infinity (they become ``null``)."""
    return json.dumps(to_strict_json(value), allow_nan=False, **kwargs)


def current_umask() -> int:
    """The process's umask; on Linux read from /proc, which leaves it untouched for threads that
    create files at the same moment."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)  # the only portable way to read it is to set it ...
        os.umask(umask)  # ... and put it back
        return umask


def default_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0666 less the umask (0644 for the usual 022)."""
    return 0o666 & ~current_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old content or the new, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; every file the project writes gets open()'s mode instead.
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value: Any, indent: int | None = 2, sort_keys: bool = False) -> None:
    """Strict JSON (non-finite numbers as ``null``), written atomically, ending with a newline."""
    atomic_write_text(path, dumps_strict(value, indent=indent, sort_keys=sort_keys) + "\n")


STAGING_DIR = ".staging"  # the hidden folder (this project's own) where folders are filled before they appear


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike, *, main: bool = True,
                     barrier: Callable[[], None] | None = None) -> Iterator[Path]:
    """Yield a staging folder to fill (``<parent>/.staging/<name>``); on success it becomes ``final`` whole.

    On an exception the staging folder is removed and nothing else changes. An existing ``final`` (the
    same checkpoint step from an earlier, interrupted run) is replaced only once the new one is complete.

    Several processes writing their parts (e.g. each rank its optimizer shard): every rank enters with
    ``barrier`` (all ranks wait there) and ``main`` True on one rank only. The main rank makes the folder,
    barrier, every rank writes, barrier, the main rank renames it into place. A rank that dies while
    writing leaves only the hidden staging folder, swept by the next write of the same name.
    """
    final = Path(final)
    staging_root = final.parent / STAGING_DIR
    tmp = staging_root / final.name
    if main:
        if tmp.exists():  # our own leftover from a killed write: never a user's file (hidden, our name)
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    if barrier is not None:
        barrier()  # the folder exists before any rank writes into it
    try:
        yield tmp
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(OSError):
                staging_root.rmdir()  # only if empty
        raise
    if barrier is not None:
        barrier()  # every rank's part is written
    if not main:
        return
    if final.exists():
        stale = staging_root / f"{final.name}.old"
        shutil.rmtree(stale, ignore_errors=True)
        final.rename(stale)
        tmp.rename(final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        tmp.rename(final)
    with contextlib.suppress(OSError):
        staging_root.rmdir()  # only if empty


# ----------------------------------------------------------------------------- run-folder lock
LOCK_FILE = ".lock"
"""The lock file inside a run folder; it holds the PID of the process that has the folder."""


def has_run_files(path: str | os.PathLike) -> bool:
    """Whether the folder ``path`` holds anything but its lock file (which a finished run's lock leaves)."""
    return any(p.name != LOCK_FILE for p in Path(path).iterdir())


class RunDirLocked(UserError):
    """Another live process holds the run folder's lock."""


_held: dict[str, list] = {}
"""Lock files this process holds: resolved folder -> [fd, depth], so that nesting is free."""


def _close_held_in_child() -> None:
    # A forked worker inherits the lock's open file; flock locks belong to the open file, so the
    # worker would keep the folder locked after the run itself died. Workers never write the folder.
    for fd, _ in _held.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def lock_holder(path: str | os.PathLike) -> int | None:
    """The PID of another process holding ``path``'s lock (-1 when it has not written it yet), or
    None when no live process but this one holds it. Nothing is created."""
    import fcntl

    if str(Path(path).resolve()) in _held:
        return None
    try:
        fd = os.open(Path(path) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def lock_run_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Hold ``path``'s exclusive lock (creating the folder if needed) for the ``with`` block.

    The lock is an ``flock`` on ``path/.lock``, which holds our PID. The kernel releases it when the
    process ends in any way (SIGKILL and power loss included), so no stale lock is ever left; the
    file itself stays and is reused. Raises :class:`RunDirLocked` when another process holds it.
    Nested use in one process is free. POSIX only (``fcntl``); elsewhere nothing is locked.
    """
    path = Path(path)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        yield path
        return
    path.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield path
        finally:
            _held[key][1] -= 1
        return
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        holder = f"PID {pid}" if pid else "a process that is just starting"
        raise RunDirLocked(
            f"{path} is in use by another run ({holder} holds {path / LOCK_FILE}); wait for it to finish "
            "or stop it, then try again"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = [fd, 1]
    try:
        yield path
    finally:
        _held.pop(key, None)
        os.close(fd)  # releases the lock; the file (and its stale PID) stays, unlocked

