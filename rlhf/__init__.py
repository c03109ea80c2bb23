"""RLHF on Hugging Face causal LMs: the InstructGPT steps (SFT, reward model from rankings, RL
fine-tuning with PPO) and the critic-free GRPO and RLOO.

Command line: `rlhf tiny-model | sft | reward | ppo | grpo | rloo | label | pipeline` (see
`rlhf --help`). Modules:
  tiny_model  an offline random-init Llama and tokenizer     sft       TRL SFTTrainer step
  reward      reward model, K-wise ranking loss               label     ranking page + JSON API
  rl_trainer  the loop ppo/grpo/rloo share (rl_config: flags) experience  rollout batch, reward sources
  ppo, grpo, rloo  each method's update (+ *_config)          group_rl  what GRPO and RLOO share
  rollout     sampling and log-probs                          distributed  accelerate, DeepSpeed, FSDP
  pipeline    the steps in a row + results table and plot     checkpoints  output folder, checkpoint-<step>
  task, verifiable  shipped tasks and their scorers           data      dataset loading and format checks
  models      model/tokenizer loading, reward score offset    evaluate  sampling and scoring
  runs        run directory of the Trainer-based steps        utils     precision, seeding, parsing
Submodules import torch/transformers lazily, so `import rlhf` is cheap.
"""

__version__ = "0.1.0"
