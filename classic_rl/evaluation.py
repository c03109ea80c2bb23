"""Greedy evaluation of a trained agent on fresh, seeded episodes."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from classic_rl.env_utils import make_env

DEFAULT_MAX_STEPS = 10_000


def evaluate(
    agent: Any, env: str | gym.Env, episodes: int = 10, seed: int = 123, deterministic: bool = True,
    env_kwargs: dict | None = None, max_steps: int | None = None,
) -> tuple[float, float]:
    """Mean and std of the undiscounted return over ``episodes`` episodes seeded ``seed, seed+1, ...``.

    Envs without a time limit (CliffWalking) get one of ``max_steps`` (default 10,000), so a
    greedy policy that walks into a wall forever still ends.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    if env_kwargs is None and isinstance(env, str) and env == getattr(agent, "env_id", None):
        env_kwargs = getattr(agent, "env_kwargs", None)
    env = make_env(env, env_kwargs)
    if max_steps is None and (env.spec is None or env.spec.max_episode_steps is None):
        max_steps = DEFAULT_MAX_STEPS
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, steps, done = 0.0, 0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs, deterministic=deterministic))
            total += float(reward)
            steps += 1
            done = terminated or truncated or (max_steps is not None and steps >= max_steps)
        returns.append(total)
    return float(np.mean(returns)), float(np.std(returns))
