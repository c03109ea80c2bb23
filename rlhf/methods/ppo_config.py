"""`PPOConfig`: every setting of `rlhf ppo`, with the field names of TRL's former `PPOConfig`.

TRL users can move over with their flags and YAML files unchanged (`total_episodes`,
`per_device_train_batch_size`, `num_mini_batches`, `kl_coef`, `cliprange`, ...). Defaults follow
"The N+ Implementation Details of RLHF with PPO" (Huang et al., 2024) where TRL had none. Batch sizes mean what they meant in TRL::

    micro batch      = per_device_train_batch_size              (one forward/backward)
    minibatch        = micro batch * gradient_accumulation_steps (one optimizer step)
    rollout batch    = minibatch * num_mini_batches              (per process, per PPO update)
    updates          = ceil(total_episodes / (rollout batch * world_size))

Flags come from the command line and from `--config FILE.yaml` (a mapping of field names);
the command line wins over the file, the file over the defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from rlhf.rl.config import RLConfig, docstrings_as_help


@dataclass
class PPOConfig(RLConfig):
    """Settings of PPO fine-tuning of a causal LM (TRL names; see the module docstring)."""

    command = "ppo"

    # ------------------------------------------------------------------ models
    value_model_path: str | None = None
    """Where the critic is initialised from; default: the reward model, else the SFT model."""
    value_head_on_policy: bool = False
    """Use a zero-initialised value head on the policy instead of a separate critic network."""

    # ------------------------------------------------------------------ batch sizes and budget
    total_episodes: int | None = None
    """Prompts sampled over the whole run, all processes together (default: one pass over the data)."""
    num_train_epochs: float = 1.0
    """Passes over the prompts when `total_episodes` is not set."""
    num_mini_batches: int = 1
    """Optimizer steps per PPO epoch over one rollout batch."""
    num_ppo_epochs: int = 4
    """Passes over each rollout batch (minibatches reshuffled each pass)."""

    # ------------------------------------------------------------------ sampling
    response_length: int = 53
    """Maximum new tokens per response."""
    missing_eos_penalty: float | None = 1.0
    """Subtracted from the score of responses without the stop token (None: no penalty)."""

    # ------------------------------------------------------------------ reward and KL
    kl_coef: float = 0.05
    """beta of the per-token penalty -beta * KL(pi || pi_ref) (initial value when adaptive)."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """k1: log p - log p_ref; k3: (r - 1) - log r with r = p_ref / p (unbiased, always >= 0)."""
    adaptive_kl: bool = False
    """Ziegler et al.'s controller: beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon."""
    kl_target: float = 6.0
    """Target KL per response (nats, summed over tokens) of the adaptive controller."""
    kl_horizon: int = 10000
    """Episodes over which the adaptive controller closes the gap to the target."""
    whiten_rewards: bool = False
    """Rescale the per-token rewards by their std (mean kept)."""
    score_clip: float | None = None
    """Clip reward scores to [-score_clip, score_clip] (None: no clipping)."""

    # ------------------------------------------------------------------ PPO update
    learning_rate: float = 3e-6
    """AdamW learning rate of the policy and the critic (N+: 3e-6 for 1B models; tiny models take ~3e-4)."""
    cliprange: float = 0.2
    """PPO's policy ratio clip epsilon."""
    cliprange_value: float | None = 0.2
    """Clip new values to old values +- this in the value loss (None: unclipped)."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss."""
    gamma: float = 1.0
    """Discount over response tokens (1: the score at the end counts fully for every token); with --env, over
    the turns of an episode."""
    lam: float = 0.95
    """GAE lambda (with --env: over the turns of an episode)."""

    # ------------------------------------------------------------------ derived sizes
    def validate(self) -> PPOConfig:
        """Raise ConfigError (a ValueError) naming the flag and the valid range for settings that cannot run."""
        super().validate()
        self._require_at_least(("num_mini_batches", "num_ppo_epochs", "response_length"))
        if self.total_episodes is not None and self.total_episodes < 1:
            self._fail(f"--total_episodes must be >= 1, got {self.total_episodes}")
        if self.env and self.total_episodes is None:
            self._fail("--env needs --total_episodes (the episodes of the run; there is no prompt set to pass over)")
        if self.env and self.whiten_rewards:
            self._fail("--whiten_rewards is per-token reward shaping; with --env the rewards are per turn (drop the flag)")
        self._require_positive(("cliprange", "cliprange_value", "kl_target", "kl_horizon", "num_train_epochs", "score_clip"))
        self._require_non_negative(("kl_coef", "vf_coef", "missing_eos_penalty"))
        if not 0.0 <= self.lam <= 1.0 or not 0.0 <= self.gamma <= 1.0:
            self._fail(f"--gamma and --lam must lie in [0, 1], got gamma={self.gamma}, lam={self.lam}")
        return self

    @property
    def reward_clip(self) -> float | None:
        return self.score_clip

    @property
    def rollout_kl_estimator(self) -> str:
        return self.kl_estimator

    @property
    def max_new_tokens(self) -> int:
        return self.response_length

    @property
    def mini_batch_size(self) -> int:
        """Sequences per optimizer step on one process."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @property
    def local_batch_size(self) -> int:
        """Sequences per rollout on one process."""
        return self.mini_batch_size * self.num_mini_batches

    def num_updates(self, world_size: int, num_prompts: int) -> int:
        """PPO updates (rollout + optimisation rounds) of the run."""
        episodes = self.total_episodes
        if episodes is None:
            episodes = max(1, int(self.num_train_epochs * num_prompts))
        return max(1, math.ceil(episodes / (self.local_batch_size * world_size)))


docstrings_as_help(PPOConfig)


def parse_ppo_args(argv: list[str] | None = None) -> PPOConfig:
    """Build a validated `PPOConfig` from `--config FILE.yaml` and command-line flags.

    Precedence, lowest first: the dataclass defaults, what the hardware suggests (bf16 on a capable
    GPU, fp32 on CPU, gradient checkpointing on GPU), the YAML file, the command line.
    """
    from rlhf.common.utils import hardware_defaults, parse_args

    (config,) = parse_args([PPOConfig], argv, defaults=hardware_defaults(), description=__doc__)[:1]
    return config.validate()


__all__ = ["PPOConfig", "parse_ppo_args"]
