"""Greedy evaluation of a trained agent on fresh, seeded episodes."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from classic_rl.env_utils import make_env

DEFAULT_MAX_STEPS = 10_000


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
