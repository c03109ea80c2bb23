"""Tabular environments of the course, registered with gymnasium on import.

| id | environment |
|---|---|
| ``GridWorld-v0`` | :class:`GridWorldEnv`, any layout (kwargs ``layout``, ``slip``, ``step_reward``, ``terminal_rewards``) |
| ``GridWorld4x3-v0`` | the course's 4x3 world (+1 / -1 terminals, one wall, step reward -0.04, slip 0.1) |
| ``RandomWalk-v0`` | :class:`RandomWalkEnv`, kwargs ``n_states``, ``left_reward``, ``right_reward`` |
| ``RandomWalk19-v0`` | the 19-state random walk of Sutton & Barto's Figure 7.2 (rewards -1 / +1) |
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from classic_rl.envs.gridworld import GRIDWORLD_4X3, GridWorldEnv, Layout, gridworld_4x3, parse_layout
from classic_rl.envs.random_walk import RandomWalkEnv

__all__ = [
    "GRIDWORLD_4X3",
    "GridWorldEnv",
    "Layout",
    "RandomWalkEnv",
    "gridworld_4x3",
    "parse_layout",
    "ENV_IDS",
]

ENV_IDS = ("GridWorld-v0", "GridWorld4x3-v0", "RandomWalk-v0", "RandomWalk19-v0")


def _register(env_id: str, entry_point: str, **kwargs) -> None:
    if env_id not in registry:  # importing twice (e.g. a reload) must not warn about re-registration
        register(id=env_id, entry_point=entry_point, **kwargs)


_register("GridWorld-v0", "classic_rl.envs.gridworld:GridWorldEnv", max_episode_steps=1000)
_register(
    "GridWorld4x3-v0",
    "classic_rl.envs.gridworld:GridWorldEnv",
    kwargs={"layout": GRIDWORLD_4X3, "slip": 0.1, "step_reward": -0.04},
    max_episode_steps=100,
)
_register("RandomWalk-v0", "classic_rl.envs.random_walk:RandomWalkEnv")
_register("RandomWalk19-v0", "classic_rl.envs.random_walk:RandomWalkEnv", kwargs={"n_states": 19})
