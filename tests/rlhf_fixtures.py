"""Session fixtures of the rlhf tests: the tiny model, an SFT model and a reward model, each built once.

Test modules load this file as a pytest plugin (`pytest_plugins`), so every module shares one copy.
Budgets are small and seeded: the SFT run takes about 5 s, the reward run about 10 s, on one CPU thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "rlhf" / "data"
QUIET = ["--disable_tqdm", "true", "--report_to", "none"]


def sft_flags(model: str | Path, output_dir: str | Path, *extra: str) -> list[str]:
    """Flags of a short SFT run on the shipped task."""
    return [
        "--model_name_or_path", str(model),
        "--dataset_name", str(DATA / "sft.jsonl"),
        "--eval_dataset_name", str(DATA / "sft_eval.jsonl"),
        "--output_dir", str(output_dir),
        "--max_steps", "60",
        "--per_device_train_batch_size", "32",
        "--learning_rate", "3e-3",
        "--lr_scheduler_type", "cosine",
        "--warmup_steps", "5",
        "--logging_steps", "10",
        "--seed", "0",
        *QUIET,
        *extra,
    ]


def reward_flags(model: str | Path, output_dir: str | Path, *extra: str) -> list[str]:
    """Flags of a short reward-model run on the shipped rankings, calibrated on SFT samples."""
    return [
        "--model_name_or_path", str(model),
        "--dataset_name", str(DATA / "rankings.jsonl"),
        "--eval_dataset_name", str(DATA / "pairs_eval.jsonl"),
        "--calibration_dataset", str(DATA / "prompts.jsonl"),
        "--calibration_num_samples", "32",
        "--output_dir", str(output_dir),
        "--max_steps", "40",
        "--per_device_train_batch_size", "16",
        "--learning_rate", "1e-3",
        "--lr_scheduler_type", "cosine",
        "--warmup_steps", "3",
        "--logging_steps", "10",
        "--seed", "0",
        *QUIET,
        *extra,
    ]


@pytest.fixture(scope="session")
def rlhf_tiny_model(tmp_path_factory) -> Path:
    """The default tiny model (about 0.4M parameters), as `rlhf tiny-model` writes it."""
    from rlhf.tiny_model import main

    path = tmp_path_factory.mktemp("rlhf") / "tiny"
    main(["--output_dir", str(path)])
    return path


@pytest.fixture(scope="session")
def rlhf_sft_run(rlhf_tiny_model, tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    """(output directory, summary) of a 60-step SFT run from the tiny model."""
    from rlhf.sft import main

    path = tmp_path_factory.mktemp("rlhf") / "sft"
    return path, main(sft_flags(rlhf_tiny_model, path))


@pytest.fixture(scope="session")
def rlhf_reward_run(rlhf_sft_run, tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    """(output directory, summary) of a 40-step K-wise reward-model run from the SFT model."""
    from rlhf.reward import main

    path = tmp_path_factory.mktemp("rlhf") / "reward"
    return path, main(reward_flags(rlhf_sft_run[0], path))
