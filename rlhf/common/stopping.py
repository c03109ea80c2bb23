"""Ctrl-C and SIGTERM in the rlhf training loops: stop at the next safe point, save, say how to resume.

The signal handling is classic_rl's (``classic_rl.checkpoint.stop_signals``): inside a training loop the
first SIGINT/SIGTERM only sets the ``STOP`` flag and a second one stops at once (KeyboardInterrupt). The
loops -- ``RLTrainer.train`` after each update, the TRL Trainer steps (``rlhf.steps.runs``) after each
optimizer step -- ask :func:`stop_pending`, save a checkpoint and raise :class:`RunStopped`, which
``rlhf.cli`` prints as one line and turns into exit status 130 (143 for SIGTERM), as a shell does.
"""

from __future__ import annotations

import sys

from classic_rl.checkpoint import STOP, StopRequested, stop_signals

__all__ = ["EXIT_CODES", "RESUME_HINT", "RunStopped", "stop_pending", "stop_signals"]

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
RESUME_HINT = "continue with the same command and --resume_from_checkpoint true"
_CODES = {None: 0, "SIGINT": 1, "SIGTERM": 2}


class RunStopped(StopRequested):
    """A stop request honoured at a safe point, after the checkpoint was written; ``str()`` is the line
    the user sees (``rlhf CMD: <it>``)."""

    def __init__(self, signal_name: str, where: str, resume_hint: str = RESUME_HINT):
        super().__init__(signal_name)
        self.where, self.resume_hint = where, resume_hint

    def __str__(self) -> str:
        return f"stopped by {self.signal_name} {self.where}" + (f"; {self.resume_hint}" if self.resume_hint else "")


def stop_pending() -> str | None:
    """The signal of a pending stop request, or None; the same answer on every rank (a request seen by
    one rank stops them all at the same update, since the checkpoint that follows is a collective).
    Under a launcher every rank must call it at the same point."""
    local = STOP.signal_name
    torch = sys.modules.get("torch")
    dist = torch.distributed if torch is not None else None
    if dist is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return local
    device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in str(dist.get_backend()) else "cpu"
    code = torch.tensor([_CODES[local]], device=device)
    dist.all_reduce(code, op=dist.ReduceOp.MAX)
    return {value: name for name, value in _CODES.items()}[int(code.item())]
