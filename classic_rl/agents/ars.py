"""Augmented Random Search (Mania, Guy and Recht, 2018): derivative-free policy search.

Each iteration samples ``N`` directions ``delta_k ~ N(0, I)`` in parameter space and rolls out
``theta + nu delta_k`` and ``theta - nu delta_k`` (same env seed for both: common random
numbers). With the ``b`` directions of largest ``max(r+, r-)``::

    theta <- theta + alpha / (b sigma_R) * sum_{k in top b} (r+_k - r-_k) delta_k

where ``sigma_R`` is the standard deviation of the ``2b`` returns used (reward-std scaling).
V1 feeds raw observations to the policy; V2 feeds ``(x - mu) / sigma`` with running
statistics of every state visited so far (frozen during an iteration, updated after it).
The policy is linear (``a = M x``, the paper's choice) unless ``hidden`` asks for a small tanh
MLP; it runs in numpy, so rollouts in worker processes need no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from classic_rl.agents.base import Agent, register
from classic_rl.env_utils import make_env
from classic_rl.logger import RunLogger
from classic_rl.workers import DEFAULT_TIMEOUT_S, WorkerPool, make_pool, validate_worker_settings

VERSIONS = ("v1", "v2")


@dataclass
class ARSConfig:
    version: str = "v2"
    """``v1``: raw observations; ``v2``: running observation normalisation."""
    n_directions: int = 8
    """N: random directions per iteration (2N rollouts)."""
    top_directions: int | None = None
    """b: directions used in the update, ranked by max(r+, r-); None uses all N."""
    step_size: float = 0.02
    """alpha."""
    delta_std: float = 0.05
    """nu: scale of the parameter perturbations."""
    hidden: list[int] = field(default_factory=list)
    """Hidden layer sizes of a tanh MLP policy; empty (default) is the linear policy."""
    reward_shift: float = 0.0
    """Subtracted from every reward for the update (the paper's alive-bonus shift, e.g. 1 for Hopper)."""
    n_workers: int = 2
    """Rollout workers (processes or Ray actors); 0 runs the rollouts in the learner's process.
    Directions are split evenly between workers, so results do not depend on n_workers."""
    worker_backend: str = "process"
    """``process`` (local processes) or ``ray`` (Ray actors; joins ``RAY_ADDRESS`` when set)."""
    worker_timeout_s: float = DEFAULT_TIMEOUT_S
    """Seconds one iteration's rollouts may take before a silent worker counts as hung."""

    def validate(self) -> None:
        if self.version not in VERSIONS:
            raise ValueError(f"ars: version must be one of {', '.join(VERSIONS)}, got {self.version!r}")
        if self.n_directions < 1:
            raise ValueError(f"ars: n_directions must be >= 1, got {self.n_directions}")
        b = self.top_directions
        if b is not None and not 1 <= b <= self.n_directions:
            raise ValueError(f"ars: top_directions must be in [1, n_directions={self.n_directions}], got {b}")
        if self.delta_std <= 0 or self.step_size <= 0:
            raise ValueError("ars: delta_std and step_size must be positive")
        validate_worker_settings("ars", self.n_workers, self.worker_backend, self.worker_timeout_s)


# ---------------------------------------------------------------------------------- the math
def ars_update(
    theta: np.ndarray, deltas: np.ndarray, r_plus: np.ndarray, r_minus: np.ndarray, step_size: float, top_b: int,
) -> tuple[np.ndarray, float]:
    """One ARS step: ``theta + alpha / (b sigma_R) sum_top-b (r+ - r-) delta``; returns (theta, sigma_R).

    ``deltas`` has shape (N, dim); the top ``b`` directions are those with the largest
    ``max(r+, r-)`` (ties broken by index). When every used return is equal, ``sigma_R`` is 1.
    """
    scores = np.maximum(r_plus, r_minus)
    top = np.argsort(-scores, kind="stable")[:top_b]
    sigma_r = float(np.concatenate([r_plus[top], r_minus[top]]).std())
    if sigma_r < 1e-8:
        sigma_r = 1.0
    step = (r_plus[top] - r_minus[top]) @ deltas[top]
    return theta + step_size / (top_b * sigma_r) * step, sigma_r


class RunningObsStat:
    """Running mean and variance of observations, merged from batches (Chan et al.'s formula)."""

    def __init__(self, dim: int) -> None:
        self.count = 0.0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)

    def update(self, count: float, total: np.ndarray, total_sq: np.ndarray) -> None:
        """Merge a batch given by its size, sum and sum of squares."""
        if count <= 0:
            return
        b_mean = total / count
        b_m2 = np.maximum(total_sq - count * b_mean**2, 0.0)
        n = self.count + count
        diff = b_mean - self.mean
        self.mean = self.mean + diff * count / n
        self.m2 = self.m2 + b_m2 + diff**2 * self.count * count / n
        self.count = n

    @property
    def std(self) -> np.ndarray:
        """Standard deviation; 1 where it is unknown or (near) zero, so such inputs pass unscaled."""
        if self.count < 2:
            return np.ones_like(self.mean)
        std = np.sqrt(self.m2 / self.count)
        return np.where(std < 1e-8, 1.0, std)


