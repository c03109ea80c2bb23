"""Greedy evaluation on fresh, seeded episodes: of a trained agent (:func:`evaluate`) and, every
``eval_freq`` steps, during training (:class:`PeriodicEvaluation`, the one place for it)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from classic_rl.env_utils import make_env

DEFAULT_MAX_STEPS = 10_000
RUN_EVAL_SEED = 10_000
"""Seed of the first episode of a run's evaluation, by ``classic-rl train`` at the end and by
``classic-rl eval`` (episodes ``RUN_EVAL_SEED, +1, ...``): one default, so the two give the same
number for the same agent; far from the training seeds (0, 1, ...)."""


class EvaluationCapWarning(UserWarning):
    """Some evaluation episodes were cut at ``max_steps``: their returns are partial."""


@dataclass
class EvalResult:
    """Per-episode outcome of :func:`evaluate_episodes`."""

    returns: list[float]
    lengths: list[int]
    capped: int
    """Episodes that did not end by themselves and were cut at ``max_steps`` by the evaluation."""
    max_steps: int | None

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    @property
    def note(self) -> str | None:
        """One line explaining capped episodes, or None when every episode ended by itself."""
        if not self.capped:
            return None
        return (
            f"{self.capped} of {len(self.returns)} evaluation episodes did not end within {self.max_steps} "
            "steps (the greedy policy never reaches a terminal state, e.g. it walks into a wall or loops); "
            "their returns are the rewards collected up to that cap"
        )


def evaluate_episodes(
    agent: Any, env: str | gym.Env, episodes: int = 10, seed: int = 123, deterministic: bool = True,
    env_kwargs: dict | None = None, max_steps: int | None = None,
) -> EvalResult:
    """Run ``episodes`` episodes seeded ``seed, seed+1, ...``; returns, lengths and how many were capped.

    Envs without a time limit (CliffWalking) get one of ``max_steps`` (default 10,000), so a
    greedy policy that walks into a wall forever still ends: such an episode counts as capped.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    if env_kwargs is None and isinstance(env, str) and env == getattr(agent, "env_id", None):
        env_kwargs = getattr(agent, "env_kwargs", None)
    env = make_env(env, env_kwargs)
    if max_steps is None and (env.spec is None or env.spec.max_episode_steps is None):
        max_steps = DEFAULT_MAX_STEPS
    returns, lengths, capped = [], [], 0
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, steps, done = 0.0, 0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs, deterministic=deterministic))
            total += float(reward)
            steps += 1
            done = terminated or truncated
            if not done and max_steps is not None and steps >= max_steps:
                capped += 1
                done = True
        returns.append(total)
        lengths.append(steps)
    return EvalResult(returns, lengths, capped, max_steps)


def evaluate(
    agent: Any, env: str | gym.Env, episodes: int = 10, seed: int = 123, deterministic: bool = True,
    env_kwargs: dict | None = None, max_steps: int | None = None,
) -> tuple[float, float]:
    """Mean and std of the undiscounted return over ``episodes`` episodes seeded ``seed, seed+1, ...``.

    Episodes cut at ``max_steps`` (see :func:`evaluate_episodes`) count with the return collected
    up to the cap, and an :class:`EvaluationCapWarning` says how many there were.
    """
    result = evaluate_episodes(agent, env, episodes, seed, deterministic, env_kwargs, max_steps)
    if result.note:
        warnings.warn(result.note, EvaluationCapWarning, stacklevel=2)
    return result.mean, result.std


class PeriodicEvaluation:
    """Mixin for agents whose ``config`` has ``eval_freq``, ``eval_episodes`` and ``eval_seed``.

    The training loop calls :meth:`maybe_evaluate` after each step or rollout; every time the step
    count crosses a multiple of ``eval_freq`` it runs :meth:`evaluate_during_training`: a greedy
    evaluation on fresh episodes seeded ``eval_seed, eval_seed + 1, ...``, kept in
    ``eval_history`` as ``(step, mean, std)`` (saved with the agent) and logged as
    ``eval/return_mean`` and ``eval/return_std``.
    """

    eval_history: list[tuple[int, float, float]]
    steps_own_env: ClassVar[bool] = False
    """True for agents whose training steps ``self.env`` itself: evaluation then runs on a fresh
    copy, so it does not disturb the training episode."""

    def eval_env(self) -> str | gym.Env:
        """The environment (or id) periodic evaluation runs on."""
        env_arg = self._env_arg  # type: ignore[attr-defined]
        if isinstance(env_arg, str) or not self.steps_own_env:
            return env_arg
        return gym.make(self.env.spec)  # type: ignore[attr-defined]

    def maybe_evaluate(self, previous_steps: int, logger: Any | None) -> None:
        """Evaluate when the step count has crossed a multiple of ``eval_freq`` since ``previous_steps``."""
        every = self.config.eval_freq  # type: ignore[attr-defined]
        if every and self.num_timesteps // every > previous_steps // every:  # type: ignore[attr-defined]
            self.evaluate_during_training(logger)

    def evaluate_during_training(self, logger: Any | None = None) -> tuple[float, float]:
        """One greedy evaluation now (see the class docstring); returns (mean, std)."""
        cfg = self.config  # type: ignore[attr-defined]
        env = self.eval_env()
        env_kwargs = self.env_kwargs if isinstance(env, str) else None  # type: ignore[attr-defined]
        mean, std = evaluate(self, env, episodes=cfg.eval_episodes, seed=cfg.eval_seed, env_kwargs=env_kwargs)
        steps = self.num_timesteps  # type: ignore[attr-defined]
        self.eval_history.append((steps, mean, std))
        if logger is not None:
            logger.scalars({"eval/return_mean": mean, "eval/return_std": std}, steps)
        return mean, std

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "eval_history": [list(e) for e in self.eval_history]}  # type: ignore[misc]

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)  # type: ignore[misc]
        self.eval_history = [tuple(e) for e in state.get("eval_history", [])]
