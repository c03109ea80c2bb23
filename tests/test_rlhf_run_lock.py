"""One writer per rlhf output folder (`rlhf.common.checkpoints.locked_output_dir`, an flock on OUT/.lock held
by the main process for the whole command): two `rlhf sft --output_dir twin` started at once leave one run's
model, checkpoints and log, and the other exits 2 with one line naming the folder and the holder's PID; the
same for `rlhf ppo`, a resume and the pipeline; a failed start leaves no folder (and no lock file) behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from classic_rl.safe_io import LOCK_FILE, lock_holder
from rlhf.cli import main as rlhf_main

pytest_plugins = [f"{__package__}.rlhf_fixtures" if __package__ else "rlhf_fixtures"]  # rlhf_tiny_model

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "rlhf" / "data"
HOLD = "import sys, time; from classic_rl.safe_io import lock_run_dir\nwith lock_run_dir(sys.argv[1]):\n    time.sleep(120)\n"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def _wait_for_holder(folder: Path, pid: int, proc: subprocess.Popen, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while lock_holder(folder) != pid:
        assert proc.poll() is None, f"process {pid} ended (exit {proc.returncode}) before it locked {folder}"
        assert time.monotonic() < deadline, f"process {pid} never took the lock of {folder}"
        time.sleep(0.05)


@pytest.fixture()
def holder(tmp_path):
    """A process holding the lock of tmp_path/twin (as a running command would), killed at the end."""
    folder = tmp_path / "twin"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=ENV)
    _wait_for_holder(folder, proc.pid, proc)
    yield folder, proc.pid
    proc.kill()
    proc.wait()


def _sft_flags(model: Path, out: Path, seed: int, learning_rate: str) -> list[str]:
    return ["--model_name_or_path", str(model), "--dataset_name", str(DATA / "sft.jsonl"), "--output_dir", str(out),
            "--max_steps", "8", "--save_steps", "4", "--per_device_train_batch_size", "8", "--logging_steps", "1",
            "--learning_rate", learning_rate, "--seed", str(seed), "--eval_holdout_fraction", "0",
            "--disable_tqdm", "true", "--report_to", "none"]


def _ppo_flags(model: Path, out: Path) -> list[str]:
    return ["--model_name_or_path", str(model), "--dataset_name", str(DATA / "reverse_prompts.jsonl"),
            "--eval_dataset_name", str(DATA / "reverse_prompts_eval.jsonl"), "--reward_fn", "rlhf.verifiable:reward",
            "--output_dir", str(out), "--total_episodes", "16", "--per_device_train_batch_size", "8",
            "--response_length", "6", "--num_eval_prompts", "8", "--disable_tqdm", "true",
            "--num_sample_generations", "0", "--report_to", "none"]


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _in_use(folder: Path, pid: int) -> str:
    return f"--output_dir {folder} is in use by another run (PID {pid} holds {folder.resolve() / LOCK_FILE})"


def _sft(model: Path, out: Path, seed: int, learning_rate: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rlhf", "sft", *_sft_flags(model, out, seed, learning_rate)],
                            env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_sft_runs_on_one_folder_one_writes_the_other_is_refused_naming_the_holder(rlhf_tiny_model, tmp_path):
    twin = tmp_path / "twin"
    first = _sft(rlhf_tiny_model, twin, seed=0, learning_rate="3e-3")
    try:
        _wait_for_holder(twin, first.pid, first)
        first.send_signal(signal.SIGSTOP)  # surely still running while the second starts
        second = _sft(rlhf_tiny_model, twin, seed=7, learning_rate="1e-2")
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2
        assert _in_use(twin, first.pid) in _error_line(err)
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    # The folder is the first run's alone: its settings, its checkpoints, one log with each step once.
    config = yaml.safe_load((twin / "config.yaml").read_text())
    assert config["training"]["seed"] == 0 and float(config["training"]["learning_rate"]) == 3e-3
    steps = [row["step"] for row in map(json.loads, (twin / "metrics.jsonl").read_text().splitlines())
             if "loss" in row]
    assert steps == list(range(1, 9))
    assert sorted(p.name for p in twin.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    assert lock_holder(twin) is None  # released at exit


@pytest.mark.slow
def test_two_sft_runs_started_at_once_exactly_one_succeeds(rlhf_tiny_model, tmp_path):
    twin = tmp_path / "twin"
    runs = [_sft(rlhf_tiny_model, twin, seed=0, learning_rate="3e-3"),
            _sft(rlhf_tiny_model, twin, seed=7, learning_rate="1e-2")]
    results = [(proc.pid, *proc.communicate(timeout=300), proc.returncode) for proc in runs]
    codes = sorted(code for *_, code in results)
    assert codes == [0, 2], [err[-1500:] for _, _, err, _ in results]
    (winner_pid, _, _, _), = [r for r in results if r[3] == 0]
    (_, _, loser_err, _), = [r for r in results if r[3] == 2]
    # The loser found the winner at work (its PID) or, if it came late, the winner's finished run.
    line = _error_line(loser_err)
    assert _in_use(twin, winner_pid) in line or "already exists and is not empty" in line
    winner_seed = 0 if results[0][3] == 0 else 7
    assert yaml.safe_load((twin / "config.yaml").read_text())["training"]["seed"] == winner_seed
    steps = [row["step"] for row in map(json.loads, (twin / "metrics.jsonl").read_text().splitlines())
             if "loss" in row]
    assert steps == list(range(1, 9))


def test_ppo_on_a_folder_in_use_exits_2_naming_the_holder_and_touches_nothing(holder, tmp_path, capsys):
    folder, pid = holder
    model = tmp_path / "no-model-needed"  # refused before any loading
    assert rlhf_main(["ppo", *_ppo_flags(model, folder)]) == 2
    assert _in_use(folder, pid) in _error_line(capsys.readouterr().err)
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]
    # a resume of the run in that folder, and --overwrite_output_dir, are refused the same way
    assert rlhf_main(["ppo", *_ppo_flags(model, folder), "--overwrite_output_dir"]) == 2
    assert _in_use(folder, pid) in _error_line(capsys.readouterr().err)


def test_sft_and_the_pipeline_on_a_folder_in_use_exit_2(holder, rlhf_tiny_model, tmp_path, capsys):
    folder, pid = holder
    assert rlhf_main(["sft", *_sft_flags(rlhf_tiny_model, folder, 0, "3e-3")]) == 2
    assert _in_use(folder, pid) in _error_line(capsys.readouterr().err)
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load((REPO / "configs" / "rlhf" / "tiny.yaml").read_text()),
                                      "output_dir": str(folder)}))
    assert rlhf_main(["pipeline", "--config", str(config)]) == 2
    assert _in_use(folder, pid) in _error_line(capsys.readouterr().err)
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]


def test_a_failed_start_leaves_no_folder_and_a_finished_run_releases_the_lock(rlhf_tiny_model, tmp_path, capsys):
    missing = tmp_path / "failed"
    assert rlhf_main(["ppo", *_ppo_flags(tmp_path / "no-such-model", missing)]) == 2
    capsys.readouterr()
    assert not missing.exists()  # neither the folder nor its lock file

    out = tmp_path / "tiny"
    assert rlhf_main(["tiny-model", "--output_dir", str(out), "--vocab_size", "300", "--hidden_size", "32",
                      "--intermediate_size", "64", "--num_hidden_layers", "1"]) == 0
    assert lock_holder(out) is None and (out / LOCK_FILE).read_text().strip() == str(os.getpid())
    probe = subprocess.run([sys.executable, "-c", HOLD.replace("120", "0"), str(out)], env=ENV, timeout=120)
    assert probe.returncode == 0  # another process can take it now
