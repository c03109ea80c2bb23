"""`rlhf ppo`: PPO fine-tuning of a causal LM against a reward model or a reward function (InstructGPT step 3).

    rlhf ppo --model_name_or_path SFT (--reward_model_path RM | --reward_fn module:function)
             --dataset_name PROMPTS --output_dir OUT [--config FILE.yaml] [PPOConfig flags]

One PPO update (:meth:`PPOTrainer.update_policy`, after the shared rollout of ``rlhf.rl.trainer``):

1. Rollout (no grad): a response per prompt sampled with temperature T, cut after its first stop
   token; the policy's and the frozen reference's logprobs and the critic's values per token; the
   reward model's (or function's) score minus ``missing_eos_penalty`` when the response never stopped.
2. Reward per token: ``-kl_coef * KL_t`` plus the score at the last real token (``rlhf.rl.rewards.shape_rewards``).
3. GAE (gamma 1, lambda ``lam``; ``classic_rl.core.advantages.gae``), advantages whitened over the
   global batch, then ``num_ppo_epochs`` x minibatches x ``gradient_accumulation_steps`` micro batches
   of the clipped policy loss and the clipped value loss (``classic_rl.core.losses``).

Multi-process (``accelerate launch``): each rank samples its own prompts with its own seed, DDP
averages the gradients, metrics are averaged over ranks, rank 0 alone writes. OUT holds the policy
(``save_pretrained``; with LoRA the merged model and the adapter in OUT/adapter), the tokenizer,
``metrics.jsonl`` (TRL's metric names), ``summary.json``, ``config.yaml`` and ``checkpoint-<update>``
folders with ``--save_steps``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from classic_rl.core.advantages import gae
from classic_rl.core.losses import clipped_surrogate, masked_mean, surrogate_stats, value_loss
from rlhf.common.distributed import masked_whiten_across_processes
from rlhf.methods.ppo_config import PPOConfig, parse_ppo_args
from rlhf.rl.correction import apply_importance_weight
from rlhf.rl.experience import Rollout
from rlhf.rl.forward import logprobs_and_entropy
from rlhf.rl.rewards import shape_rewards
from rlhf.rl.setup import with_lora
from rlhf.rl.trainable import PolicyAndValue, ValueModel
from rlhf.rl.trainer import RLTrainer, run_trainer

__all__ = ["AdaptiveKLController", "PPOTrainer", "Rollout", "main", "run_ppo"]


class AdaptiveKLController:
    """Ziegler et al. (2019): ``beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon``.

    ``n`` is the number of episodes in the update; with ``adaptive=False`` beta stays fixed.
    """

    def __init__(self, init: float, target: float, horizon: int, adaptive: bool):
        self.value = init
        self.target, self.horizon, self.adaptive = target, horizon, adaptive

    def update(self, kl: float, n_steps: int) -> None:
        if not self.adaptive:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


class PPOTrainer(RLTrainer):
    """PPO for a causal LM on prompts; see the module docstring for one update."""

    uses_critic = True

    def __init__(self, config: PPOConfig, accelerator=None):
        super().__init__(config, accelerator)
        self.kl_ctl = AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon, config.adaptive_kl)

    def build_trainable(self, policy: nn.Module, same_vocab: bool) -> nn.Module:
        """The policy and its critic (from --value_model_path, the reward model or the SFT model), or a
        value head on the policy (--value_head_on_policy)."""
        cfg = self.config
        if cfg.value_head_on_policy:
            return PolicyAndValue(policy, None)
        source = cfg.value_model_path or cfg.reward_model_path or cfg.model_name_or_path
        if source == cfg.reward_model_path and not same_vocab:
            raise ValueError(
                f"the reward model '{cfg.reward_model_path}' has another tokenizer than the policy, so it cannot "
                "initialise the critic (which reads the policy's tokens); pass --value_model_path (e.g. the SFT "
                "model) or --value_head_on_policy"
            )
        from rlhf.common.models import load_reward_model

        from_reward_model = cfg.value_model_path is not None or cfg.reward_model_path is not None
        # A critic from the SFT model gets a zeroed value head: no "reward head" to announce.
        critic_model = load_reward_model(source, tokenizer=self.tokenizer, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
                                         announce_new_head=from_reward_model)
        if cfg.use_peft:
            critic_model = with_lora(cfg, critic_model, "SEQ_CLS")
        return PolicyAndValue(policy, ValueModel.from_sequence_classifier(critic_model, zero_head=not from_reward_model))

    # ------------------------------------------------------------------ one update
    def update_policy(self, batch: Rollout) -> dict[str, Any]:
        """KL-shaped rewards, GAE, whitened advantages, then epochs x micro batches of PPO's losses."""
        cfg = self.config
        valid = batch.loss_mask  # the tokens the policy produced: every loss and statistic below
        if getattr(batch, "turn_rewards", None) is not None:  # env episodes: GAE over turns (rlhf.envs.credit)
            from rlhf.envs.credit import turn_advantages

            advantages, returns, non_score = turn_advantages(batch, self.kl_ctl.value, cfg.gamma, cfg.lam)
        else:
            rewards, non_score = shape_rewards(batch.scores, batch.kl, valid, batch.last_trained_index, self.kl_ctl.value,
                                               cfg.whiten_rewards)
            advantages, returns = gae(rewards, batch.values, mask=valid, gamma=cfg.gamma, lam=cfg.lam)
        # Whitened with the statistics of every rank's batch, so N processes x b sequences take the
        # same step as one process with N x b (tests/test_rlhf_dataparallel.py).
        advantages = masked_whiten_across_processes(advantages, valid)
        tensors = {
            "query_responses": batch.query_responses, "attention_mask": batch.attention_mask,
            "responses": batch.responses, "logprobs": batch.logprobs, "values": batch.values,
            "advantages": advantages, "returns": returns, "mask": valid,
        }
        self.context_length = batch.context_length
        # num_mini_batches optimizer steps per epoch, each the mean over gradient_accumulation_steps
        # micro batches.
        shuffle = cfg.num_mini_batches * cfg.gradient_accumulation_steps > 1
        stats, _ = self.optimize_on_batch(tensors, cfg.num_ppo_epochs, shuffle, self.loss)
        mean = {k: torch.stack([s[k] for s in stats]).mean() for k in stats[0]}
        kl_sum = batch.kl.sum(1)
        return {
            "objective/kl": kl_sum.mean(),
            "objective/entropy": (-batch.logprobs).sum(1).mean(),
            "objective/non_score_reward": non_score.sum(1).mean(),
            "objective/rlhf_reward": (batch.scores + non_score.sum(1)).mean(),
            "objective/scores": batch.scores.mean(),
            "objective/raw_scores": batch.raw_scores.mean(),
            "policy/approxkl_avg": mean["approx_kl"],
            "policy/clipfrac_avg": mean["clipfrac"],
            "policy/entropy_avg": mean["entropy"],
            "loss/policy_avg": mean["policy"],
            "loss/value_avg": mean["value"],
            "val/clipfrac_avg": mean["val_clipfrac"],
            "val/ratio": mean["ratio"],
            "val/num_eos_tokens": batch.has_stop.float().sum() * self.world_size,  # mean x ranks = total
            "val/no_eos_frac": (~batch.has_stop).float().mean(),
            "val/response_length": batch.mask.float().sum(1).mean(),
            "val/values": masked_mean(batch.values, valid),
            "val/advantages_abs": masked_mean(advantages.abs(), valid),
        }

    def loss(self, micro: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """PPO's clipped policy loss (token mean) + vf_coef x the clipped value loss of one micro batch."""
        cfg = self.config
        logits, values = self.model(micro["query_responses"], micro["attention_mask"], self.context_length)
        logprobs, entropy = logprobs_and_entropy(logits, micro["responses"], cfg.temperature)
        mask = micro["mask"]
        per_token, log_ratio = clipped_surrogate(logprobs, micro["logprobs"], micro["advantages"], mask, epsilon=cfg.cliprange)
        pg_loss = masked_mean(apply_importance_weight(per_token, micro), mask)  # vLLM's mismatch, policy only
        v_loss, v_clipfrac = value_loss(values.float(), micro["values"], micro["returns"], mask, cfg.cliprange_value)
        stats = surrogate_stats(log_ratio.detach(), micro["advantages"], mask, epsilon=cfg.cliprange)
        return pg_loss + cfg.vf_coef * v_loss, {
            "policy": pg_loss.detach(), "value": v_loss.detach(), "entropy": masked_mean(entropy, mask),
            "approx_kl": stats["approx_kl"], "clipfrac": stats["clipfrac"], "ratio": stats["ratio"],
            "val_clipfrac": torch.as_tensor(v_clipfrac).detach(),
        }

    def after_update(self, metrics: dict[str, float]) -> dict[str, float]:
        self.kl_ctl.update(metrics["objective/kl"], self.config.local_batch_size * self.world_size)
        return {"objective/kl_coef": self.kl_ctl.value}

    # ------------------------------------------------------------------ checkpoints and summary
    def extra_state(self) -> dict[str, Any]:
        return {"kl_coef": self.kl_ctl.value}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.kl_ctl.value = state["kl_coef"]

    def summary_extras(self, last: dict[str, float]) -> dict[str, Any]:
        return {"kl_coef_final": self.kl_ctl.value, "train_objective_kl_last": last.get("objective/kl")}

    def progress(self, metrics: dict[str, float]) -> dict[str, str]:
        return {"score": f"{metrics['objective/scores']:.3f}", "kl": f"{metrics['objective/kl']:.3f}"}


def run_ppo(config: PPOConfig) -> dict[str, Any]:
    """Train with ``config``; write OUT (see ``rlhf.rl.trainer.run_trainer``); return the summary."""
    return run_trainer(PPOTrainer, config)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`rlhf ppo` entry point (also `python -m rlhf.methods.ppo`)."""
    return run_ppo(parse_ppo_args(argv))


if __name__ == "__main__":
    main()
