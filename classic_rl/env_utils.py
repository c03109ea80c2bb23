"""Making gymnasium environments by id, with errors that list the valid ids."""

from __future__ import annotations

import difflib
from typing import Any

import gymnasium as gym


def registered_env_ids() -> list[str]:
    import classic_rl.envs  # noqa: F401  (registers the course's environments)

    return sorted(gym.envs.registry.keys())


def check_env_id(env_id: str) -> None:
    """Raise a ValueError naming close matches when ``env_id`` is not registered."""
    if not isinstance(env_id, str):
        return
    ids = registered_env_ids()
    if env_id in ids:
        return
    close = difflib.get_close_matches(env_id, ids, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"Unknown environment {env_id!r}.{hint} Registered ids include: "
        f"{', '.join(i for i in ids if '/' not in i)}"
    )


def make_env(env_id: str | gym.Env, env_kwargs: dict[str, Any] | None = None, **make_kwargs: Any) -> gym.Env:
    """``gym.make`` with id validation; an Env instance passes through unchanged."""
    if isinstance(env_id, gym.Env):
        return env_id
    check_env_id(env_id)
    return gym.make(env_id, **(env_kwargs or {}), **make_kwargs)


def env_label(env: str | gym.Env) -> str:
    if isinstance(env, str):
        return env
    spec = getattr(env, "spec", None)
    return spec.id if spec is not None else type(env.unwrapped).__name__
