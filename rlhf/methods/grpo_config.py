"""`GRPOConfig`: every setting of `rlhf grpo`, with the field names of TRL's `GRPOConfig`.

Batch sizes count completions, as in TRL::

    micro batch       = per_device_train_batch_size completions    (one forward/backward per process)
    generation batch  = micro batch * gradient_accumulation_steps * world_size completions
                      = generation batch / num_generations prompts, each sampled num_generations times
    one update        = one generation batch, then num_iterations optimizer steps over it
    updates           = max_steps

With the default ``num_iterations=1`` an update is one optimizer step, so ``max_steps`` means what it
means in TRL. Shared settings (models, data, sampling, LoRA, checkpoints) are in `rlhf.rl.config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhf.rl.config import RLConfig, docstrings_as_help, merge_repeated_flag

__all__ = ["GRPOConfig", "GroupRLConfig", "parse_grpo_args"]


@dataclass
class GroupRLConfig(RLConfig):
    """Settings of the group-sampling methods (GRPO, RLOO): several completions per prompt."""

    min_generations = 2  # a group needs two completions to compare (a class attribute, not a flag)

    reward_fn: str | None = None
    """`module:function` taking (prompts, completions) and returning one float per pair; several
    functions as a comma list or by repeating the flag (their weighted sum is the reward)."""
    reward_weights: list[float] | None = None
    """One weight per reward function (default: 1 each)."""
    num_generations: int = 8
    """Completions sampled per prompt (the group); >= 2."""
    max_completion_length: int = 256
    """Maximum new tokens per completion."""
    max_steps: int = 100
    """Updates of the run (one generation batch each; see the module docstring)."""
    num_iterations: int = 1
    """Optimizer steps over each generation batch (mu in the GRPO paper)."""
    temperature: float = 1.0
    """Sampling temperature; logprobs for the loss use logits / temperature too."""
    learning_rate: float = 1e-6
    """AdamW learning rate (TRL's default; tiny models take ~1e-3)."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon (transformers' default, as in TRL's GRPO/RLOO trainers)."""
    epsilon: float = 0.2
    """Lower clip epsilon of the policy ratio."""
    epsilon_high: float | None = None
    """Upper clip epsilon (None: `epsilon`; DAPO recommends 0.28)."""
    missing_eos_penalty: float | None = None
    """Subtracted from the reward of completions without the stop token (None: no penalty)."""

    def validate(self) -> GroupRLConfig:
        super().validate()
        self._require_at_least(("max_completion_length", "max_steps", "num_iterations"))
        self._require_at_least(("num_generations",), self.min_generations)
        self._require_positive(("epsilon", "epsilon_high"))
        self._require_non_negative(("missing_eos_penalty",))
        names = self.reward_fn_names
        if self.reward_weights is not None:
            if not names:
                self._fail("--reward_weights needs --reward_fn functions to weight")
            if len(self.reward_weights) != len(names):
                self._fail(f"--reward_weights has {len(self.reward_weights)} weights for {len(names)} --reward_fn "
                           "functions; give one weight per function")
        return self

    @property
    def reward_fn_names(self) -> list[str]:
        """The ``--reward_fn`` functions, in order."""
        if not self.reward_fn:
            return []
        return [s.strip() for s in self.reward_fn.split(",") if s.strip()]

    @property
    def completions_per_prompt(self) -> int:
        return self.num_generations

    @property
    def reward_functions(self) -> list[tuple[str, float]]:
        names = self.reward_fn_names
        return list(zip(names, self.reward_weights or [1.0] * len(names)))

    @property
    def max_new_tokens(self) -> int:
        return self.max_completion_length

    @property
    def local_batch_size(self) -> int:
        """Completions per generation batch on one process."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    def num_updates(self, world_size: int, num_prompts: int) -> int:
        return self.max_steps


docstrings_as_help(GroupRLConfig)


@dataclass
class GRPOConfig(GroupRLConfig):
    """Settings of GRPO fine-tuning of a causal LM (TRL's GRPOConfig names)."""

    command = "grpo"

    beta: float = 0.0
    """KL coefficient of the per-token k3 penalty beta * KL(pi || pi_ref) added to the loss (TRL's default 0)."""
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"
    """How per-token losses make one number: grpo (per-sequence mean, then mean), bnpo (mean over the
    batch's tokens), dr_grpo (sum / (sequences * max_completion_length)), dapo (sum / tokens of the
    whole global batch)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Advantage = (r - group mean) / std of the group ('group'), of the batch ('batch') or 1 ('none', Dr. GRPO)."""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """Policy ratio per token (GRPO) or per sequence (GSPO: exp of the mean token log ratio)."""

    def validate(self) -> GRPOConfig:
        super().validate()
        self._require_non_negative(("beta",))
        return self


docstrings_as_help(GRPOConfig)


def parse_grpo_args(argv: list[str] | None = None) -> GRPOConfig:
    """Build a validated `GRPOConfig` from `--config FILE.yaml` and command-line flags."""
    from rlhf.common.utils import hardware_defaults, parse_args

    argv = merge_repeated_flag(argv, "--reward_fn")
    (config,) = parse_args([GRPOConfig], argv, defaults=hardware_defaults(), description=__doc__)[:1]
    return config.validate()
