"""Tabular agents: the functions of ``classic_rl.tabular`` behind the common agent surface, so
``classic-rl train q_learning CliffWalking-v1`` writes the same run directory as a deep agent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from classic_rl.agents.base import Agent, register
from classic_rl.config import ConfigError
from classic_rl.logger import RunLogger
from classic_rl.tabular import policy_iteration, td_control, value_iteration
from classic_rl.tabular.schedules import ConstantSchedule, ExponentialSchedule, LinearSchedule
from classic_rl.tabular.stepper import UniformStream

CHUNK_STEPS_GUESS = 100
"""Assumed episode length before any episode has finished (sizes the first piece of a run)."""


def _check_discrete_states(agent: Agent, env: gym.Env) -> None:
    if not isinstance(env.observation_space, gym.spaces.Discrete):
        raise ValueError(
            f"{agent.algo} is tabular: it needs a Discrete observation space, but {agent.env_id} has "
            f"{env.observation_space}. Use a deep agent (classic-rl list) for this env."
        )


@dataclass
class TDControlConfig:
    """Settings of SARSA, Q-learning and expected SARSA."""

    alpha: float = 0.5
    """Step size of the TD update."""
    epsilon: float = 0.1
    """Exploration rate (the start value when a schedule decays it)."""
    epsilon_schedule: str = "constant"
    """constant, linear (to epsilon_final over epsilon_decay_episodes) or exponential (x epsilon_decay per episode)."""
    epsilon_final: float = 0.01
    epsilon_decay_episodes: int = 500
    epsilon_decay: float = 0.99
    gamma: float = 1.0
    max_steps: int | None = None
    """Truncate episodes after this many steps (on top of the env's own time limit)."""

    def validate(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"gamma must be in [0, 1], got {self.gamma}")
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.epsilon_schedule not in ("constant", "linear", "exponential"):
            raise ConfigError(
                f"epsilon_schedule must be constant, linear or exponential, got {self.epsilon_schedule!r}"
            )

    def epsilon_at(self):
        if self.epsilon_schedule == "linear":
            return LinearSchedule(self.epsilon, self.epsilon_final, self.epsilon_decay_episodes)
        if self.epsilon_schedule == "exponential":
            return ExponentialSchedule(self.epsilon, self.epsilon_final, self.epsilon_decay)
        return ConstantSchedule(self.epsilon)


class TDControlAgent(Agent):
    """Q-table agent; the subclasses differ only in the TD target (``method``)."""

    Config = TDControlConfig
    family = "tabular control"
    action_kinds = ("discrete",)
    budget_unit = "episode"
    method = ""

    def check_env(self, env: gym.Env) -> None:
        super().check_env(env)
        _check_discrete_states(self, env)

    def setup(self) -> None:
        self.q = np.zeros((self.env.observation_space.n, self.env.action_space.n))
        # One random stream for the agent's whole life: a run cut into pieces (checkpoints, a
        # second learn call, a resume) draws the numbers one uncut run would.
        self.uniform = UniformStream(np.random.default_rng(self.seed))
        self.env_seeded = False

    def _learn(self, total_steps: int | None, episodes: int | None, logger: RunLogger) -> None:
        stop_steps = None if total_steps is None else self.num_timesteps + total_steps
        stop_episodes = None if episodes is None else self.num_episodes + episodes
        schedule = self.config.epsilon_at()
        while (stop_steps is None or self.num_timesteps < stop_steps) and (
            stop_episodes is None or self.num_episodes < stop_episodes
        ):
            chunk = self._chunk_episodes(stop_episodes)
            result = td_control(
                self.env, chunk, self.config.alpha, schedule, self.config.gamma, seed=self.seed,
                method=self.method, max_steps=self.config.max_steps,
                total_steps=None if stop_steps is None else stop_steps - self.num_timesteps, q_init=self.q,
                uniform=self.uniform, seed_env=not self.env_seeded, first_episode=self.num_episodes,
            )
            self.env_seeded = True
            self.q = result.q
            for ret, length in zip(result.episode_returns, result.episode_lengths):
                self.num_timesteps += int(length)
                self.num_episodes += 1
                logger.episode(self.num_timesteps, float(ret), int(length))
            self.num_timesteps += result.unfinished_steps
            if logger.unit == "step":
                logger.advance(result.total_steps)
            self._safe_point()

    def _chunk_episodes(self, stop_episodes: int | None) -> int | None:
        """Episodes until the next safe point: the rest of the budget, or about ``run_hooks``'s
        next checkpoint. Where the run is cut does not change its numbers (one stream)."""
        left = None if stop_episodes is None else stop_episodes - self.num_episodes
        steps_to_next = getattr(self.run_hooks, "steps_to_next", None)
        if steps_to_next is None:
            return left
        mean_len = self.num_timesteps / self.num_episodes if self.num_episodes else CHUNK_STEPS_GUESS
        chunk = max(1, int(steps_to_next(self) / max(mean_len, 1.0)))
        return chunk if left is None else min(chunk, left)

    def act(self, obs: Any, deterministic: bool = True) -> int:
        row = self.q[int(obs)]
        if not deterministic and self.rng.random() < self.config.epsilon:
            return int(self.rng.integers(len(row)))
        return int(np.argmax(row))

    @property
    def v(self) -> np.ndarray:
        return self.q.max(axis=1)

    @property
    def policy(self) -> np.ndarray:
        return self.q.argmax(axis=1)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"q": torch.from_numpy(np.ascontiguousarray(self.q))}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.q = tensors["q"].numpy().astype(np.float64)

    def training_state(self) -> dict[str, Any]:
        stream = self.uniform.state_dict()
        stream["buffer"] = torch.tensor(stream["buffer"], dtype=torch.float64)
        env_rng = self.env.unwrapped._np_random  # None until the env was reset (model stepping never does)
        return {**super().training_state(), "uniform": stream, "env_seeded": self.env_seeded,
                "env_rng": None if env_rng is None else env_rng.bit_generator.state}

    def load_training_state(self, state: dict[str, Any]) -> None:
        super().load_training_state(state)
        if "uniform" in state:
            self.uniform.load_state_dict(dict(state["uniform"], buffer=state["uniform"]["buffer"].tolist()))
            self.env_seeded = bool(state["env_seeded"])
        if state.get("env_rng") is not None:
            self.env.unwrapped.np_random.bit_generator.state = state["env_rng"]


