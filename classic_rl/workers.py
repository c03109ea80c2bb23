"""Worker pools: ``n`` long-lived workers, each holding one object, driven round by round.

ARS's rollout workers and D4PG's actors are the same pattern: every worker builds one object
(an environment plus whatever state it keeps between rounds), then the learner repeatedly
asks every worker to run one method and waits for all the answers, in worker order::

    pool = make_pool(RolloutWorker, [(spec,)] * n, backend="process", name="ars")
    try:
        pool.submit("run", [(tasks_0,), (tasks_1,)])    # worker i gets args[i]
        ...                                             # the learner may work meanwhile
        results = pool.gather()                         # [worker 0's answer, worker 1's answer]
    finally:
        pool.close()

Two backends give the same answers for the same requests:

* ``process`` (default): one local process per worker (fork on Linux, spawn elsewhere), over
  pipes. Workers ignore SIGINT, so Ctrl-C reaches only the learner, which stops them.
* ``ray``: one Ray actor (1 CPU) per worker, so a run can use the cores of several machines.
  When ``RAY_ADDRESS`` is set the pool joins that cluster, as Ray's own tools do (every node
  needs this package installed); otherwise it starts a local Ray instance with ``n`` CPUs.
  Ray is an optional dependency: ``pip install "rl-course-toolkit[ray]"`` or ``pip install ray``.

A worker that dies (a crash, ``os._exit``, the OOM killer, a lost node) or raises is reported
as a :class:`WorkerError` naming the worker; a worker that does not answer within
``timeout_s`` is reported too, so the learner never waits forever.

A3C's Hogwild workers do not fit the request/answer pattern: they update one set of parameters
in shared memory on their own schedule. They use this module's :func:`start_processes` /
:func:`stop_processes` and refuse ``worker_backend=ray`` (:data:`A3C_RAY_REFUSAL`): Ray actors
are separate processes, possibly on other machines, with no memory to share.
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import re
import signal
import sys
import threading
import time
import traceback
from typing import Any

BACKENDS = ("process", "ray")
DEFAULT_TIMEOUT_S = 600.0
"""How long one round may take before a worker counts as hung (generous: a round is seconds)."""
STARTUP_TIMEOUT_S = 300.0
"""How long Ray may take to place and build the actors (scheduling, imports on a busy node)."""


A3C_RAY_REFUSAL = (
    "a3c's Hogwild workers update one copy of the weights and of Adam's state in shared memory, "
    "which Ray actors (possibly on other machines) cannot share; use worker_backend=process, "
    "or ppo/a2c with vec_env=async for synchronous parallel collection"
)


def local_worker_count(config: Any) -> int:
    """Worker processes a run with these settings starts on this machine (``n_workers`` with the
    ``process`` backend; Ray places its actors itself). ``config``: a Config object or its dict."""
    get = config.get if isinstance(config, dict) else (lambda key, default: getattr(config, key, default))
    if get("worker_backend", "process") != "process":
        return 0
    return max(0, int(get("n_workers", 0) or 0))


class WorkerError(RuntimeError):
    """A worker died, raised an exception or did not answer in time."""


def validate_worker_settings(
    algo: str, n_workers: int, backend: str, timeout_s: float, min_workers: int = 0, ray_refusal: str | None = None,
) -> None:
    """Check ``n_workers`` / ``worker_backend`` / ``worker_timeout_s`` of ``algo`` (ValueError, one line)."""
    if n_workers < min_workers:
        zero = " (0 = in the learner's process)" if min_workers == 0 else ""
        raise ValueError(f"{algo}: n_workers must be >= {min_workers}{zero}, got {n_workers}")
    if backend not in BACKENDS:
        raise ValueError(f"{algo}: worker_backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "ray" and ray_refusal:
        raise ValueError(f"{algo}: worker_backend=ray is not supported: {ray_refusal}")
    if backend == "ray" and importlib.util.find_spec("ray") is None:
        raise ValueError(f'{algo}: worker_backend=ray needs Ray: pip install ray (or pip install "rl-course-toolkit[ray]")')
    if backend == "ray" and n_workers == 0:
        raise ValueError(f"{algo}: worker_backend=ray needs n_workers >= 1 (n_workers=0 runs in the learner's process)")
    if not timeout_s > 0:
        raise ValueError(f"{algo}: worker_timeout_s must be positive, got {timeout_s}")


class WorkerPool:
    """Interface of the backends (see the module docstring)."""

    n: int

    def submit(self, method: str, args: list[tuple]) -> None:
        """Ask worker ``i`` to run ``method(*args[i])``; returns at once."""
        raise NotImplementedError

    def gather(self) -> list[Any]:
        """The answers to the last :meth:`submit`, in worker order; raises :class:`WorkerError`."""
        raise NotImplementedError

    def call(self, method: str, args: list[tuple]) -> list[Any]:
        """:meth:`submit` then :meth:`gather`."""
        self.submit(method, args)
        return self.gather()

    def close(self) -> None:
        """Stop every worker (idempotent; safe after an error)."""
        raise NotImplementedError

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_pool(
    worker_cls: type, init_args: list[tuple], backend: str = "process", name: str = "worker",
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> WorkerPool:
    """Start ``len(init_args)`` workers; worker ``i`` holds ``worker_cls(*init_args[i])``."""
    if backend == "process":
        return ProcessPool(worker_cls, init_args, name, timeout_s)
    if backend == "ray":
        return RayPool(worker_cls, init_args, name, timeout_s)
    raise ValueError(f"worker_backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


# ---------------------------------------------------------------------------------- local processes
def start_processes(ctx: Any, target: Any, args: list[tuple], name: str) -> list[Any]:
    """Start one daemon process per ``args`` entry with SIGINT ignored (kept across spawn's exec),
    so Ctrl-C reaches only the learner, which then stops them."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        procs = [ctx.Process(target=target, args=a, daemon=True, name=f"{name}-worker-{rank}") for rank, a in enumerate(args)]
        for proc in procs:
            proc.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    return procs


def stop_processes(procs: list[Any], timeout_s: float = 5.0) -> None:
    """Join every process, terminating any still running after ``timeout_s`` (shared deadline)."""
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
        proc.join()


def _serve(conn: Any, worker_cls: type, init_args: tuple, processes: int = 1) -> None:
    """A worker process: build the object, then answer (method, args) requests until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the learner's to handle
    from classic_rl.threads import set_worker_threads

    set_worker_threads(processes)  # the run's per-process count, not one per core in every worker
    try:
        obj = worker_cls(*init_args)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the learner is gone
            return
        if message is None:
            return
        method, args = message
        try:
            conn.send(("ok", getattr(obj, method)(*args)))
        except BaseException:
            conn.send(("error", traceback.format_exc()))


class ProcessPool(WorkerPool):
    """One local process per worker, over pipes."""

    def __init__(self, worker_cls: type, init_args: list[tuple], name: str, timeout_s: float) -> None:
        self.n, self.name, self.timeout_s = len(init_args), name, timeout_s
        # fork starts workers in milliseconds on Linux; elsewhere use the safe default.
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        self._pending = False
        self._failed = False
        pipes = [ctx.Pipe() for _ in init_args]
        self.conns = [parent for parent, _ in pipes]
        args = [(child, worker_cls, a, self.n + 1) for (_, child), a in zip(pipes, init_args)]  # + the learner
        self.procs = start_processes(ctx, _serve, args, name)
        for _, child in pipes:
            child.close()

    def submit(self, method: str, args: list[tuple]) -> None:
        if len(args) != self.n:
            raise ValueError(f"{self.name}: {len(args)} requests for {self.n} workers")
        for conn, a in zip(self.conns, args):
            try:
                conn.send((method, a))
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass  # a dead worker: gather() reports it with its exit code
        self._pending = True

    def gather(self) -> list[Any]:
        if not self._pending:
            raise RuntimeError(f"{self.name}: gather() without submit()")
        self._pending = False
        deadline = time.monotonic() + self.timeout_s
        try:
            return [self._answer(rank, deadline) for rank in range(self.n)]
        except WorkerError:
            self._failed = True  # close() then stops the others at once instead of waiting for them
            raise

    def _answer(self, rank: int, deadline: float) -> Any:
        conn, proc = self.conns[rank], self.procs[rank]
        ready = mp_connection.wait([conn, proc.sentinel], timeout=max(0.0, deadline - time.monotonic()))
        if conn in ready or conn.poll():  # an answer sent just before exiting still counts
            try:
                status, value = conn.recv()
            except (EOFError, OSError):
                status, value = "died", None
        elif ready:
            status, value = "died", None
        else:
            raise WorkerError(
                f"{self.name} worker {rank} did not answer within {self.timeout_s:g} s "
                f"(hung?); raise worker_timeout_s if its rounds are really this slow"
            )
        if status == "ok":
            return value
        if status == "error":
            raise WorkerError(f"{self.name} worker {rank} failed:\n{value}")
        proc.join(timeout=1.0)
        raise WorkerError(f"{self.name} worker {rank} (pid {proc.pid}) died with exit code {proc.exitcode}")

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass
        stop_processes(self.procs, timeout_s=0.0 if self._failed else 5.0)
        for conn in self.conns:
            conn.close()
        self.conns, self.procs = [], []


# ---------------------------------------------------------------------------------- Ray
class _RayHost:
    """The Ray actor: holds one worker object and runs its methods."""

    def __init__(self, worker_cls: type, init_args: tuple) -> None:
        self.obj = worker_cls(*init_args)

    def call(self, method: str, args: tuple) -> Any:
        return getattr(self.obj, method)(*args)

    def ready(self) -> bool:
        return True


def import_ray() -> Any:
    """``ray``, or a one-line error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError(
            'worker_backend=ray needs Ray: pip install ray (or pip install "rl-course-toolkit[ray]")'
        ) from None
    return ray


def ensure_ray(n_workers: int) -> Any:
    """Connect to ``RAY_ADDRESS`` when set, else start a local instance with ``n_workers`` CPUs.

    A Ray already initialised in this process (e.g. by the user's script) is used as it is.
    """
    ray = import_ray()
    if not ray.is_initialized():
        quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "configure_logging": True}
        # ray.init replaces the SIGTERM handler with sys.exit: keep ours (stop at a safe point, checkpoint).
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if os.environ.get("RAY_ADDRESS"):
                ray.init(**quiet)  # ray.init reads RAY_ADDRESS itself (also ray:// client addresses)
            else:
                # "local": never attach to another user's cluster found in /tmp/ray on a shared machine
                ray.init(address="local", num_cpus=n_workers, include_dashboard=False, **quiet)
        finally:
            if threading.current_thread() is threading.main_thread():
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < n_workers:
        raise WorkerError(
            f"the Ray cluster has {cpus:g} CPUs but n_workers={n_workers} needs one each; "
            f"lower n_workers or add nodes"
        )
    return ray


