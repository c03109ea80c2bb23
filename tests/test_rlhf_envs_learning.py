"""LM agents learn a small env (`rlhf grpo|ppo --env`): a 3x3 FrozenLake, a tiny model SFT'd on random
transcripts (`rlhf rollouts`), then GRPO or PPO rewarded by the lake. The random policy reaches the
goal within 6 moves about 9% of the time; the trained agents on held-out episodes far more often."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.cli import main as cli_main

LAKE_3X3 = json.dumps({"desc": ["SFF", "FHF", "FFG"], "is_slippery": False})
ENV = ["--env", "FrozenLake-v1", "--env_kwargs", LAKE_3X3, "--max_turns", "6"]
QUIET = ["--disable_tqdm", "true", "--report_to", "none"]
RL = [*ENV, "--num_eval_prompts", "64", "--temperature", "1.0", "--seed", "0", "--num_sample_generations", "0",
      *QUIET]


@pytest.fixture(scope="module")
def lake_sft(tmp_path_factory) -> Path:
    """A tiny model SFT'd on 400 random episodes of the 3x3 lake, as a user makes it."""
    root = tmp_path_factory.mktemp("lake")
    assert cli_main(["rollouts", *ENV, "--policy", "random", "--episodes", "400",
                     "--output_file", str(root / "random.jsonl")]) == 0
    assert cli_main(["tiny-model", "--output_dir", str(root / "tiny"), "--vocab_size", "300", "--hidden_size", "64",
                     "--intermediate_size", "128", "--num_hidden_layers", "2", "--num_attention_heads", "2"]) == 0
    assert cli_main(["sft", "--model_name_or_path", str(root / "tiny"), "--dataset_name", str(root / "random.jsonl"),
                     "--output_dir", str(root / "sft"), "--max_steps", "120", "--per_device_train_batch_size", "32",
                     "--learning_rate", "5e-3", "--lr_scheduler_type", "cosine", "--warmup_steps", "5", "--seed", "0",
                     "--logging_steps", "40", *QUIET]) == 0
    return root / "sft"


@pytest.mark.slow
def test_grpo_learns_the_small_lake(lake_sft, tmp_path):
    out = tmp_path / "grpo"
    assert cli_main(["grpo", "--model_name_or_path", str(lake_sft), "--output_dir", str(out), *RL,
                     "--num_generations", "8", "--per_device_train_batch_size", "32", "--max_completion_length", "6",
                     "--max_steps", "30", "--learning_rate", "2e-3", "--beta", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["success_rate_before"] < 0.3
    assert summary["success_rate_after"] > 0.6, summary
    assert summary["reward_mean_after"] == summary["return_mean_after"]  # with --env: the held-out return
    assert summary["env_steps"] > 0


@pytest.mark.slow
def test_ppo_learns_the_small_lake(lake_sft, tmp_path):
    # lr 1e-3 as configs/rlhf/agent_tiny.yaml: at 2e-3 the run reached 0.84 by update 20 on this machine, then
    # one update undid it (held-out 0.14); at 1e-3 it climbs steadily (0.77)
    out = tmp_path / "ppo"
    assert cli_main(["ppo", "--model_name_or_path", str(lake_sft), "--output_dir", str(out), *RL,
                     "--total_episodes", "960", "--per_device_train_batch_size", "32", "--num_ppo_epochs", "1",
                     "--response_length", "6", "--value_head_on_policy", "--learning_rate", "1e-3", "--kl_coef", "0.02",
                     "--missing_eos_penalty", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["success_rate_before"] < 0.3
    assert summary["success_rate_after"] > 0.6, summary
