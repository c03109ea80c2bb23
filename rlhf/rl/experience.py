"""One batch of experience for RL fine-tuning: what sampling, scoring and the reference produced.

:class:`Rollout` holds the sampled completions with everything the updates of PPO, GRPO and RLOO
need; :class:`RewardSources` turns decoded completions into rewards with one or more reward
functions (weighted sum) or a reward model, and names the function and the batch when one fails.
Sampling and the forwards live in :class:`rlhf.rl.trainer.RLTrainer.rollout`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from classic_rl.safe_io import UserError

__all__ = ["RewardError", "RewardSources", "Rollout"]


class RewardError(UserError, ValueError):
    """A reward function failed or returned something unusable; the message names it and the batch."""


@dataclass
class Rollout:
    """One batch of sampled responses (all on the device)."""

    prompts: list[str]
    completions: list[str]
    query_responses: Tensor  # (B, P + R)
    attention_mask: Tensor  # (B, P + R)
    context_length: int  # P
    responses: Tensor  # (B, R), pad after the stop token
    mask: Tensor  # (B, R) bool
    logprobs: Tensor  # (B, R), 0 on padding
    ref_logprobs: Tensor
    values: Tensor  # (B, R) critic values (zeros without a critic)
    scores: Tensor  # (B,) after the missing-EOS penalty
    raw_scores: Tensor  # (B,) from the reward source(s) (weighted sum)
    has_stop: Tensor  # (B,) bool
    kl: Tensor  # (B, R) per-token KL estimate, 0 on padding
    scores_per_source: Tensor | None = None  # (B, K) each reward function's own score


class RewardSources:
    """Scores ``(prompts, completions)`` with weighted reward functions or one reward model.

    Each source maps ``(prompts, completions, device=...)`` to a float tensor ``(B,)``
    (``rlhf.rl.trainable.RewardFunction`` / ``RewardModelScorer``); the reward is
    ``sum_k weight_k * score_k``.
    """

    def __init__(self, sources: Sequence[tuple[str, Callable[..., Tensor]]], weights: Sequence[float] | None = None):
        if not sources:
            raise ValueError("RewardSources: no reward source")
        self.names = [name for name, _ in sources]
        self.sources = [source for _, source in sources]
        self.weights = list(weights) if weights is not None else [1.0] * len(self.sources)

    def __call__(self, prompts: list[str], completions: list[str], device: torch.device | str = "cpu",
                 where: str = "a batch") -> tuple[Tensor, Tensor]:
        """``(weighted sum (B,), per-source scores (B, K))``; :class:`RewardError` names a failing source."""
        columns = []
        for name, source in zip(self.names, self.sources):
            try:
                scores = source(prompts, completions, device=device)
            except Exception as err:
                first = prompts[0] if prompts else ""
                raise RewardError(
                    f"reward source {name} failed on {where} ({len(completions)} completions, first prompt "
                    f"{first[:60]!r}): {type(err).__name__}: {err}"
                ) from err
            if not bool(torch.isfinite(scores).all()):
                raise RewardError(f"reward source {name} returned a non-finite score (nan or inf) on {where}")
            columns.append(scores.float())
        per_source = torch.stack(columns, dim=1)
        weights = torch.tensor(self.weights, dtype=per_source.dtype, device=per_source.device)
        return per_source @ weights, per_source
