"""How an rlhf command's process ends under a distributed launch: in order, before the interpreter exits.

Left to the interpreter's exit, the process group (gloo, NCCL) and DeepSpeed's communication backend
are torn down by C++ static destructors in no fixed order, while the other ranks may still be talking
to this one; a rank then dies with ``terminate called without an active exception`` (SIGABRT, exit 1)
after a run that finished and wrote everything. So :func:`end_processes` is called once at the end of
``rlhf.cli.main``: every rank waits for the others (only after a success: a failed rank would leave
its peers waiting), then DeepSpeed's backend releases its groups and the default process group is
destroyed. Nothing here imports torch: a command that never loaded it (``--help``) has nothing to end.
"""

from __future__ import annotations

import contextlib
import sys

__all__ = ["end_processes"]


def end_processes(finished: bool) -> None:
    """Wait for every rank (if ``finished``) and destroy the process group, if one was started."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return
    if finished:
        dist.barrier()  # no rank tears its end down while another still uses it
    deepspeed_comm = sys.modules.get("deepspeed.comm")
    with contextlib.suppress(Exception):  # a failed run's teardown must not hide its error
        if deepspeed_comm is not None and deepspeed_comm.is_initialized():
            deepspeed_comm.destroy_process_group()  # also drops DeepSpeed's references to its groups
        if dist.is_initialized():
            dist.destroy_process_group()
