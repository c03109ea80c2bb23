"""Errors the rlhf commands stop with, besides `classic_rl.safe_io.UserError` (a mistake in the input),
and the `--debug` flag that turns their one-line messages back into tracebacks. Light: no torch import."""

from __future__ import annotations

import os

from classic_rl.safe_io import DEBUG_ENV, ConfigError, TrainingDiverged

__all__ = ["ConfigError", "DiskFull", "EngineError", "TrainingDiverged", "pop_debug_flag"]


class EngineError(RuntimeError):
    """A generation engine (vLLM) failed: crashed, unreachable or refused a request. The run stops with this
    one line (exit status 1); the checkpoints written before stay as they are."""


def pop_debug_flag(argv: list[str]) -> bool:
    """Remove a bare `--debug` (or `--debug true`) from argv and set RL_TOOLKIT_DEBUG=1; True if found.

    `--debug underflow_overflow` etc. (transformers' own debug options) are left for transformers.
    """
    found = False
    for i in reversed(range(len(argv))):
        if argv[i] != "--debug":
            continue
        following = argv[i + 1] if i + 1 < len(argv) else None
        if following is None or following.startswith("-"):
            del argv[i]
        elif following.lower() in ("true", "1", "yes"):
            del argv[i : i + 2]
        else:
            continue
        found = True
    if found:
        os.environ[DEBUG_ENV] = "1"
    return found


class DiskFull(RuntimeError):
    """The disk filled up while a run wrote a file; the message names the file and the last complete
    checkpoint (``rlhf.common.checkpoints.full_disk_reported``). One line, exit status 1."""
