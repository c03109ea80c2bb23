"""Data parallelism of `rlhf ppo`: two CPU processes with b sequences each take the same optimizer step as
one process with 2b (same seed, same data); the global whitening and generation helpers of
rlhf.distributed; the shipped accelerate configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from rlhf.distributed import masked_whiten_across_processes, prepare_frozen_model, unwrap_for_generation
from rlhf.tiny_model import TinyModelConfig, build_tiny_model
from safetensors import safe_open
from safetensors.torch import load_file

from classic_rl.core.ppo import masked_whiten

pytestmark = pytest.mark.slow  # multi-process runs: part of `make test`, not `make test-fast`

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "accelerate"
STEP_SCRIPT = REPO / "tests" / "rlhf_dp_step.py"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny_dp")
    model, tokenizer = build_tiny_model(TinyModelConfig(
        output_dir=str(path), vocab_size=300, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=2,
    ))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    return load_file(str(path)), metadata


@pytest.fixture(scope="module")
def dp_steps(tiny, tmp_path_factory) -> Path:
    """One PPO step per case by one process and by two (cpu_2proc.yaml), launched concurrently (most of
    their time is Python imports, one thread each). Cases (see tests/rlhf_dp_step.py):
    ``mixed`` -- no accumulation, per-row lengths differ; ``equal`` -- equal lengths, and the two-process
    run accumulates 2 micro batches per optimizer step."""
    out = tmp_path_factory.mktemp("dp_steps")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "true",
           "PYTHONPATH": str(REPO)}
    flags = ["--model", str(tiny), "--global_batch", "8", "--num_ppo_epochs", "2"]
    (out / "one").mkdir()
    (out / "two").mkdir()
    one = [sys.executable, str(STEP_SCRIPT), *flags, "--out_dir", str(out / "one"), "--world_size", "1",
           "--case", "mixed:1:mixed", "--case", "equal:1:equal"]
    two = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml"),
           "--main_process_port", "0", str(STEP_SCRIPT), *flags, "--out_dir", str(out / "two"), "--world_size", "2",
           "--case", "mixed:1:mixed", "--case", "equal:2:equal"]
    procs = [subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in (one, two)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, textwrap.shorten(err[-3000:], 3000)
    return out


def _assert_same_step(one: Path, two: Path) -> dict[str, str]:
    """The 2-process step equals the 1-process step (weights and rank-averaged metrics); returns the
    2-process metadata."""
    w1, meta1 = _read(one)
    w2, meta2 = _read(two)
    assert (meta1["world_size"], meta2["world_size"]) == ("1", "2")
    assert float(meta1["max_change"]) > 1e-3  # two AdamW steps at lr 1e-3 really changed the weights
    assert float(meta2["rank_spread"]) == 0.0  # both ranks hold the same weights after the step
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-5, atol=1e-6, msg=name)
    # The logged statistics (averaged over ranks) are the global ones too.
    m1, m2 = json.loads(meta1["metrics"]), json.loads(meta2["metrics"])
    for key in ("objective/kl", "objective/scores", "loss/policy_avg", "loss/value_avg", "policy/approxkl_avg"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-7), key
    return meta2


@pytest.mark.slow
def test_two_processes_take_the_same_ppo_step_as_one_process_with_the_whole_batch(dp_steps):
    _assert_same_step(dp_steps / "one" / "mixed.safetensors", dp_steps / "two" / "mixed.safetensors")


@pytest.mark.slow
def test_two_processes_accumulating_two_micro_batches_match_one_process_without(dp_steps):
    meta = _assert_same_step(dp_steps / "one" / "equal.safetensors", dp_steps / "two" / "equal.safetensors")
    assert meta["gradient_accumulation_steps"] == "2"
    # DDP all-reduced once per optimizer step (2 epochs x 1 step), not once per micro batch (4): as
    # often as the run without accumulation (same model, same buckets).
    mixed = _read(dp_steps / "two" / "mixed.safetensors")[1]
    assert int(mixed["allreduce_calls"]) >= 2 and int(meta["allreduce_calls"]) == int(mixed["allreduce_calls"])


def test_global_whitening_in_one_process_matches_the_core_whitening():
    torch.manual_seed(0)
    x = torch.randn(5, 7)
    mask = (torch.rand(5, 7) > 0.3).float()
    for shift_mean in (True, False):
        expected = masked_whiten(x, mask, shift_mean=shift_mean)
        torch.testing.assert_close(masked_whiten_across_processes(x, mask, shift_mean=shift_mean), expected)
    out = masked_whiten_across_processes(x, mask)
    assert out[mask == 0].abs().max() == 0
    assert out[mask == 1].mean().abs() < 1e-6 and out[mask == 1].std() == pytest.approx(1.0, abs=1e-5)


def test_generation_unwrap_and_frozen_models_on_a_plain_accelerator():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(3, 2))
    with unwrap_for_generation(model, accelerator) as unwrapped:
        assert isinstance(unwrapped, torch.nn.Linear)
    frozen = prepare_frozen_model(torch.nn.Linear(3, 2), accelerator, dtype=torch.float64)
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert frozen.weight.dtype == torch.float64 and frozen.weight.device.type == "cpu"


@pytest.mark.parametrize(("name", "kind", "processes"), [
    ("single_gpu", "NO", 1), ("multi_gpu", "MULTI_GPU", 8), ("deepspeed_zero2", "DEEPSPEED", 8),
    ("deepspeed_zero3", "DEEPSPEED", 8), ("fsdp", "FSDP", 8), ("multi_node", "MULTI_GPU", 16),
    ("cpu_2proc", "MULTI_GPU", 2),
])
def test_shipped_accelerate_configs_load(name, kind, processes):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.num_processes == processes
    if name.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
        # rlhf ppo's defaults (--gradient_accumulation_steps 1, --max_grad_norm 1.0), checked at its start
        assert config.deepspeed_config["gradient_accumulation_steps"] == 1
        assert config.deepspeed_config["gradient_clipping"] == 1.0
    if name == "multi_node":
        assert config.num_machines == 2 and config.main_process_ip and config.main_process_port
    if name == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2
