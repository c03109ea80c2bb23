"""Greedy evaluation on fresh, seeded episodes: of a trained agent (:func:`evaluate`) and, every
``eval_freq`` steps, during training (:class:`PeriodicEvaluation`, the one place for it)."""

from __future__ import annotations

from typing import Any, ClassVar

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
