"""`rlhf grpo`: Group Relative Policy Optimization (DeepSeekMath; TRL's GRPOTrainer) of a causal LM.

    rlhf grpo --model_name_or_path SFT (--reward_fn module:function [...] | --reward_model_path RM)
              --dataset_name PROMPTS --output_dir OUT [--config FILE.yaml] [GRPOConfig flags]

One update (:meth:`GRPOTrainer.update_policy`, after the shared rollout of ``rlhf.rl.trainer``):
``num_generations`` completions per prompt are scored (weighted sum of the reward functions), each
completion's advantage is its reward minus its group's mean, over the group's std
(``classic_rl.core.advantages.group_advantages``, ``--scale_rewards``); then ``num_iterations``
optimizer steps, each over ``gradient_accumulation_steps`` micro batches of the clipped surrogate
(``epsilon``/``epsilon_high``, token or sequence ratio) plus ``beta`` x the k3 KL to the reference,
aggregated per ``--loss_type`` (``classic_rl.core.losses``). No critic.
"""

from __future__ import annotations

from typing import Any

import torch

from classic_rl.core.advantages import group_advantages
from classic_rl.core.losses import aggregate_loss, clipped_surrogate, kl_penalty, masked_mean, surrogate_stats
from rlhf.common.distributed import all_reduce_sum
from rlhf.methods.group import GroupRLTrainer
from rlhf.methods.grpo_config import GRPOConfig, parse_grpo_args
from rlhf.rl.correction import apply_importance_weight
from rlhf.rl.experience import Rollout
from rlhf.rl.forward import logprobs_and_entropy
from rlhf.rl.trainer import run_trainer

__all__ = ["GRPOTrainer", "main", "run_grpo"]


class GRPOTrainer(GroupRLTrainer):
    """GRPO for a causal LM; see the module docstring for one update."""

    config: GRPOConfig

    def update_policy(self, batch: Rollout) -> dict[str, Any]:
        cfg = self.config
        rewards = self.global_rewards(batch.scores)
        advantages = self.local_rows(group_advantages(rewards, cfg.num_generations, scale=cfg.scale_rewards))
        tensors = self.tensors(batch, advantages)
        self.context_length = batch.context_length
        # "dapo" divides by the real tokens of the whole generation batch (all ranks, all micro batches).
        num_items = all_reduce_sum(tensors["mask"].sum().double()).item()
        # One optimizer step per iteration: the batch's gradient_accumulation_steps micro batches.
        stats, grad_norms = self.optimize_on_batch(
            tensors, cfg.num_iterations, shuffle=False, loss_fn=lambda micro: self.loss(micro, num_items)
        )
        return self.group_metrics(batch, rewards, stats, grad_norms)

    def loss(self, micro: dict[str, torch.Tensor], num_items: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        logits, _ = self.model(micro["query_responses"], micro["attention_mask"], self.context_length)
        logprobs, entropy = logprobs_and_entropy(logits, micro["responses"], cfg.temperature)
        mask, advantages = micro["mask"], micro["advantages"]
        # One iteration: the sampling policy is the current one (ratio 1, TRL); more: the rollout's logprobs.
        old = logprobs.detach() if cfg.num_iterations == 1 else micro["old_logprobs"]
        per_token, log_ratio = clipped_surrogate(
            logprobs, old, advantages, mask, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
            importance_sampling_level=cfg.importance_sampling_level,
        )
        per_token = apply_importance_weight(per_token, micro)  # vLLM's sampling mismatch (not the KL: TRL)
        if cfg.beta != 0.0:
            per_token = per_token + cfg.beta * kl_penalty(logprobs, micro["ref_logprobs"], "k3")
        loss = aggregate_loss(per_token, mask, cfg.loss_type, max_length=cfg.max_completion_length, num_items=num_items)
        if cfg.loss_type == "dapo":
            # accelerate divides by the accumulation steps and DDP averages over ranks; the global token
            # count already normalises, so undo both.
            loss = loss * cfg.gradient_accumulation_steps * self.world_size
        stats = surrogate_stats(log_ratio.detach(), advantages, mask, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high)
        return loss, {
            "loss": loss.detach() / (cfg.gradient_accumulation_steps * self.world_size if cfg.loss_type == "dapo" else 1),
            "entropy": masked_mean(entropy, mask), "clip_ratio/region_mean": stats["clipfrac"],
            "approx_kl": stats["approx_kl"],
        }


def run_grpo(config: GRPOConfig) -> dict[str, Any]:
    return run_trainer(GRPOTrainer, config)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`rlhf grpo` entry point (also `python -m rlhf.methods.grpo`)."""
    return run_grpo(parse_grpo_args(argv))


if __name__ == "__main__":
    main()
