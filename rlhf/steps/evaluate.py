"""Sampling completions from a policy and scoring them (gold scorer, reward model), for evaluation and for
the reward model's bias calibration. Generation: left-padded batches, the KV cache, temperature T with
top_k 0 / top_p 1, each completion cut after its first EOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf.common.data import reward_text


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
) -> Samples:
    """Sample one completion per prompt (temperature 0 means greedy); deterministic given `seed`."""
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    completions: list[str] = []
    ended: list[bool] = []
    device = next(model.parameters()).device
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
                batch = {k: v.to(device) for k, v in batch.items()}
                sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
                out = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **(sampling if temperature > 0 else {"do_sample": False}),
                )
                for row in out[:, batch["input_ids"].shape[1] :].tolist():
                    stop = row.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in row else None
                    ended.append(stop is not None)
                    completions.append(tokenizer.decode(row[:stop], skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
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
    scores: list[float] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [
                reward_text(p, c, tokenizer.eos_token)
                for p, c in zip(prompts[start : start + batch_size], completions[start : start + batch_size])
            ]
            batch = tokenizer(texts, return_tensors="pt", padding=True)
            logits = reward_model(**{k: v.to(device) for k, v in batch.items()}).logits
            scores.extend(logits[:, 0].float().tolist())
    finally:
        tokenizer.padding_side = side
        reward_model.train(was_training)
    return scores


def mean(values: list[float]) -> float:
    return sum(values) / max(1, len(values))
