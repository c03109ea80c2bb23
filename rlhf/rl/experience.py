"""Where experience is made: one batch of prompts -> a :class:`Rollout` every method trains on.

:class:`ExperienceMaker` runs the seam in order: the sampler (any :class:`rlhf.rl.sampler.Sampler`)
-> responses cut after the stop token -> the policy's (old) and the reference's log-probabilities of
the response tokens, and the critic's values (PPO) -> decoded completions -> the reward sources'
scores (clipped, missing-stop penalty) -> the per-token KL to the reference.

The loss mask. ``Rollout.mask`` marks the real tokens of the response region (attention);
``Rollout.loss_mask`` marks the tokens the policy produced and is trained on. In one-turn RL they are
the same. In a conversation the response region holds the policy's turns and, between them, the
environment's text: those tokens are in the context (mask 1) but no loss, statistic, KL or whitening
sees them (loss_mask 0), so a sequence may hold several trained segments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from classic_rl.core.losses import kl_penalty
from rlhf.rl.correction import truncated_importance_weight
from rlhf.rl.forward import left_pad, token_logprobs
from rlhf.rl.rewards import RewardSources, apply_missing_stop_penalty
from rlhf.rl.sampler import Sampler, truncate_after_stop

__all__ = ["ExperienceMaker", "Rollout"]


@dataclass
class Rollout:
    """One batch of sampled responses (all on the device)."""

    prompts: list[str]
    completions: list[str]
    query_responses: Tensor  # (B, P + R)
    attention_mask: Tensor  # (B, P + R)
    context_length: int  # P
    responses: Tensor  # (B, R), pad after the end
    mask: Tensor  # (B, R) bool: real tokens of the response region (up to and including the stop token)
    logprobs: Tensor  # (B, R) the sampling policy's, 0 where loss_mask is 0
    ref_logprobs: Tensor  # (B, R) the reference's, 0 where loss_mask is 0
    values: Tensor  # (B, R) critic values (zeros without a critic), 0 where loss_mask is 0
    scores: Tensor  # (B,) after clipping and the missing-stop penalty
    raw_scores: Tensor  # (B,) from the reward source(s) (weighted sum)
    has_stop: Tensor  # (B,) bool
    kl: Tensor  # (B, R) per-token KL estimate, 0 where loss_mask is 0
    scores_per_source: Tensor | None = None  # (B, K) each reward function's own score
    loss_mask: Tensor | None = None  # (B, R) float: 1 on the tokens trained on; default: mask
    # A separate sampling engine (vLLM): the truncated importance weights the losses multiply by (None: no
    # correction) and this rank's mismatch statistics (rlhf.rl.correction)
    importance_weight: Tensor | None = None  # (B, R)
    sequence_importance_weight: Tensor | None = None  # (B, 1)
    sampling_stats: dict[str, Tensor] | None = None

    def __post_init__(self) -> None:
        if self.loss_mask is None:
            self.loss_mask = self.mask.float()

    def with_loss_mask(self, loss_mask: Tensor) -> Rollout:
        """A copy trained on ``loss_mask`` only (e.g. environment text between turns masked out): the
        per-token fields are zeroed where it is 0, as the experience maker leaves them."""
        keep = loss_mask.to(self.logprobs.dtype)
        return dataclasses.replace(self, loss_mask=keep, logprobs=self.logprobs * keep, ref_logprobs=self.ref_logprobs * keep,
                                   values=self.values * keep, kl=self.kl * keep)

    @property
    def last_trained_index(self) -> Tensor:
        """(B,) column of each row's last trained token (where a sequence reward goes)."""
        columns = torch.arange(self.loss_mask.shape[1], device=self.loss_mask.device)
        return torch.where(self.loss_mask > 0, columns, -1).amax(dim=1).clamp(min=0)


@dataclass
class RolloutSettings:
    """The settings of :class:`ExperienceMaker` (from the method's config)."""

    temperature: float
    forward_batch_size: int
    stop_token_id: int | None
    pad_token_id: int
    missing_stop_penalty: float | None
    reward_clip: float | None
    kl_estimator: str  # of the per-token KL in the rollout (classic_rl.core.losses.kl_penalty)
    uses_critic: bool
    recompute_logprobs: bool  # recompute the old log-probs with the trainer's forward (not the sampler's)
    # The sampler is a separate engine (vLLM): its log-probs are compared with the recomputed ones and, with the
    # correction on, the losses are weighted by their ratio truncated at the cap (rlhf.rl.correction)
    measure_sampling_mismatch: bool = False
    importance_sampling_correction: bool = False
    importance_sampling_cap: float | None = None


