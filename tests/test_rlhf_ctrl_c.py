"""Ctrl-C and SIGTERM in `rlhf ppo`, `rlhf sft` and the pipeline's steps: the run stops after the update (or
optimizer step) under way, saves a checkpoint, says in one line how to resume, exits 130 (143 for SIGTERM);
the resumed run ends with the weights and metrics of the uninterrupted one. A second Ctrl-C stops at once with
one line. The signal comes from outside, to a real process waiting at a known update (tests/rlhf_ctrl_c.py);
under a 2-process `accelerate launch` the whole process group gets it, as from a terminal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rlhf.cli import main as rlhf_main

pytestmark = pytest.mark.slow  # each test starts a Python process that loads torch and transformers

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "rlhf" / "data"
DRIVER = REPO / "tests" / "rlhf_ctrl_c.py"
VOLATILE = ("time/", "eps")  # wall-clock metrics differ between runs, and *runtime, *per_second, *_time
VOWELS = '''
def vowels(prompts, completions):
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]
'''


def _ppo_flags(model: Path, out: Path, rewards: Path) -> list[str]:
    return ["--model_name_or_path", str(model), "--dataset_name", str(DATA / "prompts.jsonl"),
            "--eval_dataset_name", str(DATA / "prompts_eval.jsonl"), "--output_dir", str(out),
            "--reward_fn", f"{rewards}:vowels", "--num_eval_prompts", "8", "--seed", "0", "--learning_rate", "3e-3",
            "--disable_tqdm", "true", "--num_sample_generations", "0", "--report_to", "none",
            "--total_episodes", "32", "--per_device_train_batch_size", "8", "--response_length", "6",
            "--num_ppo_epochs", "1"]


def _sft_flags(model: Path, out: Path) -> list[str]:
    return ["--model_name_or_path", str(model), "--dataset_name", str(DATA / "sft.jsonl"), "--output_dir", str(out),
            "--max_steps", "6", "--per_device_train_batch_size", "8", "--learning_rate", "3e-3", "--logging_steps", "1",
            "--seed", "0", "--disable_tqdm", "true", "--report_to", "none"]


def _interrupt(argv: list[str], at: int, signals: tuple[int, ...]) -> subprocess.CompletedProcess:
    """Run `rlhf ARGV` until update/step `at` begins, send `signals` (each once the last was received), wait
    for the end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    twice = ["--twice"] if len(signals) > 1 else []
    proc = subprocess.Popen([sys.executable, str(DRIVER), str(at), *twice, "--", *argv], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, pending = [], list(signals)
    for line in proc.stdout:
        seen.append(line)
        if pending and ("WAITING FOR CTRL-C" in line or "SIGNAL RECEIVED" in line):
            proc.send_signal(pending.pop(0))
        if not pending:
            break
    out, err = proc.communicate(timeout=600)
    assert not pending, f"the run ended before update {at}: {err[-2000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(seen) + out, err)


def _our_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("rlhf ")]


def _metrics(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not (k.startswith(VOLATILE) or "runtime" in k or "per_second" in k or k.endswith("_time"))}
            for r in rows]


def _same_run(full: Path, resumed: Path) -> None:
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    rows_a, rows_b = _metrics(full), _metrics(resumed)
    assert len(rows_a) == len(rows_b)
    for ra, rb in zip(rows_a, rows_b):
        assert ra.keys() == rb.keys(), ra["step"]
        for key in ra:
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), (ra["step"], key)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    from rlhf.steps.tiny_model import main

    path = tmp_path_factory.mktemp("ctrl_c") / "tiny"
    main(["--output_dir", str(path), "--vocab_size", "300", "--hidden_size", "32", "--intermediate_size", "64",
          "--num_hidden_layers", "2", "--num_attention_heads", "2"])
    return path


@pytest.fixture
def rewards(tmp_path) -> Path:
    path = tmp_path / "ctrl_c_rewards.py"
    path.write_text(VOWELS)
    return path


def test_ctrl_c_during_ppo_saves_stops_in_one_line_and_resumes_to_the_uninterrupted_run(small_model, rewards,
                                                                                         tmp_path):
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    assert rlhf_main(["ppo", *_ppo_flags(small_model, full, rewards)]) == 0

    result = _interrupt(["ppo", *_ppo_flags(small_model, stopped, rewards)], at=2, signals=(signal.SIGINT,))
    assert result.returncode == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr
    assert _our_lines(result.stderr) == [
        f"rlhf ppo: stopped by SIGINT after update 2/4; checkpoint saved in {stopped / 'checkpoint-2'}; "
        "continue with the same command and --resume_from_checkpoint true"]
    assert (stopped / "checkpoint-2" / "trainer_state.json").is_file() and not (stopped / "model.safetensors").exists()

    assert rlhf_main(["ppo", *_ppo_flags(small_model, stopped, rewards), "--resume_from_checkpoint", "true"]) == 0
    _same_run(full, stopped)


