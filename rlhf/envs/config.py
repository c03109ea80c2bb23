"""Checks of the `--env` flags of the RL methods (``rlhf.rl.config.RLConfig.env`` and its neighbours)."""

from __future__ import annotations

import json
from typing import Any

from classic_rl.safe_io import UserError

__all__ = ["parse_env_kwargs", "validate_env_flags"]


def parse_env_kwargs(value: str | dict[str, Any] | None, flag: str = "--env_kwargs") -> dict[str, Any]:
    """``--env_kwargs`` as a dict: a JSON object on the command line, a mapping in a YAML file."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as err:
        raise UserError(f"{flag} {value!r}: not JSON ({err.msg} at character {err.pos}); "
                        "give an object, e.g. '{\"is_slippery\": false}'") from None
    if not isinstance(parsed, dict):
        raise UserError(f"{flag} {value!r}: expected a JSON object of keyword arguments, got {type(parsed).__name__}")
    return parsed


def validate_env_flags(config) -> None:
    """With ``--env`` the episodes are the data and the env's rewards the reward: refuse what would
    silently be ignored, and limits that cannot run."""
    for name in ("dataset_name", "reward_fn", "reward_model_path"):
        if getattr(config, name, None):
            config._fail(f"--{name} cannot be combined with --env: the environment's episodes are the data and its "
                         "rewards the reward")
    parse_env_kwargs(config.env_kwargs)
    for name in ("max_turns", "max_episode_tokens"):
        value = getattr(config, name)
        if value is not None and value < 1:
            config._fail(f"--{name} must be >= 1 (or None), got {value}")
