"""Text envs that misbehave, for tests/test_rlhf_envs.py (`--env text_envs:NAME`)."""

from __future__ import annotations

import gymnasium as gym

from rlhf.envs.adapters import text_space


class _TextEnv(gym.Env):
    def __init__(self):
        self.observation_space = text_space(100)
        self.action_space = text_space(100)
        self.turn = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.turn = 0
        return "say go", {"valid_actions": ["go"]}


class RaisingEnv(_TextEnv):
    """Raises on its second step."""

    def step(self, action):
        self.turn += 1
        if self.turn == 2:
            raise RuntimeError("boom")
        return "again", 0.0, False, False, {"valid_actions": ["go"]}


class NumberEnv(_TextEnv):
    """Returns an int observation."""

    def step(self, action):
        return 3, 0.0, False, False, {"valid_actions": ["go"]}


class BadRewardEnv(_TextEnv):
    def step(self, action):
        return "again", float("nan"), False, False, {"valid_actions": ["go"]}


class EndlessEnv(_TextEnv):
    """Never terminates nor truncates."""

    def step(self, action):
        return "again", 0.0, False, False, {"valid_actions": ["go"]}
