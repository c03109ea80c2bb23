"""The env-seed stream: which reset seeds the training episodes and the held-out episodes use.

It takes the place of the prompt stream (``rlhf.rl.prompts.PromptStream``) when ``--env`` is set, with
the same interface. Training group g of the run (counting over all updates and ranks) resets with seed
``(seed * 1_000_003 + g) mod 2**30``, each seed ``completions_per_prompt`` times in a row (GRPO's and
RLOO's groups: episodes from the same reset seed), groups laid out over the ranks in order as prompts
are. Held-out episode k resets with ``2**30 + k``: never a training seed. The position g is part of
every checkpoint, so a resumed run plays the episodes the uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import torch

from rlhf.rl.config import RLConfig

__all__ = ["HELD_OUT_BASE", "EnvSeedStream"]

HELD_OUT_BASE = 2**30  # held-out seeds start here; training seeds stay below


class EnvSeedStream:
    """Reset seeds in place of prompts (see the module docstring)."""

    def __init__(self, config: RLConfig, rank: int, world_size: int):
        self.config, self.rank, self.world_size = config, rank, world_size
        self.repeats = config.completions_per_prompt
        self.position = 0  # training groups handed out so far (all ranks)
        self.generator = torch.Generator().manual_seed(config.seed)  # kept in the RNG state like the prompts'
        self.eval_seeds = [HELD_OUT_BASE + k for k in range(config.num_eval_prompts)]
        self.train_prompts: list[str] = []  # episodes are played, not stored
        self.eval_prompts = [self.label(s) for s in self.eval_seeds]
        self._check_env()

    def _check_env(self) -> None:
        """Build the env and reset it once now: a bad --env fails before any model is loaded."""
        from rlhf.envs.make import EnvSpec

        env = EnvSpec.from_flags(self.config.env, self.config.env_kwargs).make()
        env.reset(self.train_seed(0))
        env.close()

    def label(self, seed: int) -> str:
        return f"{self.config.env} seed {seed}"

    @staticmethod
    def train_seed_of(seed: int, group: int) -> int:
        """The reset seed of training group ``group`` of a run seeded ``seed`` (below HELD_OUT_BASE)."""
        return (seed * 1_000_003 + group) % HELD_OUT_BASE

    def train_seed(self, group: int) -> int:
        return self.train_seed_of(self.config.seed, group)

    def next_batch(self) -> tuple[list[str], list[int]]:
        """This rank's episodes of the next update: labels and reset seeds (each seed ``repeats`` times)."""
        local = self.config.local_batch_size
        groups = local * self.world_size // self.repeats
        seeds = [self.train_seed(self.position + g) for g in range(groups)]
        self.position += groups
        rows = [s for s in seeds for _ in range(self.repeats)]
        mine = rows[self.rank * local : (self.rank + 1) * local]
        return [self.label(s) for s in mine], mine

    def held_out_for_rank(self) -> tuple[list[str], list[int], list[float]]:
        """This rank's held-out seeds (every rank the same count, padded with weight 0, as for prompts)."""
        n = len(self.eval_seeds)
        mine = list(range(self.rank, n, self.world_size))
        per_rank = -(-n // self.world_size)
        weights = [1.0] * len(mine) + [0.0] * (per_rank - len(mine))
        mine += [mine[-1] if mine else 0] * (per_rank - len(mine))
        return [self.eval_prompts[i] for i in mine], [self.eval_seeds[i] for i in mine], weights

    def state_dict(self) -> dict[str, Any]:
        return {"env_position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["env_position"])
