"""What GRPO and RLOO share on top of ``rlhf.rl.trainer``: groups of ``num_generations`` completions per
prompt, rewards gathered over all ranks so a group's baseline sees every member wherever it was
sampled, and TRL's metric names for the critic-free methods."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from classic_rl.core.losses import masked_mean
from rlhf.rl.experience import Rollout
from rlhf.rl.trainable import PolicyOnly
from rlhf.rl.trainer import RLTrainer

__all__ = ["GroupRLTrainer"]


class GroupRLTrainer(RLTrainer):
    """A critic-free trainer whose advantages compare the completions of one prompt."""

    def build_trainable(self, policy: torch.nn.Module, same_vocab: bool) -> torch.nn.Module:
        # The loss's forward runs each distinct prompt once too (its activations then collect the gradients
        # of the whole group), except with gradient checkpointing, which turns the KV cache off in training.
        return PolicyOnly(policy, share_prompts=self.share_prompts and not self.config.gradient_checkpointing)

    def global_rewards(self, local_rewards: Tensor) -> Tensor:
        """Every rank's rewards ``(world x B,)`` in global order: groups are contiguous there."""
        return self.gather(local_rewards.float())

    def local_rows(self, x: Tensor) -> Tensor:
        """This rank's rows of a global ``(world x B, ...)`` tensor."""
        size = self.config.local_batch_size
        return x[self.rank * size : (self.rank + 1) * size]

    def tensors(self, batch: Rollout, advantages: Tensor) -> dict[str, Tensor]:
        """The per-sequence tensors the micro batches are cut from."""
        return {
            "query_responses": batch.query_responses, "attention_mask": batch.attention_mask,
            "responses": batch.responses, "old_logprobs": batch.logprobs, "ref_logprobs": batch.ref_logprobs,
            "advantages": advantages.reshape(-1, 1), "mask": batch.loss_mask,
        }

    def group_metrics(self, batch: Rollout, rewards: Tensor, stats: list[dict[str, Tensor]], grad_norms: list[float]) -> dict[str, Any]:
        """TRL's GRPO/RLOO metric names (``rewards`` is the global reward vector the advantages used)."""
        groups = rewards.view(-1, self.config.num_generations)
        valid = batch.loss_mask
        # With one completion per prompt (REINFORCE++) the spread is the batch's, not a group's.
        spread = groups.std(1) if groups.shape[1] > 1 else rewards.std().reshape(1)
        metrics: dict[str, Any] = {
            "reward": rewards.mean(),
            "reward_std": spread.mean(),
            "frac_reward_zero_std": (spread < 1e-6).float().mean(),
            "completions/mean_length": batch.mask.float().sum(1).mean(),
            "completions/clipped_ratio": (~batch.has_stop).float().mean() if self.stop_id is not None else torch.tensor(1.0),
            "kl": masked_mean(batch.kl, valid),
            "num_tokens": valid.sum() * self.world_size,  # mean x ranks = total
            "grad_norm": torch.tensor(sum(grad_norms) / max(len(grad_norms), 1)),
        }
        if batch.scores_per_source is not None:
            for k, name in enumerate(self.reward_source.names):
                short = name.rsplit(":", 1)[-1]
                metrics[f"rewards/{short}/mean"] = batch.scores_per_source[:, k].mean()
        for key in stats[0]:
            metrics[key] = torch.stack([s[key] for s in stats]).mean()
        return metrics

    def progress(self, metrics: dict[str, float]) -> dict[str, str]:
        return {"reward": f"{metrics['reward']:.3f}", "kl": f"{metrics['kl']:.3f}"}
