"""Every RL method, registered once. The CLI's commands and their help (``rlhf.cli``), the pipeline's
steps, their config sections, flags and plots (``rlhf.steps.pipeline``), and the YAML sections a
``--config`` file may hold (``rlhf.common.utils``) all derive from this table.

Adding a method: a module in ``rlhf/methods/`` with its config dataclass, a trainer subclassing
``rlhf.rl.trainer.RLTrainer`` (its ``update_policy`` and loss) and ``main(argv)``; then one row here.
This module imports nothing heavy, so ``rlhf --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["METHODS", "Method", "RL_METHODS"]


@dataclass(frozen=True)
class Method:
    name: str  # the command (`rlhf NAME`) and the pipeline step / YAML section
    module: str  # imported only when the method runs; has main(argv)
    help: str  # one line for `rlhf --help`
    length_flag: str  # the flag of the maximum completion length (TRL's name for this method)
    curve_keys: tuple[str, ...]  # metrics.jsonl keys the pipeline plots: rewards first, the KL last


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("ppo", "rlhf.methods.ppo", "PPO fine-tuning against a reward model or a reward function",
           "response_length", ("objective/scores", "objective/rlhf_reward", "objective/kl")),
    Method("grpo", "rlhf.methods.grpo", "GRPO fine-tuning: group-relative advantages, no critic (TRL GRPOConfig flags)",
           "max_completion_length", ("reward", "kl")),
    Method("rloo", "rlhf.methods.rloo", "RLOO fine-tuning: leave-one-out baseline, no critic (TRL RLOOConfig flags)",
           "max_completion_length", ("reward", "kl")),
    Method("reinforce_pp", "rlhf.methods.reinforce_pp",
           "REINFORCE++: batch-whitened returns, k2 KL in the reward, no critic (OpenRLHF)",
           "max_completion_length", ("reward", "non_score_reward", "kl")),
)}
RL_METHODS: tuple[str, ...] = tuple(METHODS)
