"""The non-LM policies of `rlhf rollouts`: they write the demonstrations an LM agent starts from.

- ``random``: a move drawn uniformly from ``info["valid_actions"]`` (seeded);
- a classic_rl run directory (``classic-rl train q_learning FrozenLake-v1 ...``): that agent's greedy
  action on the wrapped env's state (a text adapter's ``state``), said as the adapter's move name.

A policy is ``policy(env, observation, info) -> reply``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from classic_rl.safe_io import UserError
from rlhf.envs.make import CheckedEnv

__all__ = ["RandomPolicy", "classic_rl_policy", "make_policy"]

Policy = Callable[[CheckedEnv, str, dict[str, Any]], str]


class RandomPolicy:
    """A uniformly random valid move; the env must list them in ``info["valid_actions"]``."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def __call__(self, env: CheckedEnv, observation: str, info: dict[str, Any]) -> str:
        moves = info.get("valid_actions")
        if not moves:
            raise UserError(f"--policy random: --env {env.name} lists no moves in info['valid_actions']; "
                            "give a classic_rl run directory as --policy, or an env that lists its moves")
        return str(self.rng.choice(list(moves)))


def classic_rl_policy(run_dir: str, env_name: str) -> Policy:
    """The greedy policy of the classic_rl agent saved in ``run_dir`` (``classic_rl.load``)."""
    import classic_rl

    path = Path(run_dir).expanduser()
    if not (path / "config.yaml").is_file():
        raise UserError(f"--policy {run_dir}: neither 'random' nor a classic_rl run directory (no config.yaml)")
    agent = classic_rl.load(path)
    if ":" not in env_name and getattr(agent, "env_id", env_name) != env_name:
        raise UserError(f"--policy {run_dir}: the agent was trained on {agent.env_id}, not --env {env_name}")

    def act(env: CheckedEnv, observation: str, info: dict[str, Any]) -> str:
        adapter = env.adapter
        if adapter is None:
            raise UserError(f"--policy {run_dir}: --env {env_name} has Text spaces; a classic_rl agent acts on the "
                            "states of a Discrete env behind a text adapter")
        return adapter.move_text(agent.act(adapter.state, deterministic=True))

    return act


def make_policy(policy: str, env_name: str, seed: int) -> Policy:
    return RandomPolicy(seed) if policy == "random" else classic_rl_policy(policy, env_name)
