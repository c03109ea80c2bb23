"""Sampling completions from a policy and scoring them (gold scorer, reward model), for the pipeline's
comparison, the label page and the reward model's bias calibration -- through the same sampler and the
same reward-model scorer as RL training (``rlhf.rl.sampler.HFSampler``, ``rlhf.rl.rewards.RewardModelScorer``):
left-padded batches, the KV cache, pure sampling at temperature T (0: greedy), each completion cut
after its first EOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf.rl.rewards import RewardModelScorer
from rlhf.rl.sampler import HFSampler, SamplingSettings, truncate_after_stop


@dataclass
class Samples:
    """Completions for a list of prompts; `ended` says whether each completion stopped at an EOS."""

    prompts: list[str]
    completions: list[str]
    ended: list[bool]


@torch.no_grad()
def sample_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
    slice_size: int | None = None,
) -> Samples:
    """Sample one completion per prompt (temperature 0 means greedy); deterministic given `seed`.

    ``slice_size``: the prompts go to the sampler in slices of this many (each cut in chunks of
    ``batch_size``), one generator for all, as the RL trainer's held-out evaluation does (its rollout
    batches): with its ``held_out_sampling`` settings the samples are the trainer's own."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    settings = SamplingSettings(max_new_tokens, temperature, tokenizer.pad_token_id, tokenizer.eos_token_id, batch_size)
    sampler = HFSampler(model, settings, device)
    try:
        ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
        generator = torch.Generator(device=device).manual_seed(seed)
        step = slice_size or max(len(ids), 1)
        slices = [sampler.sample(ids[i:i + step], generator) for i in range(0, len(ids), step)]
    finally:
        model.train(was_training)
    completions, ended = [], []
    for samples in slices:
        cut = truncate_after_stop(samples.responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
        completions += tokenizer.batch_decode(cut.responses.masked_fill(~cut.mask, tokenizer.pad_token_id),
                                              skip_special_tokens=True)
        ended += cut.has_stop.tolist()
    return Samples(list(prompts), completions, ended)


@torch.no_grad()
def reward_model_scores(
    reward_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    completions: list[str],
    batch_size: int = 64,
) -> list[float]:
    """Scores of `prompt + completion + EOS` under a one-scalar sequence classifier (as in RM training)."""
    was_training = reward_model.training
    reward_model.eval()
    device = next(reward_model.parameters()).device
    try:
        scores = RewardModelScorer(reward_model, tokenizer, batch_size)(list(prompts), list(completions), device=device)
    finally:
        reward_model.train(was_training)
    return scores.tolist()


def mean(values: list[float]) -> float:
    return sum(values) / max(1, len(values))
