"""`RLOOConfig`: every setting of `rlhf rloo`, with the field names of TRL's `RLOOConfig`.

Batches as in `rlhf.methods.grpo_config` (completions, groups of ``num_generations`` per prompt). RLOO puts the
KL to the reference into the reward (``r - beta * sum_t KL_t``, k1) and uses the leave-one-out mean of
the other completions of the same prompt as the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.methods.grpo_config import GroupRLConfig
from rlhf.rl.config import docstrings_as_help, merge_repeated_flag

__all__ = ["RLOOConfig", "parse_rloo_args"]


@dataclass
class RLOOConfig(GroupRLConfig):
    """Settings of RLOO fine-tuning of a causal LM (TRL's RLOOConfig names)."""

    command = "rloo"

    num_generations: int = 2
    """Completions sampled per prompt (the group); >= 2."""
    beta: float = 0.05
    """KL coefficient: the reward is score - beta * sum_t (log pi - log pi_ref) over the completion."""
    normalize_advantages: bool = False
    """Whiten the leave-one-out advantages over the batch."""

    def validate(self) -> RLOOConfig:
        super().validate()
        self._require_non_negative(("beta",))
        return self


docstrings_as_help(RLOOConfig)


def parse_rloo_args(argv: list[str] | None = None) -> RLOOConfig:
    """Build a validated `RLOOConfig` from `--config FILE.yaml` and command-line flags."""
    from rlhf.common.utils import hardware_defaults, parse_args

    argv = merge_repeated_flag(argv, "--reward_fn")
    (config,) = parse_args([RLOOConfig], argv, defaults=hardware_defaults(), description=__doc__)[:1]
    return config.validate()
