"""The prompt stream of the RL methods: training and held-out prompts, tokenized, and the seeded order
in which each update takes its batch (part of the trainer state, so a resumed run continues from the
same position)."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from rlhf.common.data import (
    DataArguments,
    DataError,
    keep_row_locations,
    load_train_eval,
    render_prompt,
    row_location,
    validate_dataset,
)
from rlhf.common.errors import ConfigError
from rlhf.rl.config import RLConfig

__all__ = ["HELD_OUT_SEED_OFFSET", "PromptStream"]

# The held-out prompts are sampled with seed + HELD_OUT_SEED_OFFSET (+ rank): the RL step's before/after
# evaluation and the pipeline's comparison of the SFT and RL policies draw the same samples from it.
HELD_OUT_SEED_OFFSET = 10_000


class PromptStream:
    """Training prompts in one seeded order shared by all ranks, and the held-out prompts."""

    def __init__(self, config: RLConfig, tokenizer, rank: int, world_size: int):
        self.config, self.tokenizer = config, tokenizer
        self.rank, self.world_size = rank, world_size
        self.repeats = config.completions_per_prompt
        self.generator = torch.Generator().manual_seed(config.seed)  # same order on every rank
        self.index_buffer: list[int] = []
        self._load()

    def _load(self) -> None:
        cfg = self.config
        data_args = DataArguments(
            dataset_name=cfg.dataset_name, dataset_config=cfg.dataset_config,
            dataset_train_split=cfg.dataset_train_split, dataset_test_split=cfg.dataset_test_split,
            eval_dataset_name=cfg.eval_dataset_name, eval_holdout_fraction=cfg.eval_holdout_fraction,
        )
        train, held_out = load_train_eval(data_args, seed=cfg.seed)
        field = cfg.dataset_text_field
        if field != "prompt":  # a prompt column under another name (TRL's dataset_text_field)
            if field not in train.column_names:
                raise ValueError(f"--dataset_text_field '{field}' is not a column of '{cfg.dataset_name}' "
                                 f"(columns: {train.column_names})")
            train = keep_row_locations(train.rename_column(field, "prompt"), train)
            if held_out is not None and field in held_out.column_names:
                held_out = keep_row_locations(held_out.rename_column(field, "prompt"), held_out)
        validate_dataset(train, "rl", f"dataset '{cfg.dataset_name}'")
        if held_out is None or len(held_out) == 0:
            raise ValueError(
                f"dataset '{cfg.dataset_name}' leaves no held-out prompts for reward_mean_before/after: give "
                "--eval_dataset_name, a dataset with a test split, or --eval_holdout_fraction > 0"
            )
        validate_dataset(held_out, "rl", "held-out prompts")
        self.train_prompts = [render_prompt(p, self.tokenizer) for p in train["prompt"]]
        self.eval_prompts = [render_prompt(p, self.tokenizer) for p in held_out["prompt"][: cfg.num_eval_prompts]]
        self._context_limit = self._prompt_token_limit()
        self.train_ids = self._tokenize(self.train_prompts, "training", train, f"dataset '{cfg.dataset_name}'")
        self.eval_ids = self._tokenize(self.eval_prompts, "held-out", held_out, "held-out prompts")

    def _prompt_token_limit(self) -> int | None:
        """Prompt tokens that fit before ``max_new_tokens`` in the model's context (None: unknown)."""
        from transformers import AutoConfig

        try:
            model_config = AutoConfig.from_pretrained(self.config.model_name_or_path, trust_remote_code=self.config.trust_remote_code)
        except (OSError, ValueError):
            return None
        context = getattr(model_config.get_text_config(), "max_position_embeddings", None)
        if context is None:
            return None
        limit = int(context) - self.config.max_new_tokens
        if limit < 1:
            raise ConfigError(
                f"the model's context is {context} tokens, which leaves no room for a prompt "
                f"before {self.config.max_new_tokens} new tokens; lower the completion length"
            )
        return limit

    def _tokenize(self, prompts: list[str], which: str, dataset: Any, name: str) -> list[list[int]]:
        """Token ids of ``prompts`` (rows of ``dataset``, so an error can name the file and line)."""
        ids = self.tokenizer(prompts, add_special_tokens=True)["input_ids"]
        if self.config.max_prompt_length is not None:
            ids = [x[-self.config.max_prompt_length :] for x in ids]
        limit = self._context_limit
        if limit is not None:
            too_long = sum(len(x) > limit for x in ids)
            if too_long:
                warnings.warn(
                    f"rlhf {self.config.command}: {too_long} of {len(ids)} {which} prompts are longer than the {limit} tokens "
                    f"that fit before {self.config.max_new_tokens} new tokens in the model's context; keeping their "
                    "last tokens (set --max_prompt_length to choose)", stacklevel=2,
                )
                ids = [x[-limit:] for x in ids]
        for row, (prompt, x) in enumerate(zip(prompts, ids)):
            if not x:
                raise DataError(f"{row_location(dataset, row, name)}: the prompt {prompt!r} tokenizes to no tokens; "
                                "give it some text or remove the row")
        return ids

    def next_batch(self) -> tuple[list[str], list[list[int]]]:
        """This rank's prompts for the next update: slices of one seeded order shared by all ranks. With
        ``completions_per_prompt`` G each prompt appears G times in a row (its group), groups laid out over
        the ranks in order, so the global batch is the same whatever the world size."""
        local = self.config.local_batch_size
        need = local * self.world_size // self.repeats
        while len(self.index_buffer) < need:
            self.index_buffer += torch.randperm(len(self.train_prompts), generator=self.generator).tolist()
        chosen, self.index_buffer = self.index_buffer[:need], self.index_buffer[need:]
        rows = [i for i in chosen for _ in range(self.repeats)]
        mine = rows[self.rank * local : (self.rank + 1) * local]
        return [self.train_prompts[i] for i in mine], [self.train_ids[i] for i in mine]

    def held_out_for_rank(self) -> tuple[list[str], list[list[int]], list[float]]:
        """This rank's held-out prompts, ids and weights: every rank gets ceil(N / world) prompts, the
        missing ones repeated with weight 0, so all ranks run the same number of rollouts (and collectives,
        under ZeRO-3 / FSDP) when N is not a multiple of the world size."""
        n = len(self.eval_ids)
        mine = list(range(self.rank, n, self.world_size))
        per_rank = -(-n // self.world_size)
        weights = [1.0] * len(mine) + [0.0] * (per_rank - len(mine))
        mine += [mine[-1] if mine else 0] * (per_rank - len(mine))
        return [self.eval_prompts[i] for i in mine], [self.eval_ids[i] for i in mine], weights

    # the data position, kept in checkpoints (the generator's state travels with the other RNGs)
    def state_dict(self) -> dict[str, Any]:
        return {"index_buffer": list(self.index_buffer)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index_buffer = list(state["index_buffer"])
