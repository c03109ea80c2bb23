"""LM agents' runs (`--env`) that stop: a run SIGKILLed after a checkpoint and resumed ends with the weights
and metrics of the uninterrupted run (the env-seed position and every RNG are in the checkpoint); two
processes (`accelerate launch`, gloo on the CPU) play their share of each update's episodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
VOLATILE = ("time/", "eps")

pytestmark = pytest.mark.slow  # subprocess runs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny"), max_position_embeddings=512)


def _flags(command: str, tiny: Path, out: Path) -> list[str]:
    """4 updates, a checkpoint after the second, 3-turn episodes whose rewards vary."""
    common = ["--model_name_or_path", str(tiny), "--output_dir", str(out), "--env", "text_envs:KillableLetters",
              "--max_turns", "5",
              "--num_eval_prompts", "4", "--seed", "0", "--learning_rate", "3e-3", "--disable_tqdm",
              "--num_sample_generations", "0", "--use_cpu", "--report_to", "none", "--save_steps", "2"]
    if command == "ppo":
        return [*common, "--total_episodes", "32", "--per_device_train_batch_size", "4", "--num_mini_batches", "2",
                "--response_length", "4", "--num_ppo_epochs", "2", "--missing_eos_penalty", "0.1"]
    return [*common, "--num_generations", "4", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
            "--max_completion_length", "4", "--max_steps", "4", "--num_iterations", "2", "--beta", "0.05"]


def _run(argv: list[str], kill_after: Path | None = None, processes: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{TESTS}"}
    env.pop("KILL_AFTER", None)
    if kill_after is not None:
        env["KILL_AFTER"] = str(kill_after)
    if processes == 1:
        cmd = [sys.executable, "-m", "rlhf", *argv]
    else:
        env["ACCELERATE_USE_CPU"] = "true"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "configs/accelerate/cpu_2proc.yaml"), "-m", "rlhf", *argv]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def _metrics(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


@pytest.mark.parametrize("command", ["grpo", "ppo"])
def test_a_killed_env_run_resumes_to_the_uninterrupted_numbers(command, tiny, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    done = _run([command, *_flags(command, tiny, whole)])
    assert done.returncode == 0, textwrap.shorten(done.stderr[-3000:], 3000)
    killed = _run([command, *_flags(command, tiny, cut)], kill_after=cut / "checkpoint-2")
    assert killed.returncode == -9 and (cut / "checkpoint-2").is_dir() and not (cut / "summary.json").exists()
    state = json.loads((cut / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["env_position"] == 2 * (8 // (4 if command == "grpo" else 1))  # groups handed out in 2 updates
    resumed = _run([command, *_flags(command, tiny, cut), "--resume_from_checkpoint", "true"])
    assert resumed.returncode == 0, textwrap.shorten(resumed.stderr[-3000:], 3000)
    assert _metrics(cut) == _metrics(whole)
    assert any(r["env/return"] != 0 for r in _metrics(whole))  # the rewards the numbers depend on vary
    a, b = load_file(whole / "model.safetensors"), load_file(cut / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary_a, summary_b = (json.loads((d / "summary.json").read_text()) for d in (whole, cut))
    assert summary_b["return_mean_after"] == summary_a["return_mean_after"]
    assert summary_b["resumed_from"].endswith("checkpoint-2")


def test_two_processes_play_their_share_of_the_episodes(tiny, tmp_path):
    out = tmp_path / "two"
    flags = _flags("grpo", tiny, out)
    flags = flags[: flags.index("--save_steps")] + flags[flags.index("--save_steps") + 2 :]
    result = _run(["grpo", *flags], processes=2)
    assert result.returncode == 0, textwrap.shorten(result.stderr[-3000:], 3000)
    summary = json.loads((out / "summary.json").read_text())
    # 2 ranks x 8 episodes = 4 reset seeds x 4 episodes per update: a group spans both ranks
    assert summary["world_size"] == 2 and summary["episodes"] == 4 * 16 and summary["num_updates"] == 4
    assert summary["num_eval_episodes"] == 4 and summary["return_mean_after"] is not None
    rows = _metrics(out)
    assert len(rows) == 4 and all(r["env/turns"] >= 1 for r in rows)
    assert summary["env_steps"] == round(sum(r["env/steps"] for r in rows) * 2)
