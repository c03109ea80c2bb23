"""A finished `rlhf ppo` under DeepSpeed ZeRO-3 (2 CPU processes, configs/accelerate/cpu_zero3.yaml, launched
as a user would) exits 0 every time, with no abort at exit and none of the deprecation warnings DeepSpeed's
collectives trigger in torch. Three short launches: the abort at exit came in about one run of two."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # multi-process runs

pytest.importorskip("deepspeed", reason="needs `pip install -e '.[deepspeed]'`")

REPO = Path(__file__).resolve().parents[1]
LAUNCHES = 3


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    from rlhf.steps.tiny_model import main

    path = tmp_path_factory.mktemp("zero3_exit") / "tiny"
    main(["--output_dir", str(path), "--vocab_size", "300", "--hidden_size", "32", "--intermediate_size", "64",
          "--num_hidden_layers", "2", "--num_attention_heads", "2"])
    return path


def test_zero3_ppo_run_exits_zero_without_abort_or_deprecation_noise(small_model, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    env.pop("ACCELERATE_USE_CPU", None)  # the shipped config works as is
    for i in range(LAUNCHES):
        out = tmp_path / f"ppo{i}"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "configs" / "accelerate" / "cpu_zero3.yaml"), "--main_process_port", "0",
               "-m", "rlhf", "ppo", "--model_name_or_path", str(small_model), "--reward_model_path", str(small_model),
               "--dataset_name", str(REPO / "rlhf" / "data" / "prompts.jsonl"), "--output_dir", str(out),
               "--total_episodes", "32", "--per_device_train_batch_size", "8", "--response_length", "6",
               "--save_steps", "1", "--disable_tqdm", "true"]
        proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"launch {i}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        assert "terminate called" not in proc.stderr, proc.stderr[-3000:]
        assert "is deprecated" not in proc.stderr, [line for line in proc.stderr.splitlines() if "deprecated" in line][:4]
        assert (out / "summary.json").is_file() and (out / "model.safetensors").is_file()
