"""`rlhf rloo`: REINFORCE Leave-One-Out (Ahmadian et al. 2024; TRL's RLOOTrainer) of a causal LM.

    rlhf rloo --model_name_or_path SFT (--reward_fn module:function [...] | --reward_model_path RM)
              --dataset_name PROMPTS --output_dir OUT [--config FILE.yaml] [RLOOConfig flags]

One update (:meth:`RLOOTrainer.update_policy`): ``num_generations`` completions per prompt; each
completion's reward is its score minus ``beta`` x its summed k1 KL to the reference; its advantage is
that reward minus the mean reward of the other completions of its prompt
(``classic_rl.core.advantages.rloo_advantages``; whitened over the batch with
``--normalize_advantages``); then ``num_iterations`` optimizer steps of the clipped surrogate on the
sequence's log-probability ratio (the sum of its token log ratios), averaged over sequences. No critic.
"""

from __future__ import annotations

from typing import Any

import torch

from classic_rl.core.advantages import rloo_advantages, whiten_advantages
from classic_rl.core.losses import clipped_surrogate, masked_mean, masked_sum, surrogate_stats
from rlhf.methods.group import GroupRLTrainer
from rlhf.methods.rloo_config import RLOOConfig, parse_rloo_args
from rlhf.rl.correction import apply_importance_weight
from rlhf.rl.experience import Rollout
from rlhf.rl.forward import logprobs_and_entropy
from rlhf.rl.trainer import run_trainer

__all__ = ["RLOOTrainer", "main", "run_rloo"]


class RLOOTrainer(GroupRLTrainer):
    """RLOO for a causal LM; see the module docstring for one update."""

    config: RLOOConfig

    def update_policy(self, batch: Rollout) -> dict[str, Any]:
        cfg = self.config
        rewards = self.global_rewards(batch.scores - cfg.beta * batch.kl.sum(1))  # KL in the reward (k1)
        advantages = rloo_advantages(rewards, cfg.num_generations)
        if cfg.normalize_advantages:
            advantages = whiten_advantages(advantages)
        tensors = self.tensors(batch, self.local_rows(advantages))
        self.context_length = batch.context_length
        stats, grad_norms = self.optimize_on_batch(tensors, cfg.num_iterations, shuffle=False, loss_fn=self.loss)
        return self.group_metrics(batch, rewards, stats, grad_norms)

    def loss(self, micro: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        logits, _ = self.model(micro["query_responses"], micro["attention_mask"], self.context_length)
        logprobs, entropy = logprobs_and_entropy(logits, micro["responses"], cfg.temperature)
        mask = micro["mask"]
        sequence_logprob = masked_sum(logprobs, mask, dim=1).unsqueeze(1)  # (B, 1): one ratio per completion
        old = sequence_logprob.detach() if cfg.num_iterations == 1 else masked_sum(micro["old_logprobs"], mask, dim=1).unsqueeze(1)
        per_sequence, log_ratio = clipped_surrogate(
            sequence_logprob, old, micro["advantages"], epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high
        )
        loss = apply_importance_weight(per_sequence, micro).mean()  # the sequence's weight with vLLM
        stats = surrogate_stats(log_ratio.detach(), micro["advantages"], epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high)
        return loss, {
            "loss": loss.detach(), "entropy": masked_mean(entropy, mask), "clip_ratio/region_mean": stats["clipfrac"],
            "approx_kl": stats["approx_kl"],
        }


def run_rloo(config: RLOOConfig) -> dict[str, Any]:
    return run_trainer(RLOOTrainer, config)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`rlhf rloo` entry point (also `python -m rlhf.methods.rloo`)."""
    return run_rloo(parse_rloo_args(argv))


if __name__ == "__main__":
    main()