@register
class Sarsa(TDControlAgent):
    """On-policy TD control: the bootstrap action is the next epsilon-greedy action."""

    algo = method = "sarsa"


@register
class QLearning(TDControlAgent):
    """Off-policy TD control: the target takes the greedy max."""

    algo = method = "q_learning"


@register
class ExpectedSarsa(TDControlAgent):
    """TD control toward the expected value of Q(S', .) under the epsilon-greedy policy."""

    algo = method = "expected_sarsa"


@dataclass
class DPConfig:
    """Settings of dynamic programming on the env's model ``env.unwrapped.P``."""

    gamma: float = 0.99
    theta: float = 1e-8
    """Stop when the largest value change of a sweep is below theta."""

    def validate(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"gamma must be in [0, 1], got {self.gamma}")
        if self.theta <= 0:
            raise ConfigError(f"theta must be > 0, got {self.theta}")


class DynamicProgrammingAgent(Agent):
    """Plans with the known model; the training budget is not used (one solve)."""

    Config = DPConfig
    family = "dynamic programming"
    action_kinds = ("discrete",)
    budget_unit = "episode"
    default_episodes = 1

    def check_env(self, env: gym.Env) -> None:
        super().check_env(env)
        _check_discrete_states(self, env)
        if not hasattr(env.unwrapped, "P"):
            raise ValueError(
                f"{self.algo} needs the env's model P (env.unwrapped.P, as toy-text envs and "
                f"GridWorld-v0 have); {self.env_id} has none. Use sarsa or q_learning instead."
            )

    def setup(self) -> None:
        n = self.env.observation_space.n
        self.v = np.zeros(n)
        self.policy = np.zeros(n, dtype=np.int64)

    solve_stats: dict[str, int] | None = None
    """What the last solve did (``sweeps``, and ``improvements`` for policy iteration): DP takes no
    environment steps or episodes, so run summaries report these instead."""

    def solve(self, stats: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _learn(self, total_steps: int | None, episodes: int | None, logger: RunLogger) -> None:
        self.solve_stats = {}
        self.v, self.policy = self.solve(self.solve_stats)
        logger.advance(episodes or total_steps or 1)
        self._safe_point()

    def act(self, obs: Any, deterministic: bool = True) -> int:
        return int(self.policy[int(obs)])

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"v": torch.from_numpy(np.ascontiguousarray(self.v)),
                "policy": torch.from_numpy(np.ascontiguousarray(self.policy))}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.v = tensors["v"].numpy().astype(np.float64)
        self.policy = tensors["policy"].numpy().astype(np.int64)


@register
class ValueIteration(DynamicProgrammingAgent):
    algo = "value_iteration"

    def solve(self, stats: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        return value_iteration(self.env.unwrapped.P, self.config.gamma, theta=self.config.theta, stats=stats)


@register
class PolicyIteration(DynamicProgrammingAgent):
    algo = "policy_iteration"

    def solve(self, stats: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        return policy_iteration(self.env.unwrapped.P, self.config.gamma, theta=self.config.theta, stats=stats)
