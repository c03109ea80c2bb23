"""How many CPU threads torch uses in each process of a run, chosen in one place for both CLIs.

torch's default is one thread per core. The networks here are small (MLPs of a few thousand
weights, tiny LMs), so a matrix product is over before extra threads have started: they only add
synchronisation, and on a small or shared machine they fight the other processes of the run
(workers, vector envs, data loaders) and of other users for the same cores. One thread per
process is the fastest default for these models (measured in docs/benchmarks.md); a user who
knows better sets ``--num_threads N`` or ``OMP_NUM_THREADS``.

The rule (:func:`choose_num_threads`): the ``--num_threads`` flag, else the environment's
``OMP_NUM_THREADS`` (what OpenMP itself reads, so a user's setting keeps working), else
:data:`DEFAULT_PER_PROCESS` capped by the cores this process may run on divided by the run's
local processes, never below one.
"""

from __future__ import annotations

import os

from classic_rl.safe_io import UserError

__all__ = [
    "DEFAULT_PER_PROCESS",
    "available_cores",
    "choose_num_threads",
    "configure_threads",
    "local_processes",
    "pop_num_threads_flag",
    "set_worker_threads",
    "threads_line",
]

DEFAULT_PER_PROCESS = 1
"""Threads per process when neither the flag nor OMP_NUM_THREADS says (see the module docstring)."""


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's or taskset's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def local_processes(workers: int = 1) -> int:
    """Processes of this run on this machine: ``LOCAL_WORLD_SIZE`` (set by torchrun and
    ``accelerate launch`` for each rank) when present, else ``workers``."""
    raw = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return max(1, int(workers))


def _positive(value: str, where: str) -> int:
    # OpenMP accepts a list for nested levels ("4,2"); the first entry is this level's count.
    first = value.split(",")[0].strip()
    if not first.isdigit() or int(first) < 1:
        raise UserError(f"{where} must be a positive integer, got {value!r}")
    return int(first)


def choose_num_threads(requested: int | None, processes: int = 1) -> tuple[int, str]:
    """(threads per process, why): the flag, else ``OMP_NUM_THREADS``, else the default for the cores."""
    if requested is not None:
        if int(requested) < 1:
            raise UserError(f"--num_threads must be a positive integer, got {requested}")
        return int(requested), "from --num_threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        return _positive(env, "OMP_NUM_THREADS"), "from OMP_NUM_THREADS"
    cores = available_cores()
    processes = max(1, int(processes))
    n = max(1, min(DEFAULT_PER_PROCESS, cores // processes))
    plural = "process" if processes == 1 else "processes"
    return n, f"from {cores} cores, {processes} {plural}"


def threads_line(n: int, reason: str) -> str:
    """The one line a command prints about its thread count."""
    return f"threads: {n} per process ({reason}; set --num_threads or OMP_NUM_THREADS to change)"


def configure_threads(requested: int | None, processes: int = 1) -> str:
    """Choose, apply to torch, and pass on to child processes; returns :func:`threads_line`."""
    import torch

    n, reason = choose_num_threads(requested, processes)
    torch.set_num_threads(n)
    # Children (worker pools, spawned A3C learners, async vector envs, accelerate's ranks) read
    # OMP_NUM_THREADS when they import torch, so they follow the same choice.
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    return threads_line(n, reason)


def set_worker_threads(processes: int) -> int:
    """In a worker process: the run's per-process count (``OMP_NUM_THREADS`` when the parent set
    it, else the default for ``processes`` local processes), applied to torch; returns it."""
    import torch

    n, _ = choose_num_threads(None, processes)
    torch.set_num_threads(n)
    return n


def pop_num_threads_flag(argv: list[str]) -> int | None:
    """Remove ``--num_threads N`` / ``--num_threads=N`` from ``argv`` (in place); its value or None."""
    value: int | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--num_threads" or arg.startswith("--num_threads="):
            if "=" in arg:
                raw, take = arg.split("=", 1)[1], 1
            elif i + 1 < len(argv):
                raw, take = argv[i + 1], 2
            else:
                raise UserError("--num_threads needs a value, e.g. --num_threads 2")
            value = _positive(raw, "--num_threads")
            del argv[i : i + take]
            continue
        i += 1
    return value
