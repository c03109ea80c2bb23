"""The RL trainers give the numbers they gave before the trainer was split by job.

``tests/data/same_numbers/<command>.jsonl`` holds the metrics.jsonl of a short fixed-seed run of
``rlhf ppo``, ``rlhf grpo`` and ``rlhf rloo`` on the shipped tasks, recorded from the trainer before
its split into ``rlhf/rl/`` (``python tests/test_rlhf_same_numbers.py --record`` rewrites them; only
do that for a change that is meant to change the numbers, and say so in the commit). Timings aside,
every logged value must match. The tolerance absorbs float rounding between CPUs, not a changed
computation: one changed sample or update moves these numbers by far more.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "rlhf" / "data"
REFERENCE = Path(__file__).resolve().parent / "data" / "same_numbers"
QUIET = ["--disable_tqdm", "true", "--report_to", "none", "--seed", "3"]
IGNORED = ("time/", "eps")  # wall-clock figures

RUNS = {
    "ppo": ["--reward_fn", "rlhf.task:gold_reward", "--dataset_name", str(DATA / "prompts.jsonl"),
            "--eval_dataset_name", str(DATA / "prompts_eval.jsonl"), "--num_eval_prompts", "16",
            "--total_episodes", "64", "--per_device_train_batch_size", "16", "--num_mini_batches", "2",
            "--num_ppo_epochs", "2", "--response_length", "12", "--temperature", "0.7", "--learning_rate", "3e-4",
            "--kl_coef", "0.05", "--missing_eos_penalty", "1.0"],
    "grpo": ["--reward_fn", "same_numbers_reward:letter_fraction", "--dataset_name", str(DATA / "prompts.jsonl"),
             "--eval_dataset_name", str(DATA / "prompts_eval.jsonl"), "--num_eval_prompts", "16",
             "--num_generations", "4", "--per_device_train_batch_size", "16", "--max_completion_length", "12",
             "--max_steps", "4", "--learning_rate", "1e-3", "--beta", "0.04", "--loss_type", "dapo",
             "--num_iterations", "2"],
    "rloo": ["--reward_fn", "same_numbers_reward:letter_fraction", "--dataset_name", str(DATA / "prompts.jsonl"),
             "--eval_dataset_name", str(DATA / "prompts_eval.jsonl"), "--num_eval_prompts", "16",
             "--num_generations", "4", "--per_device_train_batch_size", "16", "--max_completion_length", "12",
             "--max_steps", "4", "--learning_rate", "1e-3", "--beta", "0.05", "--num_iterations", "2"],
}


def run(command: str, model: Path, out: Path) -> list[dict]:
    from rlhf.cli import main

    code = main([command, "--model_name_or_path", str(model), "--output_dir", str(out), *RUNS[command], *QUIET])
    assert code == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def tiny_model(path: Path) -> Path:
    from rlhf.tiny_model import main

    main(["--output_dir", str(path), "--vocab_size", "300"])
    return path


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith(IGNORED)} for row in rows]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("same") / "tiny")


@pytest.mark.parametrize("command", sorted(RUNS))
def test_metrics_equal_the_recorded_run(command, model, tmp_path):
    expected = comparable([json.loads(x) for x in (REFERENCE / f"{command}.jsonl").read_text().splitlines() if x.strip()])
    got = comparable(run(command, model, tmp_path / command))
    assert len(got) == len(expected)
    for step, (row, want) in enumerate(zip(got, expected), start=1):
        assert sorted(row) == sorted(want), f"{command} row {step}: metric names changed"
        for key, value in want.items():
            if isinstance(value, float) and isinstance(row[key], float):
                assert math.isclose(row[key], value, rel_tol=1e-4, abs_tol=1e-6), f"{command} row {step} {key}: {row[key]} != {value}"
            else:
                assert row[key] == value, f"{command} row {step} {key}"


if __name__ == "__main__" and "--record" in sys.argv:
    import os
    import tempfile

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    REFERENCE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        base = tiny_model(Path(tmp) / "tiny")
        for name in sorted(RUNS):
            rows = run(name, base, Path(tmp) / name)
            (REFERENCE / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            print(f"recorded {len(rows)} rows of rlhf {name}")