class NumpyPolicy:
    """A linear map ``a = M x`` (no hidden layers) or a tanh MLP, over a flat parameter vector."""

    def __init__(self, obs_dim: int, out_dim: int, hidden: list[int]) -> None:
        dims = [obs_dim, *hidden, out_dim]
        self.shapes = [(o, i) for i, o in zip(dims[:-1], dims[1:])]
        self.biases = bool(hidden)  # the paper's linear policy has no bias; an MLP needs them
        self.dim = sum(o * i + (o if self.biases else 0) for o, i in self.shapes)

    def init_params(self, rng: np.random.Generator) -> np.ndarray:
        """Zeros for the linear policy (as in the paper); small random weights for an MLP."""
        if not self.biases:
            return np.zeros(self.dim)
        parts = []
        for o, i in self.shapes:
            parts += [rng.standard_normal(o * i) / np.sqrt(i), np.zeros(o)]
        return np.concatenate(parts)

    def __call__(self, params: np.ndarray, x: np.ndarray) -> np.ndarray:
        offset, last = 0, len(self.shapes) - 1
        for layer, (o, i) in enumerate(self.shapes):
            w = params[offset : offset + o * i].reshape(o, i)
            offset += o * i
            x = w @ x
            if self.biases:
                x = x + params[offset : offset + o]
                offset += o
            if layer < last:
                x = np.tanh(x)
        return x


class ActionMap:
    """Policy output -> env action: clipped to a Box, or argmax for Discrete."""

    def __init__(self, space: gym.Space) -> None:
        self.discrete = isinstance(space, gym.spaces.Discrete)
        if self.discrete:
            self.out_dim = int(space.n)
        else:
            self.out_dim = int(np.prod(space.shape))
            self.shape, self.low, self.high = space.shape, space.low, space.high

    def __call__(self, out: np.ndarray) -> Any:
        if self.discrete:
            return int(np.argmax(out))
        return np.clip(out.reshape(self.shape), self.low, self.high).astype(np.float32)


# ---------------------------------------------------------------------------------- rollouts
@dataclass
class RolloutSpec:
    """What a rollout worker needs to rebuild the environment and the policy."""

    env: Any
    env_kwargs: dict
    policy: NumpyPolicy
    action_map: ActionMap
    reward_shift: float
    collect_stats: bool


def rollout(env: gym.Env, spec: RolloutSpec, params: np.ndarray, mean: np.ndarray, std: np.ndarray, seed: int) -> tuple:
    """One episode with policy ``params`` on normalised inputs ``(x - mean) / std``.

    Returns (return, shifted return, length, sum of observations, sum of squared observations).
    """
    obs, _ = env.reset(seed=int(seed))
    total = shifted = 0.0
    steps = 0
    dim = mean.shape[0]
    obs_sum, obs_sq = np.zeros(dim), np.zeros(dim)
    done = False
    while not done:
        x = np.asarray(obs, dtype=np.float64).reshape(-1)
        if spec.collect_stats:
            obs_sum += x
            obs_sq += x * x
        obs, reward, terminated, truncated, _ = env.step(spec.action_map(spec.policy(params, (x - mean) / std)))
        total += float(reward)
        shifted += float(reward) - spec.reward_shift
        steps += 1
        done = terminated or truncated
    return total, shifted, steps, obs_sum, obs_sq


class RolloutWorker:
    """A rollout worker: its own copy of the environment; runs the + and - rollouts of directions."""

    def __init__(self, spec: RolloutSpec) -> None:
        import copy

        self.spec = spec
        self.env = copy.deepcopy(spec.env) if isinstance(spec.env, gym.Env) else make_env(spec.env, spec.env_kwargs)

    def run(self, tasks: list[tuple]) -> list[tuple]:
        """Per task ``(theta, delta, nu, mean, std, seed)``: the rollouts of ``theta +- nu delta``
        (same seed for both: common random numbers)."""
        results = []
        for theta, delta, nu, mean, std, seed in tasks:
            plus = rollout(self.env, self.spec, theta + nu * delta, mean, std, seed)
            minus = rollout(self.env, self.spec, theta - nu * delta, mean, std, seed)
            results.append((plus, minus))
        return results

    def close(self) -> None:
        self.env.close()


def split_evenly(items: list, n: int) -> list[list]:
    """``items`` in ``n`` contiguous chunks whose sizes differ by at most one (order kept)."""
    size, extra = divmod(len(items), n)
    chunks, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


