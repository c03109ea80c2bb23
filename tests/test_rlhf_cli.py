"""The `rlhf` command line: dispatch, clear errors, and a 2-process run under `accelerate launch`."""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys

import pytest

from rlhf import cli

pytest_plugins = [f"{__package__}.rlhf_fixtures" if __package__ else "rlhf_fixtures"]
pytest.register_assert_rewrite(pytest_plugins[0])
fixtures = importlib.import_module(pytest_plugins[0])  # its flag helpers


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("tiny-model", "sft", "reward", "ppo", "grpo", "rloo", "pipeline"):
        assert command in out


def test_python_dash_m_rlhf_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "rlhf", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "pipeline" in result.stdout


def test_unknown_command_is_rejected_with_the_valid_names(capsys):
    assert cli.main(["train"]) == 2
    assert "unknown command 'train'; valid: tiny-model, sft, reward, ppo, grpo, rloo, reinforce_pp, rollouts, pipeline, label, vllm-serve" in capsys.readouterr().err


def test_a_command_whose_module_is_missing_says_so(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "ppo", ("rlhf.not_installed_here", "PPO"))
    assert cli.main(["ppo", "--output_dir", "x"]) == 2
    assert "`rlhf ppo` is not available in this installation" in capsys.readouterr().err


def test_bad_input_prints_an_error_instead_of_a_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = cli.main(["sft", "--model_name_or_path", "someone/not-a-model", "--dataset_name", "x.jsonl",
                   "--output_dir", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "rlhf sft: error:" in err and "'someone/not-a-model': no such local directory" in err
    assert "cannot be reached offline" in err and "Traceback" not in err


def test_tiny_model_command_writes_a_loadable_model(tmp_path, capsys):
    assert cli.main(["tiny-model", "--output_dir", str(tmp_path / "m"), "--hidden_size", "32",
                     "--intermediate_size", "64", "--num_hidden_layers", "1", "--vocab_size", "400"]) == 0
    assert "parameters" in capsys.readouterr().out
    from rlhf.models import load_causal_lm, load_tokenizer

    load_causal_lm(str(tmp_path / "m"), load_tokenizer(str(tmp_path / "m")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_sft_under_accelerate_launch(rlhf_tiny_model, tmp_path):
    out = tmp_path / "sft2"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        "-m", "rlhf", "sft",
        "--model_name_or_path", str(rlhf_tiny_model), "--dataset_name", str(fixtures.DATA / "sft_eval.jsonl"),
        "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--logging_steps", "1", "--eval_holdout_fraction", "0", *fixtures.QUIET,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2  # `--cpu --num_processes 2` would silently start one process
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2]  # written by rank 0 only
    assert (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft2"]  # one model, no partial directory