def test_sigterm_and_a_second_ctrl_c(small_model, rewards, tmp_path):
    result = _interrupt(["ppo", *_ppo_flags(small_model, tmp_path / "term", rewards)], at=1,
                        signals=(signal.SIGTERM,))
    assert result.returncode == 143, result.stderr[-2000:]
    assert _our_lines(result.stderr)[0].startswith("rlhf ppo: stopped by SIGTERM after update 1/4; checkpoint saved")
    assert (tmp_path / "term" / "checkpoint-1").is_dir()

    twice = _interrupt(["ppo", *_ppo_flags(small_model, tmp_path / "twice", rewards)], at=1,
                       signals=(signal.SIGINT, signal.SIGINT))
    assert twice.returncode == 130, twice.stderr[-2000:]
    assert "Traceback" not in twice.stderr
    assert _our_lines(twice.stderr) == ["rlhf ppo: interrupted at once; checkpoints saved so far are kept: continue "
                                        "with the same command and --resume_from_checkpoint true (or start again "
                                        "without it if there is none)"]


def test_ctrl_c_during_sft_saves_the_step_and_resumes_to_the_uninterrupted_run(small_model, tmp_path):
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    assert rlhf_main(["sft", *_sft_flags(small_model, full)]) == 0
    result = _interrupt(["sft", *_sft_flags(small_model, stopped)], at=3, signals=(signal.SIGINT,))
    assert result.returncode == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert _our_lines(result.stderr) == [
        f"rlhf sft: stopped by SIGINT at step 3/6; checkpoint saved in {stopped / 'checkpoint-3'}; "
        "continue with the same command and --resume_from_checkpoint true"]
    assert (stopped / "checkpoint-3").is_dir() and not (stopped / "summary.json").exists()
    assert rlhf_main(["sft", *_sft_flags(small_model, stopped), "--resume_from_checkpoint", "true"]) == 0
    _same_run(full, stopped)


def _launch(args: list[str]) -> subprocess.Popen:
    """`accelerate launch` of 2 CPU processes (the shipped DDP config) running ARGS, in its own session
    (process group), as a terminal runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO), "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", "0", *args]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_ctrl_c_under_a_two_process_launch_stops_every_rank_after_the_update_and_resumes(small_model, rewards,
                                                                                          tmp_path):
    """A terminal's Ctrl-C reaches the launcher and both ranks, and the launcher passes it on to the ranks
    once more: that echo is not a second Ctrl-C. Every rank stops after update 2, the checkpoint is
    saved, one line says so, exit 130; the resumed launch ends with the uninterrupted launch's weights."""
    def flags(out: Path) -> list[str]:
        return [*_ppo_flags(small_model, out, rewards), "--total_episodes", "64"]  # 4 updates of 2 x 8

    full, stopped = tmp_path / "full", tmp_path / "stopped"
    proc = _launch([str(DRIVER), "2", "--", "ppo", *flags(stopped)])
    ranks, received = [], 0
    for line in proc.stdout:
        if line.startswith("WAITING FOR CTRL-C"):
            ranks.append(int(line.split()[-1]))
            if len(ranks) == 2:
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the launcher and both ranks get it
        elif "SIGNAL RECEIVED" in line:
            received += 1
            if received == 2:  # the launcher's copy, here surely apart from the first (it may merge with it)
                for pid in ranks:
                    os.kill(pid, signal.SIGINT)
                break
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert _our_lines(err) == [  # said once, by rank 0
        f"rlhf ppo: stopped by SIGINT after update 2/4; checkpoint saved in {stopped / 'checkpoint-2'}; "
        "continue with the same command and --resume_from_checkpoint true"]
    assert (stopped / "checkpoint-2" / "trainer_state.json").is_file() and not (stopped / "model.safetensors").exists()

    for out, extra in ((stopped, ["--resume_from_checkpoint", "true"]), (full, [])):
        launch = _launch(["-m", "rlhf", "ppo", *flags(out), *extra])
        _, err = launch.communicate(timeout=600)
        assert launch.returncode == 0, err[-3000:]
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["num_updates"] == 4
    _same_run(full, stopped)
