"""Experience from environment episodes: a batch of reset seeds -> an :class:`EnvRollout`, the
``Rollout`` every method trains on, with what PPO needs to assign credit across turns.

The layout (``rlhf.rl.forward``'s, one row per episode)::

    query      the first user turn, left-padded (P columns)
    response   policy reply 1 | env turn 1 | reply 2 | ... | reply K [| final observation]  pad ...
    mask       1 on every real token of the response region (the policy attends to all of it)
    loss_mask  1 only on the policy's tokens: no loss, statistic, KL or whitening sees the env's text

The sequence reward (``scores``; GRPO, RLOO, REINFORCE++) is the episode's return: the sum over turns
of the env's reward (clipped by the method's reward clip), less the missing-stop penalty for each reply
that never emitted the stop token; ``raw_scores`` is the undiscounted return. The per-turn fields
(``turn_*``) carry each turn's reward, the columns of its first and last policy tokens and the critic's
value at its first token (the value of the state the turn acts in); ``bootstrap_values`` is the value
of the state after the last reply of a truncated episode (0 after termination). PPO's GAE over turns
reads them (``rlhf.envs.credit``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from classic_rl.core.losses import kl_penalty
from rlhf.envs.chat import ChatFormat
from rlhf.envs.episodes import Episode, EpisodeLimits, EpisodeRunner
from rlhf.envs.make import EnvSpec
from rlhf.rl.experience import ExperienceMaker, Rollout
from rlhf.rl.forward import left_pad

__all__ = ["EnvExperienceMaker", "EnvRollout", "model_context_length"]


@dataclass
class EnvRollout(Rollout):
    """A :class:`Rollout` of episodes; ``(B, K)`` fields hold one column per policy turn (K: the most turns)."""

    turn_mask: Tensor | None = None  # (B, K) bool: real turns
    turn_start: Tensor | None = None  # (B, K) long: response column of the turn's first policy token
    turn_end: Tensor | None = None  # (B, K) long: ... of its last policy token
    turn_rewards: Tensor | None = None  # (B, K) the env's reward (clipped) less the missing-stop penalty
    turn_values: Tensor | None = None  # (B, K) the critic's value at the turn's first policy token
    token_turn: Tensor | None = None  # (B, R) long: the turn of each policy token, -1 on env text and pad
    terminated: Tensor | None = None  # (B,) bool: the env ended the episode (no bootstrap)
    bootstrap_values: Tensor | None = None  # (B,) the value after the last reply if truncated, else 0
    success: Tensor | None = None  # (B,) 1 / 0 where info reported success, nan where it did not
    turns: Tensor | None = None  # (B,) policy turns
    invalid_turns: Tensor | None = None  # (B,) replies the env marked invalid

    def env_metrics(self) -> dict[str, Tensor]:
        """This rank's episode statistics (metrics.jsonl's env/ keys)."""
        return {
            "env/return": self.raw_scores.mean(),
            "env/success_rate": torch.nan_to_num(self.success, nan=0.0).mean(),
            "env/turns": self.turns.float().mean(),
            "env/steps": self.turns.float().sum(),  # env steps of this rank's batch
            "env/invalid_fraction": self.invalid_turns.sum() / self.turns.sum().clamp(min=1),
            "env/terminated_fraction": self.terminated.float().mean(),
        }


def model_context_length(model_name_or_path: str, trust_remote_code: bool = False) -> int | None:
    """The model's context (max_position_embeddings), None if unknown."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None
    context = getattr(config.get_text_config(), "max_position_embeddings", None)
    return int(context) if context is not None else None