class ExperienceMaker:
    """Sample, truncate, score and evaluate one batch (no gradients)."""

    def __init__(
        self,
        sampler: Sampler,
        settings: RolloutSettings,
        tokenizer,
        reward_source: RewardSources,
        trainable: Callable[[], AbstractContextManager[nn.Module]],
        reference_logits: Callable[[Tensor, Tensor, int, nn.Module], Tensor],
        device: torch.device,
        autocast: Callable[[], AbstractContextManager],
    ):
        """``trainable()`` yields the trained module ready for many forwards (``.policy``, ``.critic``,
        ``forward -> (logits, values)``); ``reference_logits(query_responses, attention_mask, P, policy)``
        gives the frozen reference's logits of the response tokens."""
        self.sampler, self.settings, self.tokenizer = sampler, settings, tokenizer
        self.reward_source, self.trainable, self.reference_logits = reward_source, trainable, reference_logits
        self.device, self.autocast = device, autocast

    @torch.no_grad()
    def make(self, prompts: list[str], query_ids: list[list[int]], generator: torch.Generator, where: str) -> Rollout:
        s = self.settings
        samples = self.sampler.sample(query_ids, generator)
        cut = truncate_after_stop(samples.responses, s.stop_token_id, s.pad_token_id)
        queries, query_mask = left_pad(query_ids, s.pad_token_id, self.device)
        context_length = queries.shape[1]
        query_responses = torch.cat([queries, cut.responses], dim=1)
        attention_mask = torch.cat([query_mask, cut.mask.long()], dim=1)
        loss_mask = cut.mask.float()
        logprobs, ref_logprobs, values = self._forwards(query_responses, attention_mask, context_length, cut.responses, samples.logprobs)
        logprobs, ref_logprobs, values = logprobs * loss_mask, ref_logprobs * loss_mask, values * loss_mask

        completions = self.tokenizer.batch_decode(cut.responses.masked_fill(~cut.mask, s.pad_token_id), skip_special_tokens=True)
        with self.autocast():
            raw_scores, per_source = self.reward_source(prompts, completions, device=self.device, where=where)
        scores = raw_scores if s.reward_clip is None else raw_scores.clamp(-s.reward_clip, s.reward_clip)
        scores = apply_missing_stop_penalty(scores, cut.has_stop, s.missing_stop_penalty if s.stop_token_id is not None else None)
        kl = kl_penalty(logprobs, ref_logprobs, s.kl_estimator) * loss_mask
        weight = sequence_weight = stats = None
        if s.measure_sampling_mismatch and samples.logprobs is not None:
            engine_logprobs = samples.logprobs.to(self.device).float() * loss_mask
            weight, sequence_weight, stats = truncated_importance_weight(logprobs, engine_logprobs, loss_mask,
                                                                         s.importance_sampling_cap)
            if not s.importance_sampling_correction:
                weight = sequence_weight = None
        return Rollout(
            prompts, completions, query_responses, attention_mask, context_length, cut.responses, cut.mask,
            logprobs, ref_logprobs, values, scores, raw_scores, cut.has_stop, kl, per_source, loss_mask,
            weight, sequence_weight, stats,
        )

    def _forwards(
        self, query_responses: Tensor, attention_mask: Tensor, context_length: int, responses: Tensor,
        sampler_logprobs: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The old and reference log-probabilities of ``responses`` and the critic's values, in chunks."""
        s = self.settings
        logprobs, ref_logprobs, values = [], [], []
        step = s.forward_batch_size
        # No one-off gather here (one forward per chunk); under FSDP the root's own parameters are
        # materialised so the policy's and critic's submodules can be called directly.
        with self.trainable() as unwrapped, self.autocast():
            # A value head on the policy needs the full forward anyway; a separate critic does not.
            head_on_policy = s.uses_critic and unwrapped.critic is None
            recompute = s.recompute_logprobs or sampler_logprobs is None or head_on_policy
            for start in range(0, query_responses.shape[0], step):
                qr, am, resp = (t[start : start + step] for t in (query_responses, attention_mask, responses))
                if recompute:
                    logits, value = unwrapped(qr, am, context_length)
                    logprobs.append(token_logprobs(logits, resp, s.temperature))
                    del logits
                else:
                    logprobs.append(sampler_logprobs[start : start + step].to(self.device).float())
                    value = unwrapped.critic(qr, am)[:, context_length - 1 : -1] if s.uses_critic else None
                values.append(torch.zeros_like(resp, dtype=torch.float32) if value is None else value.float())
                ref_logits = self.reference_logits(qr, am, context_length, unwrapped.policy)
                ref_logprobs.append(token_logprobs(ref_logits, resp, s.temperature))
                del ref_logits
        return torch.cat(logprobs), torch.cat(ref_logprobs), torch.cat(values)
