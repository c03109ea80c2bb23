"""A3C: asynchronous advantage actor-critic with worker processes (Mnih et al., 2016).

The agent's policy lives in shared memory (``share_memory()``), and so does the state of one
Adam optimizer. Each of ``n_workers`` processes (``torch.multiprocessing``) loops::

    copy the shared weights into its local network
    collect n_steps in its own environment (the shared RolloutCollector)
    loss = actor_critic_loss(...)                 # the same loss as actor_critic / a2c
    backward on the local network, clip, hand the gradients to the shared parameters
    shared_optimizer.step()                       # lock-free, Hogwild-style

until the shared step (or episode) counter reaches the budget or the main process asks it to
stop. The main process only relays finished episodes to the logger. Workers ignore SIGINT: on
Ctrl-C the main process sets the stop event, joins every worker (terminating stragglers) and
re-raises, so no process outlives ``learn``. Worker results depend on scheduling, so A3C runs
are not bit-reproducible even with a fixed seed.

The workers must share memory, so they are always local processes: ``worker_backend=ray`` is
refused (:data:`classic_rl.workers.A3C_RAY_REFUSAL`). ``num_workers`` is the deprecated old
name of ``n_workers``.
"""

from __future__ import annotations

import queue as queue_lib
import time
import traceback
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.multiprocessing as mp

from classic_rl.agents.actor_critic import actor_critic_loss
from classic_rl.agents.base import register
from classic_rl.agents.on_policy import OnPolicyAgent, OnPolicyConfig, RolloutCollector, make_vector_env
from classic_rl.env_utils import make_env
from classic_rl.logger import RunLogger
from classic_rl.policies import ActorCritic
from classic_rl.seeding import seed_everything
from classic_rl.threads import set_worker_threads
from classic_rl.workers import (
    A3C_RAY_REFUSAL,
    DEFAULT_TIMEOUT_S,
    start_processes,
    stop_processes,
    validate_worker_settings,
)

__all__ = ["A3C", "A3CConfig"]

START_METHODS = ("spawn", "fork", "forkserver")
JOIN_TIMEOUT_S = 10.0


@dataclass
class A3CConfig(OnPolicyConfig):
    """Settings of ``a3c``."""

    renamed: ClassVar[dict[str, str]] = {"num_workers": "n_workers"}
    """Old setting names still accepted (with a warning)."""

    n_workers: int = 2
    """Worker processes, each with its own environment."""
    worker_backend: str = "process"
    """Only ``process``: Hogwild workers share memory, which Ray actors cannot (see the module docstring)."""
    n_steps: int = 5
    """Steps per worker rollout (t_max of the paper): the n of the n-step targets."""
    learning_rate: float = 1e-3
    """Learning rate of the shared Adam optimizer."""
    start_method: str = "spawn"
    """How worker processes start: spawn (portable, default), fork or forkserver."""

    def validate(self) -> None:
        super().validate()
        validate_worker_settings(
            "a3c", self.n_workers, self.worker_backend, DEFAULT_TIMEOUT_S, min_workers=1, ray_refusal=A3C_RAY_REFUSAL
        )
        if self.start_method not in START_METHODS:
            raise ValueError(
                f"start_method={self.start_method!r} is not valid; use one of {', '.join(START_METHODS)}"
            )
        if self.normalize_obs or self.normalize_reward:
            raise ValueError(
                "a3c does not support normalize_obs / normalize_reward (no shared running stats)"
            )
        if self.optimizer != "adam":
            raise ValueError("a3c shares one Adam optimizer between its workers; set optimizer: adam")


