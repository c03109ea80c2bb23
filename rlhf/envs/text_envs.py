"""Small envs with Text spaces, shipped as examples of what `--env module:Class` takes.

:class:`PromptEnv` is one-turn RL as an env: ``reset(seed)`` says prompt ``seed mod N`` and ``step(reply)``
ends the episode with ``reward_fn([prompt], [reply])[0]``. With the same prompts, reward function and
seed, ``rlhf grpo --env rlhf.envs.text_envs:PromptEnv`` trains exactly as ``rlhf grpo --dataset_name``
on those prompts as chat messages (tests/test_rlhf_envs.py checks the numbers).

    rlhf grpo --env rlhf.envs.text_envs:PromptEnv \\
              --env_kwargs '{"prompts": "rlhf/data/reverse_prompts.jsonl", "reward_fn": "rlhf.tasks.verifiable:reward"}' ...
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from rlhf.envs.adapters import MAX_OBSERVATION, MAX_REPLY, text_space

__all__ = ["PromptEnv"]


def _load_prompts(prompts: str | list[str]) -> list[str]:
    if isinstance(prompts, str):
        from rlhf.common.data import load_dataset_dict

        data = load_dataset_dict(prompts)
        rows = data["train"] if "train" in data else next(iter(data.values()))
        prompts = [p if isinstance(p, str) else p[-1]["content"] for p in rows["prompt"]]
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("PromptEnv: prompts must be a non-empty list of strings or a {prompt} dataset")
    return list(prompts)


class PromptEnv(gym.Env):
    """One prompt per episode, one reply, the reward function's score (see the module docstring)."""

    metadata = {"render_modes": []}

    def __init__(self, prompts: str | list[str], reward_fn: str):
        from rlhf.rl.rewards import RewardFunction, load_reward_function

        self.prompts = _load_prompts(prompts)
        self.reward = RewardFunction(load_reward_function(reward_fn), reward_fn)
        self.observation_space = text_space(MAX_OBSERVATION)
        self.action_space = text_space(MAX_REPLY)
        self.prompt: str | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        index = int(seed) % len(self.prompts) if seed is not None else int(self.np_random.integers(len(self.prompts)))
        self.prompt = self.prompts[index]
        return self.prompt, {}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        reward = float(self.reward([self.prompt], [action])[0])
        return "", reward, True, False, {}
