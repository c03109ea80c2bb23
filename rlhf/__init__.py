"""RLHF on Hugging Face causal LMs: the InstructGPT steps (SFT, reward model from rankings, RL
fine-tuning with PPO) and the critic-free GRPO, RLOO and REINFORCE++.

Command line: `rlhf tiny-model | sft | reward | ppo | grpo | rloo | reinforce_pp | label | pipeline`
(see `rlhf --help`). Folders, one job each:
  rl/       the RL machinery every method shares: setup, prompt stream, sampler, experience maker,
            optimiser loop, trainer state, metrics sink, the trainer and its runner
  methods/  one module per RL method (its config, advantages and loss), registered once
  steps/    the TRL-based steps (tiny model, sft, reward, label) and the pipeline that chains them
  common/   plumbing both sides use: argument parsing, files, data, model loading, distributed
  tasks/    the shipped tasks and their programmatic scorers
Submodules import torch/transformers lazily, so `import rlhf` is cheap. The module paths of earlier
versions (`rlhf.ppo`, `rlhf.rl_trainer`, ...) still import (`rlhf._moved`).
"""

from rlhf import _moved

_moved.install()

__version__ = "0.1.0"