def shared_adam(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam whose moment estimates are created up front in shared memory, so every worker's
    optimizer object updates the same statistics (and the same parameters)."""
    opt = torch.optim.Adam(params, lr=lr, eps=1e-5, foreach=False)
    for p in params:
        state = opt.state[p]
        state["step"] = torch.zeros((), dtype=torch.float32).share_memory_()
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format).share_memory_()
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format).share_memory_()
    return opt


class _QueueLogger:
    """Stands in for the RunLogger inside a worker: finished episodes go to the main process."""

    def __init__(self, q: Any, rank: int) -> None:
        self.q, self.rank = q, rank

    def episode(self, step: int, episode_return: float, length: int) -> None:
        self.q.put(("episode", self.rank, float(episode_return), int(length)))


def _worker(
    rank: int,
    env_id: str,
    env_kwargs: dict[str, Any],
    config: A3CConfig,
    seed: int,
    shared: ActorCritic,
    optim_state: list[dict[str, torch.Tensor]],
    counters: dict[str, Any],
    limits: tuple[int, int | None, int | None],
    messages: Any,
    stop: Any,
) -> None:
    """One A3C learner process (see the module docstring)."""
    collector = None
    try:
        set_worker_threads(config.n_workers + 1)  # the run's per-process count (classic_rl.threads)
        seed_everything(seed)
        env = make_env(env_id, env_kwargs)
        local = ActorCritic(env.observation_space, env.action_space, config)
        env.close()
        shared_params, local_params = list(shared.parameters()), list(local.parameters())
        opt = torch.optim.Adam(shared_params, lr=config.learning_rate, eps=1e-5, foreach=False)
        for p, state in zip(shared_params, optim_state):
            opt.state[p] = state
        collector = RolloutCollector(make_vector_env(env_id, config.num_envs, env_kwargs), local, seed)
        log = _QueueLogger(messages, rank)
        start_steps, max_steps, max_episodes = limits
        updates = 0
        while not stop.is_set():
            with torch.no_grad():
                for lp, sp in zip(local_params, shared_params):
                    lp.copy_(sp)
            rollout = collector.collect(config.n_steps, log)
            with counters["steps"].get_lock():
                counters["steps"].value += rollout.num_steps
                steps = counters["steps"].value
            with counters["episodes"].get_lock():
                counters["episodes"].value += rollout.num_episodes
                episodes = counters["episodes"].value
            if config.anneal_lr and max_steps is not None:
                done = (steps - start_steps) / (max_steps - start_steps)
                opt.param_groups[0]["lr"] = config.learning_rate * max(0.0, 1.0 - done)
            loss, _ = actor_critic_loss(local, rollout, config)
            local.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(local_params, config.max_grad_norm)
            for lp, sp in zip(local_params, shared_params):
                sp.grad = lp.grad
            opt.step()
            updates += 1
            if (max_steps is not None and steps >= max_steps) or (
                max_episodes is not None and episodes >= max_episodes
            ):
                break
        messages.put(("done", rank, updates, collector.total_steps))
    except KeyboardInterrupt:  # pragma: no cover - SIGINT is ignored in workers
        messages.put(("done", rank, 0, 0))
    except BaseException:  # report, so the main process can raise with the worker's traceback
        messages.put(("error", rank, traceback.format_exc()))
    finally:
        if collector is not None:
            collector.close()


@register
class A3C(OnPolicyAgent):
    """Asynchronous advantage actor-critic (see the module docstring)."""

    algo = "a3c"
    Config = A3CConfig
    default_steps = 200_000

    def setup(self) -> None:
        if not isinstance(self._env_arg, str):
            raise ValueError(
                "a3c workers build their own environments: pass an environment id, not an instance"
            )
        super().setup()
        self.worker_stats: list[dict[str, int]] = []

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        self.policy.share_memory()
        return {"optimizer": shared_adam(list(self.policy.parameters()), self.config.learning_rate)}

    def _learn(self, total_steps: int | None, episodes: int | None, logger: RunLogger) -> None:
        cfg = self.config
        ctx = mp.get_context(cfg.start_method)
        counters = {
            "steps": ctx.Value("q", self.num_timesteps),
            "episodes": ctx.Value("q", self.num_episodes),
        }
        limits = (
            self.num_timesteps,
            None if total_steps is None else self.num_timesteps + total_steps,
            None if episodes is None else self.num_episodes + episodes,
        )
        opt = self._optimizers["optimizer"]
        optim_state = [opt.state[p] for p in self.policy.parameters()]
        messages, stop = ctx.Queue(), ctx.Event()
        base_seed = self.seed + 7919 * (self.num_timesteps + 1)  # fresh worker seeds when learning again
        args = [
            (rank, self._env_arg, self.env_kwargs, cfg, base_seed + 1000 * rank, self.policy, optim_state, counters,
             limits, messages, stop)
            for rank in range(cfg.n_workers)
        ]
        workers = start_processes(ctx, _worker, args, "a3c")
        self.workers = workers
        self.worker_stats = []
        errors: list[str] = []
        try:
            self._relay(workers, messages, counters, logger, errors)
        finally:
            stop.set()
            self._shutdown(workers, messages, counters, logger, errors)
        if errors:
            raise RuntimeError(f"an a3c worker failed:\n{errors[0]}")

    def _relay(self, workers, messages, counters, logger: RunLogger, errors: list[str]) -> None:
        """Relay worker messages to the logger until every worker has finished."""
        last_steps = counters["steps"].value
        while any(w.is_alive() for w in workers) or not messages.empty():
            self._drain(messages, counters, logger, errors, timeout=0.05)
            steps = counters["steps"].value
            if logger.unit == "step" and steps > last_steps:
                logger.advance(steps - last_steps)
            self.num_timesteps = steps
            self.maybe_evaluate(last_steps, logger)  # reads the shared weights while workers train
            last_steps = steps
            if errors:
                return
            self._safe_point()  # checkpoints copy the shared weights while workers train

    def _drain(self, messages, counters, logger: RunLogger, errors: list[str], timeout: float) -> None:
        try:
            msg = messages.get(timeout=timeout)
        except queue_lib.Empty:
            return
        while True:
            kind = msg[0]
            if kind == "episode":
                self.num_episodes += 1
                logger.episode(counters["steps"].value, msg[2], msg[3])
            elif kind == "done":
                self.worker_stats.append({"rank": msg[1], "updates": msg[2], "steps": msg[3]})
            elif kind == "error":
                errors.append(msg[2])
            try:
                msg = messages.get_nowait()
            except queue_lib.Empty:
                return

    def _shutdown(self, workers, messages, counters, logger: RunLogger, errors: list[str]) -> None:
        """Join every worker (draining the queue so none blocks on a full pipe), then terminate
        any that did not stop within ``JOIN_TIMEOUT_S``."""
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
            self._drain(messages, counters, logger, errors, timeout=0.05)
        stop_processes(workers, timeout_s=0.0)
        self._drain(messages, counters, logger, errors, timeout=0.0)
        messages.close()
        messages.join_thread()
        self.num_timesteps = counters["steps"].value