class RayPool(WorkerPool):
    """One Ray actor (1 CPU) per worker."""

    def __init__(self, worker_cls: type, init_args: list[tuple], name: str, timeout_s: float) -> None:
        self.n, self.name, self.timeout_s = len(init_args), name, timeout_s
        self.ray = ensure_ray(self.n)
        host = self.ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(_RayHost)
        self.actors = [host.remote(worker_cls, args) for args in init_args]
        self._refs: list[Any] | None = None
        # Wait for every actor to be built, so the first round's timeout covers only its work.
        try:
            self._wait([actor.ready.remote() for actor in self.actors], max(timeout_s, STARTUP_TIMEOUT_S), "start")
        except WorkerError:
            self.close()
            raise

    def submit(self, method: str, args: list[tuple]) -> None:
        if len(args) != self.n:
            raise ValueError(f"{self.name}: {len(args)} requests for {self.n} workers")
        self._refs = [actor.call.remote(method, a) for actor, a in zip(self.actors, args)]

    def gather(self) -> list[Any]:
        if self._refs is None:
            raise RuntimeError(f"{self.name}: gather() without submit()")
        refs, self._refs = self._refs, None
        return self._wait(refs, self.timeout_s, "answer")

    def _wait(self, refs: list[Any], timeout_s: float, what: str) -> list[Any]:
        exceptions = self.ray.exceptions
        deadline = time.monotonic() + timeout_s
        answers = []
        for rank, ref in enumerate(refs):
            try:
                answers.append(self.ray.get(ref, timeout=max(0.0, deadline - time.monotonic())))
            except exceptions.GetTimeoutError:
                hint = (
                    "raise worker_timeout_s if its rounds are really this slow" if what == "answer"
                    else "does the cluster have a free CPU for it?"
                )
                raise WorkerError(
                    f"{self.name} worker {rank} (Ray actor) did not {what} within {timeout_s:g} s; {hint}"
                ) from None
            except exceptions.RayActorError as err:
                # a failed constructor's traceback is in the message; a crash's message is a long generic paragraph
                detail = _plain(err) if "creation task" in str(err) else _first_line(err)
                raise WorkerError(f"{self.name} worker {rank} (Ray actor) died: {detail}") from None
            except exceptions.RayTaskError as err:
                raise WorkerError(f"{self.name} worker {rank} (Ray actor) failed:\n{err}") from None
        return answers

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:  # already dead or the cluster is gone: nothing left to stop
                pass
        self.actors = []


def _plain(err: BaseException) -> str:
    """The message without the terminal colour codes Ray puts in it."""
    return re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip() or type(err).__name__


def _first_line(err: BaseException) -> str:
    return _plain(err).splitlines()[0]
