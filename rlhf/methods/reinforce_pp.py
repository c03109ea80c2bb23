"""`rlhf reinforce_pp`: REINFORCE++ (Hu et al. 2025; OpenRLHF's ``--advantage_estimator reinforce``) of a causal LM.

    rlhf reinforce_pp --model_name_or_path SFT (--reward_fn module:function [...] | --reward_model_path RM)
                      --dataset_name PROMPTS --output_dir OUT [--config FILE.yaml] [flags]

No critic and no group baseline: one completion per prompt by default, and the batch itself is the
baseline. One update (:meth:`ReinforcePPTrainer.update_policy`):

1. Per-token reward (``rlhf.rl.rewards.shape_rewards``): ``r_t = -kl_coef * KL_t`` with the k2
   estimator ``KL_t = (log pi - log pi_ref)^2 / 2`` on every trained token, plus the score at the last one.
2. Returns ``G_t = sum_{s >= t} gamma^(s-t) r_s`` (``classic_rl.core.advantages.gae`` with no values
   and lambda 1), whitened over every trained token of the global batch (all ranks): the advantage.
3. ``num_iterations`` optimizer steps, each over ``gradient_accumulation_steps`` micro batches of PPO's
   clipped surrogate on the token ratio, averaged over the batch's trained tokens.

Batches, reward functions, sampling and checkpoints as in `rlhf grpo` (its flag names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from classic_rl.core.advantages import gae
from classic_rl.core.losses import aggregate_loss, clipped_surrogate, masked_mean, surrogate_stats
from rlhf.common.distributed import masked_whiten_across_processes
from rlhf.methods.group import GroupRLTrainer
from rlhf.methods.grpo_config import GroupRLConfig
from rlhf.rl.config import docstrings_as_help, merge_repeated_flag
from rlhf.rl.correction import apply_importance_weight
from rlhf.rl.experience import Rollout
from rlhf.rl.forward import logprobs_and_entropy
from rlhf.rl.rewards import shape_rewards
from rlhf.rl.runner import run_trainer

__all__ = ["ReinforcePPConfig", "ReinforcePPTrainer", "main", "parse_reinforce_pp_args", "run_reinforce_pp"]


@dataclass
class ReinforcePPConfig(GroupRLConfig):
    """Settings of REINFORCE++ (OpenRLHF's defaults where it has them)."""

    command = "reinforce_pp"
    min_generations = 1

    num_generations: int = 1
    """Completions sampled per prompt (REINFORCE++ needs no group)."""
    kl_coef: float = 0.01
    """Coefficient of the per-token k2 KL penalty in the reward (OpenRLHF's init_kl_coef)."""
    gamma: float = 1.0
    """Discount of the per-token returns."""

    def validate(self) -> ReinforcePPConfig:
        super().validate()
        self._require_non_negative(("kl_coef",))
        if not 0.0 <= self.gamma <= 1.0:
            self._fail(f"--gamma must be in [0, 1]; got {self.gamma}")
        return self

    @property
    def rollout_kl_estimator(self) -> str:
        return "k2"


docstrings_as_help(ReinforcePPConfig)


class ReinforcePPTrainer(GroupRLTrainer):
    """REINFORCE++ for a causal LM; see the module docstring for one update."""

    config: ReinforcePPConfig

    def update_policy(self, batch: Rollout) -> dict[str, Any]:
        cfg = self.config
        valid = batch.loss_mask
        rewards, non_score = shape_rewards(batch.scores, batch.kl, valid, batch.last_trained_index, cfg.kl_coef)
        returns, _ = gae(rewards, torch.zeros_like(rewards), mask=valid, gamma=cfg.gamma, lam=1.0)
        advantages = masked_whiten_across_processes(returns, valid)  # the batch (all ranks) is the baseline
        tensors = {
            "query_responses": batch.query_responses, "attention_mask": batch.attention_mask,
            "responses": batch.responses, "old_logprobs": batch.logprobs, "advantages": advantages, "mask": valid,
        }
        self.context_length = batch.context_length
        stats, grad_norms = self.optimize_on_batch(tensors, cfg.num_iterations, shuffle=False, loss_fn=self.loss)
        metrics = self.group_metrics(batch, self.global_rewards(batch.scores), stats, grad_norms)
        metrics["non_score_reward"] = non_score.sum(1).mean()
        return metrics

    def loss(self, micro: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        logits, _ = self.model(micro["query_responses"], micro["attention_mask"], self.context_length)
        logprobs, entropy = logprobs_and_entropy(logits, micro["responses"], cfg.temperature)
        mask, advantages = micro["mask"], micro["advantages"]
        old = logprobs.detach() if cfg.num_iterations == 1 else micro["old_logprobs"]
        per_token, log_ratio = clipped_surrogate(logprobs, old, advantages, mask, epsilon=cfg.epsilon,
                                                 epsilon_high=cfg.epsilon_high)
        loss = aggregate_loss(apply_importance_weight(per_token, micro), mask, "bnpo")
        stats = surrogate_stats(log_ratio.detach(), advantages, mask, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high)
        return loss, {
            "loss": loss.detach(), "entropy": masked_mean(entropy, mask), "clip_ratio/region_mean": stats["clipfrac"],
            "approx_kl": stats["approx_kl"],
        }


def parse_reinforce_pp_args(argv: list[str] | None = None) -> ReinforcePPConfig:
    """Build a validated `ReinforcePPConfig` from `--config FILE.yaml` and command-line flags."""
    from rlhf.common.utils import hardware_defaults, parse_args

    argv = merge_repeated_flag(argv, "--reward_fn")
    (config,) = parse_args([ReinforcePPConfig], argv, defaults=hardware_defaults(), description=__doc__)[:1]
    return config.validate()


def run_reinforce_pp(config: ReinforcePPConfig) -> dict[str, Any]:
    return run_trainer(ReinforcePPTrainer, config)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`rlhf reinforce_pp` entry point (also `python -m rlhf.methods.reinforce_pp`)."""
    return run_reinforce_pp(parse_reinforce_pp_args(argv))


if __name__ == "__main__":
    main()
