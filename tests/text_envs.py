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



class KillableLetters(_TextEnv):
    """Three turns, each rewarded by the reply's fraction of ASCII letters (it varies between random replies),
    then truncated (the env's own time limit: PPO bootstraps). SIGKILLs its own process at a reset once the
    folder named by the KILL_AFTER environment variable exists (a checkpoint just written): a power cut."""

    def reset(self, *, seed=None, options=None):
        import os
        import signal

        marker = os.environ.get("KILL_AFTER")
        if marker and os.path.isdir(marker):
            os.kill(os.getpid(), signal.SIGKILL)
        super().reset(seed=seed)
        return f"say some letters ({int(self.np_random.integers(100))})", {}

    def step(self, action):
        self.turn += 1
        reward = sum(c.isascii() and c.isalpha() for c in action) / max(len(action), 1)
        return f"again {self.turn}", reward, False, self.turn >= 3, {}