class EnvExperienceMaker(ExperienceMaker):
    """Episodes through the trainer's sampler, then the forwards of :class:`ExperienceMaker`."""

    def __init__(self, config, *args, all_finished=None):
        """``config``: the method's config (--env, --env_kwargs, --max_turns, --max_episode_tokens);
        ``args``: those of :class:`ExperienceMaker`."""
        super().__init__(*args)
        s = self.settings
        budget = config.max_episode_tokens or model_context_length(config.model_name_or_path, config.trust_remote_code)
        self.spec = EnvSpec.from_flags(config.env, config.env_kwargs)
        self.runner = EpisodeRunner(
            self.spec, self.sampler, ChatFormat(self.tokenizer, s.stop_token_id), self.tokenizer,
            EpisodeLimits(config.max_new_tokens, config.max_turns, budget), s.stop_token_id, s.pad_token_id,
            all_finished, self.device,
        )

    @torch.no_grad()
    def make(self, prompts: list[str], seeds: list[int], generator: torch.Generator, where: str) -> EnvRollout:
        """One episode per reset seed (``prompts`` are their labels, as the seed stream hands them out)."""
        return self.build(self.runner.run(seeds, generator))

    def build(self, episodes: list[Episode]) -> EnvRollout:
        s, device = self.settings, self.device
        B = len(episodes)
        queries, query_mask = left_pad([e.query for e in episodes], s.pad_token_id, device)
        context_length = queries.shape[1]
        rows = [[t for seg in e.segments for t in seg.tokens] for e in episodes]
        # One more column when a truncated episode needs the critic's value after its last token.
        bootstrap = s.uses_critic and any(e.truncated for e in episodes)
        width = max(1, max(len(r) for r in rows) + int(bootstrap))
        K = max(1, max(e.turns for e in episodes))
        responses = torch.full((B, width), s.pad_token_id, dtype=torch.long)
        mask = torch.zeros((B, width), dtype=torch.bool)
        loss_mask = torch.zeros((B, width))
        sampler_logprobs = torch.zeros((B, width))
        token_turn = torch.full((B, width), -1, dtype=torch.long)
        turn_start = torch.zeros((B, K), dtype=torch.long)
        turn_end = torch.zeros((B, K), dtype=torch.long)
        turn_mask = torch.zeros((B, K), dtype=torch.bool)
        env_rewards = torch.zeros((B, K))
        turn_stopped = torch.ones((B, K), dtype=torch.bool)
        have_logprobs = True
        for b, episode in enumerate(episodes):
            column, k = 0, 0
            for seg in episode.segments:
                n = len(seg.tokens)
                responses[b, column : column + n] = torch.tensor(seg.tokens, dtype=torch.long)
                mask[b, column : column + n] = True
                if seg.trained:
                    loss_mask[b, column : column + n] = 1.0
                    token_turn[b, column : column + n] = k
                    turn_start[b, k], turn_end[b, k] = column, column + n - 1
                    if seg.logprobs is None:
                        have_logprobs = False
                    else:
                        sampler_logprobs[b, column : column + n] = torch.tensor(seg.logprobs)
                    k += 1
                column += n
            turns = episode.turns
            turn_mask[b, :turns] = True
            env_rewards[b, :turns] = torch.tensor(episode.rewards, dtype=torch.float32)
            turn_stopped[b, :turns] = torch.tensor(episode.has_stop)
        responses, mask, loss_mask, token_turn = (t.to(device) for t in (responses, mask, loss_mask, token_turn))
        turn_start, turn_end, turn_mask = turn_start.to(device), turn_end.to(device), turn_mask.to(device)
        env_rewards, turn_stopped = env_rewards.to(device), turn_stopped.to(device)

        query_responses = torch.cat([queries, responses], dim=1)
        attention_mask = torch.cat([query_mask, mask.long()], dim=1)
        logprobs, ref_logprobs, values = self._forwards(
            query_responses, attention_mask, context_length, responses,
            sampler_logprobs.to(device) if have_logprobs else None,
        )
        turn_values = values.gather(1, turn_start) * turn_mask
        terminated = torch.tensor([e.terminated for e in episodes], device=device)
        last_real = mask.long().sum(1).clamp(max=width - 1)  # the column after the last real token
        bootstrap_values = torch.where(terminated, 0.0, values.gather(1, last_real.unsqueeze(1)).squeeze(1))
        logprobs, ref_logprobs, values = logprobs * loss_mask, ref_logprobs * loss_mask, values * loss_mask

        rewards = env_rewards if s.reward_clip is None else env_rewards.clamp(-s.reward_clip, s.reward_clip)
        if s.stop_token_id is not None and s.missing_stop_penalty is not None:
            rewards = torch.where(turn_stopped, rewards, rewards - s.missing_stop_penalty)
        rewards = rewards * turn_mask
        raw_scores = env_rewards.sum(1)
        scores = rewards.sum(1)
        has_stop = (turn_stopped | ~turn_mask).all(1)
        kl = kl_penalty(logprobs, ref_logprobs, s.kl_estimator) * loss_mask
        completions = self.tokenizer.batch_decode(responses.masked_fill(~mask, s.pad_token_id), skip_special_tokens=True)
        nan = float("nan")
        return EnvRollout(
            [e.messages[0]["content"] for e in episodes], completions, query_responses, attention_mask,
            context_length, responses, mask, logprobs, ref_logprobs, values, scores, raw_scores, has_stop, kl,
            None, loss_mask,
            turn_mask=turn_mask, turn_start=turn_start, turn_end=turn_end, turn_rewards=rewards,
            turn_values=turn_values, token_turn=token_turn, terminated=terminated, bootstrap_values=bootstrap_values,
            success=torch.tensor([nan if e.success is None else float(e.success) for e in episodes], device=device),
            turns=torch.tensor([e.turns for e in episodes], device=device),
            invalid_turns=torch.tensor([e.invalid_turns for e in episodes], device=device),
        )