# ---------------------------------------------------------------------------------- the agent
@register
class ARS(Agent):
    """Augmented Random Search, V1/V2 (see the module docstring)."""

    algo = "ars"
    family = "derivative-free"
    Config = ARSConfig
    default_steps = 200_000

    def setup(self) -> None:
        cfg = self.config
        cfg.validate()
        obs_space = self.env.observation_space
        if not isinstance(obs_space, gym.spaces.Box):
            raise ValueError(f"ars needs a Box observation space, but {self.env_id} has {obs_space}")
        self.obs_dim = int(np.prod(obs_space.shape))
        self.action_map = ActionMap(self.env.action_space)
        self.policy = NumpyPolicy(self.obs_dim, self.action_map.out_dim, list(cfg.hidden))
        self.theta = self.policy.init_params(self.rng)
        self.obs_stat = RunningObsStat(self.obs_dim)
        self.iterations = 0

    # -- policy
    def _norm(self) -> tuple[np.ndarray, np.ndarray]:
        if self.config.version == "v1":
            return np.zeros(self.obs_dim), np.ones(self.obs_dim)
        return self.obs_stat.mean.copy(), self.obs_stat.std

    def act(self, obs: Any, deterministic: bool = True) -> Any:
        mean, std = self._norm()
        x = np.asarray(obs, dtype=np.float64).reshape(-1)
        return self.action_map(self.policy(self.theta, (x - mean) / std))

    # -- training
    def _spec(self) -> RolloutSpec:
        return RolloutSpec(
            env=self._env_arg, env_kwargs=self.env_kwargs, policy=self.policy, action_map=self.action_map,
            reward_shift=self.config.reward_shift, collect_stats=self.config.version == "v2",
        )

    def _make_pool(self) -> WorkerPool | None:
        """Workers that each hold their own env, or None for in-process rollouts."""
        cfg = self.config
        if cfg.n_workers == 0:
            return None
        return make_pool(RolloutWorker, [(self._spec(),)] * cfg.n_workers, cfg.worker_backend, "ars", cfg.worker_timeout_s)

    def _learn(self, total_steps: int | None, episodes: int | None, logger: RunLogger) -> None:
        cfg = self.config
        n, b = cfg.n_directions, cfg.top_directions or cfg.n_directions
        start_steps, start_episodes = self.num_timesteps, self.num_episodes
        pool = self._make_pool()
        local = RolloutWorker(self._spec()) if pool is None else None
        try:
            while (total_steps is None or self.num_timesteps - start_steps < total_steps) and (
                episodes is None or self.num_episodes - start_episodes < episodes
            ):
                deltas = self.rng.standard_normal((n, self.policy.dim))
                seeds = self.rng.integers(0, 2**31 - 1, size=n)
                mean, std = self._norm()
                tasks = [(self.theta, deltas[k], cfg.delta_std, mean, std, int(seeds[k])) for k in range(n)]
                if pool is None:
                    results = local.run(tasks)
                else:
                    chunks = split_evenly(tasks, pool.n)
                    results = [pair for part in pool.call("run", [(c,) for c in chunks]) for pair in part]
                self._record(results, logger)
                r_plus = np.array([plus[1] for plus, _ in results])
                r_minus = np.array([minus[1] for _, minus in results])
                self.theta, sigma_r = ars_update(self.theta, deltas, r_plus, r_minus, cfg.step_size, b)
                self.iterations += 1
                raw = [r[0] for pair in results for r in pair]
                logger.scalars(
                    {"ars/return_mean": float(np.mean(raw)), "ars/return_max": float(np.max(raw)),
                     "ars/sigma_r": sigma_r, "ars/iteration": self.iterations},
                    self.num_timesteps,
                )
                self._safe_point()
        finally:
            if pool is not None:
                pool.close()
            if local is not None:
                local.close()

    def _record(self, results: list, logger: RunLogger) -> None:
        """Count steps, log every rollout as a training episode, merge observation statistics."""
        count, total, total_sq = 0, np.zeros(self.obs_dim), np.zeros(self.obs_dim)
        for pair in results:
            for ret, _, length, obs_sum, obs_sq in pair:
                self.num_timesteps += length
                self.num_episodes += 1
                logger.episode(self.num_timesteps, ret, length)
                if logger.unit == "step":
                    logger.advance(length)
                count += length
                total += obs_sum
                total_sq += obs_sq
        if self.config.version == "v2":
            self.obs_stat.update(count, total, total_sq)

    # -- persistence
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "theta": torch.from_numpy(self.theta.copy()),
            "obs_mean": torch.from_numpy(self.obs_stat.mean.copy()),
            "obs_m2": torch.from_numpy(self.obs_stat.m2.copy()),
            "obs_count": torch.tensor([self.obs_stat.count], dtype=torch.float64),
        }

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.theta = tensors["theta"].numpy().astype(np.float64).copy()
        self.obs_stat.mean = tensors["obs_mean"].numpy().copy()
        self.obs_stat.m2 = tensors["obs_m2"].numpy().copy()
        self.obs_stat.count = float(tensors["obs_count"][0])

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "iterations": self.iterations, "rng": self.rng.bit_generator.state}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.iterations = int(state.get("iterations", 0))
        if "rng" in state:
            self.rng.bit_generator.state = state["rng"]
