"""RLHF on Hugging Face causal LMs: the three InstructGPT steps (SFT, reward model from rankings, PPO).

Command line: `rlhf tiny-model | sft | reward | ppo | pipeline` (see `rlhf --help`). Modules:
  tiny_model  an offline random-init Llama and tokenizer     sft       TRL SFTTrainer step
  reward      reward model, K-wise ranking loss               ppo       PPO step (classic_rl's PPO core),
  pipeline    the steps in a row + results table and plot               with ppo_config, ppo_models, rollout
  task        shipped task and gold scorer                    data      dataset loading and format checks
  models      model/tokenizer loading, reward score offset    evaluate  sampling and scoring
  runs        run directory of the Trainer-based steps        utils     precision, seeding, parsing, run dirs
Submodules import torch/transformers lazily, so `import rlhf` is cheap.
"""

__version__ = "0.1.0"
