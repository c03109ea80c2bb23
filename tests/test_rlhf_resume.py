"""Checkpoints of `rlhf ppo` / `rlhf grpo`: a run killed (SIGKILL) after a checkpoint and resumed ends with the
weights and metrics of the uninterrupted run, on one process and on two; the output folder guard; a
diverging run stops with a message and keeps its last good checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rlhf.tiny_model import TinyModelConfig, build_tiny_model
from safetensors.torch import load_file

from classic_rl.safe_io import UserError

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "rlhf" / "data"

pytestmark = pytest.mark.slow  # multi-process runs: part of `make test`, not `make test-fast`

# A dense reward, and a way to die mid-run: once the folder named by KILL_AFTER exists (a checkpoint the
# run has just written), the next reward call SIGKILLs its own process (no cleanup, like a power cut).
REWARD_MODULE = '''
import os, signal

def vowels(prompts, completions):
    marker = os.environ.get("KILL_AFTER")
    if marker and os.path.isdir(marker):
        os.kill(os.getpid(), signal.SIGKILL)
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]
'''
VOLATILE = ("time/", "eps")  # wall-clock metrics differ between runs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    model, tokenizer = build_tiny_model(TinyModelConfig(output_dir=str(root / "tiny"), vocab_size=300, hidden_size=32,
                                                        intermediate_size=64, num_hidden_layers=2, num_attention_heads=2))
    model.save_pretrained(root / "tiny")
    tokenizer.save_pretrained(root / "tiny")
    (root / "resume_rewards.py").write_text(REWARD_MODULE)
    return root


def _flags(command: str, root: Path, out: Path, processes: int = 1) -> list[str]:
    """4 updates whatever the number of processes, a checkpoint after the second."""
    common = ["--model_name_or_path", str(root / "tiny"), "--dataset_name", str(DATA / "prompts.jsonl"),
              "--eval_dataset_name", str(DATA / "prompts_eval.jsonl"), "--output_dir", str(out),
              "--reward_fn", f"{root / 'resume_rewards.py'}:vowels", "--num_eval_prompts", "8", "--seed", "0",
              "--learning_rate", "3e-3", "--disable_tqdm", "--num_sample_generations", "0", "--use_cpu",
              "--save_steps", "2"]
    if command == "ppo":
        return [*common, "--total_episodes", str(64 * processes), "--per_device_train_batch_size", "8", "--num_mini_batches", "2",
                "--response_length", "6", "--num_ppo_epochs", "2", "--adaptive_kl", "--kl_target", "0.1"]
    return [*common, "--num_generations", "4", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2",
            "--max_completion_length", "6", "--max_steps", "4", "--num_iterations", "2", "--beta", "0.05"]


def _run(command: str, flags: list[str], processes: int, kill_after: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("KILL_AFTER", None)
    if kill_after is not None:
        env["KILL_AFTER"] = str(kill_after)
    if processes == 1:
        cmd = [sys.executable, "-m", "rlhf", command, *flags]
    else:
        env["ACCELERATE_USE_CPU"] = "true"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "configs/accelerate/cpu_2proc.yaml"), "-m", "rlhf", command, *flags]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def _finish(command: str, flags: list[str], processes: int) -> None:
    """A run to the end: in this process when it has one process (saves the start-up), else launched."""
    if processes == 1:
        import importlib

        importlib.import_module(f"rlhf.{command}").main(flags)
        return
    done = _run(command, flags, processes)
    assert done.returncode == 0, textwrap.shorten(done.stderr[-3000:], 3000)


def _metrics(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("command, processes", [("ppo", 1), ("ppo", 2), ("grpo", 1)])
def test_killed_and_resumed_run_ends_like_the_uninterrupted_run(setup, tmp_path, command, processes):
    full, broken = tmp_path / "full", tmp_path / "broken"
    _finish(command, _flags(command, setup, full, processes), processes)

    killed = _run(command, _flags(command, setup, broken, processes), processes, kill_after=broken / "checkpoint-2")
    assert killed.returncode != 0 and (broken / "checkpoint-2").is_dir()
    assert not (broken / "model.safetensors").exists() and not (broken / "summary.json").exists()
    _finish(command, [*_flags(command, setup, broken, processes), "--resume_from_checkpoint", "true"], processes)

    summary, again = (json.loads((d / "summary.json").read_text()) for d in (full, broken))
    assert summary["world_size"] == again["world_size"] == processes
    assert again["resumed_from"].endswith("checkpoint-2") and again["episodes"] == summary["episodes"]
    a, b = load_file(full / "model.safetensors"), load_file(broken / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    rows_a, rows_b = _metrics(full), _metrics(broken)
    assert len(rows_a) == len(rows_b) == summary["num_updates"] == 4
    for ra, rb in zip(rows_a, rows_b):
        assert ra.keys() == rb.keys()
        for key in ra:
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), (ra["step"], key)
    assert again["reward_mean_after"] == pytest.approx(summary["reward_mean_after"], abs=1e-6)
    assert again["reward_mean_before"] == summary["reward_mean_before"]
    if command == "ppo":  # the adaptive KL coefficient came back from the checkpoint
        assert again["kl_coef_final"] == pytest.approx(summary["kl_coef_final"])


def test_non_empty_output_dir_is_refused_and_left_alone(setup, tmp_path):
    from rlhf.ppo import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists and is not empty"):
        main(_flags("ppo", setup, out))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_divergence_stops_with_a_message_and_keeps_the_last_good_checkpoint(setup, tmp_path):
    out = tmp_path / "out"
    flags = _flags("ppo", setup, out)
    flags[flags.index("--learning_rate") + 1] = "1e30"
    flags[flags.index("--save_steps") + 1] = "1"
    flags += ["--num_mini_batches", "1", "--num_ppo_epochs", "1"]  # one optimizer step per update
    result = _run("ppo", flags, 1)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "non-finite" in message or "gradient norm" in message, message
    assert "at update 2" in message, message
    assert (out / "checkpoint-1").is_dir() and not (out / "checkpoint-2").exists()
    assert not (out / "model.safetensors").exists()


def test_resume_under_another_sharding_is_refused_with_one_line(setup, tmp_path):
    """A checkpoint holds the optimizer state in its backend's layout (DDP: one file; DeepSpeed ZeRO: one
    partition per rank): resuming it under another accelerate config is refused before anything loads."""
    from rlhf.ppo import main

    out = tmp_path / "out"
    flags = _flags("ppo", setup, out)
    flags[flags.index("--total_episodes") + 1] = "32"  # 2 updates, a checkpoint after the first
    flags[flags.index("--save_steps") + 1] = "1"
    main(flags)
    state_file = out / "checkpoint-1" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["distribution"] == {"distributed_type": "NO", "world_size": 1}
    state["distribution"] = {"distributed_type": "DEEPSPEED", "zero_stage": 3, "world_size": 1}
    state_file.write_text(json.dumps(state))
    with pytest.raises(UserError, match=r"saved under DeepSpeed ZeRO-3, now no sharding \(DDP or one process\); resume with the accelerate config") as err:
        main([*flags, "--resume_from_checkpoint", str(out / "checkpoint-1")])
    assert "\n" not in str(err.value)


def test_resume_with_settings_that_change_the_run_is_refused_in_one_line(setup, tmp_path, capsys):
    """The checkpoint keeps the resolved config; a resume that changes what the run computes (learning rate,
    KL coefficient, seed, reward function) is refused listing every difference; logging, saving and display
    settings may change; a checkpoint without saved settings (earlier versions) resumes with a note."""
    from rlhf.ppo import main

    out = tmp_path / "out"
    flags = _flags("ppo", setup, out)
    flags[flags.index("--total_episodes") + 1] = "32"  # 2 updates, a checkpoint after the first
    flags[flags.index("--save_steps") + 1] = "1"
    main(flags)
    state_file = out / "checkpoint-1" / "trainer_state.json"
    assert json.loads(state_file.read_text())["config"]["learning_rate"] == 3e-3
    resume = [*flags, "--resume_from_checkpoint", str(out / "checkpoint-1"), "--output_dir", str(tmp_path / "again")]

    with pytest.raises(UserError, match=r"saved with other settings \(learning_rate 0.003 -> 0.01\)") as err:
        main([*resume, "--learning_rate", "1e-2"])
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"\(kl_coef 0.05 -> 0.5, seed 0 -> 7\); a resumed run must be the saved run"):
        main([*resume, "--kl_coef", "0.5", "--seed", "7"])
    other = setup / "other_rewards.py"
    other.write_text("def vowels(prompts, completions):\n    return [0.0 for _ in completions]\n")
    with pytest.raises(UserError, match=r"\(reward_fn .*resume_rewards.py:vowels.* -> .*other_rewards.py:vowels"):
        main([*resume, "--reward_fn", f"{other}:vowels"])

    summary = main([*resume, "--logging_steps", "2", "--save_total_limit", "1", "--report_to", "tensorboard",
                    "--num_sample_generations", "1"])  # harmless: accepted
    assert summary["resumed_from"] == str(out / "checkpoint-1")

    state = json.loads(state_file.read_text())
    del state["config"]  # as written by an earlier version
    state_file.write_text(json.dumps(state))
    capsys.readouterr()
    main([*flags, "--resume_from_checkpoint", str(out / "checkpoint-1"), "--output_dir", str(tmp_path / "old")])
    assert "did not keep the run's settings; resuming with the flags given now, unchecked" in capsys.readouterr().err


def test_sft_resume_with_other_settings_is_refused_and_same_settings_resume(setup, tmp_path, capsys):
    from rlhf.sft import main

    out = tmp_path / "sft"
    flags = ["--model_name_or_path", str(setup / "tiny"), "--dataset_name", str(DATA / "sft.jsonl"),
             "--output_dir", str(out), "--max_steps", "4", "--save_steps", "2", "--per_device_train_batch_size", "4",
             "--learning_rate", "3e-3", "--seed", "0", "--report_to", "none", "--disable_tqdm", "true"]
    main(flags)
    checkpoint = out / "checkpoint-2"
    assert json.loads((checkpoint / "rlhf_settings.json").read_text())["training"]["learning_rate"] == 3e-3
    resume = [*flags, "--resume_from_checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "again")]
    with pytest.raises(UserError, match=r"saved with other settings \(learning_rate 0.003 -> 0.01, seed 0 -> 7\)"):
        main([*resume, "--learning_rate", "1e-2", "--seed", "7"])
    assert main([*resume, "--logging_steps", "1", "--save_total_limit", "1"])["resumed_from"] == str(checkpoint)

    (checkpoint / "rlhf_settings.json").unlink()  # a checkpoint of an earlier version
    capsys.readouterr()
    main([*flags, "--resume_from_checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "old")])
    assert "did not keep the run's settings" in capsys.readouterr().err
