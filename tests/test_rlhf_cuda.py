"""What only a GPU can check: bf16 autocast and gradient checkpointing on CUDA. GPU-only by nature:
skipped on machines without CUDA (scripts/gpu_check.sh runs them on one)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")
pytest_plugins = ["rlhf_fixtures"]

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "rlhf" / "data"


def test_hardware_defaults_pick_half_precision_and_checkpointing_on_cuda():
    from rlhf.utils import hardware_defaults

    hw = hardware_defaults()
    assert hw["use_cpu"] is False and hw["gradient_checkpointing"] is True
    assert hw["bf16"] == torch.cuda.is_bf16_supported() and hw["fp16"] == (not hw["bf16"])


def test_gradient_checkpointing_gives_the_same_gradients_on_cuda(rlhf_tiny_model):
    """The checkpointed backward recomputes the activations: same loss and gradients as the plain one."""
    from transformers import AutoModelForCausalLM

    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(rlhf_tiny_model).cuda().train()
        for module in model.modules():  # dropout would differ between the two passes
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
        ids = torch.randint(8, model.config.vocab_size, (4, 24), generator=torch.Generator().manual_seed(1)).cuda()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads.append((loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss0, g0), (loss1, g1) = grads
    assert loss1 == pytest.approx(loss0, rel=1e-5)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_autocast_matmul_runs_in_bf16_with_fp32_master_weights():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(mixed_precision="bf16")
    layer = torch.nn.Linear(16, 16).cuda()
    with accelerator.autocast():
        out = layer(torch.randn(2, 16, device="cuda"))
    assert out.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32
    AcceleratorState._reset_state(reset_partial_state=True)


def test_ppo_in_bf16_on_cuda_starts_at_kl_zero_and_runs(rlhf_tiny_model, tmp_path):
    """bf16 autocast with fp32 master weights; the rollout logprobs are recomputed with a full forward,
    so the first update's KL to the (identical) reference is ~0 despite bf16 KV-cache drift."""
    from rlhf.ppo import main

    out = tmp_path / "ppo"
    summary = main([
        "--model_name_or_path", str(rlhf_tiny_model), "--reward_fn", "rlhf.task:gold_reward",
        "--dataset_name", str(DATA / "prompts.jsonl"), "--eval_dataset_name", str(DATA / "prompts_eval.jsonl"),
        "--output_dir", str(out), "--total_episodes", "64", "--per_device_train_batch_size", "16",
        "--response_length", "16", "--num_eval_prompts", "32", "--num_sample_generations", "0", "--disable_tqdm",
    ])
    assert summary["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert summary["world_size"] == 1 and summary["distributed_type"] == "NO"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert abs(rows[0]["objective/kl"]) < 1e-2, rows[0]
    assert all(math.isfinite(v) for row in rows for v in row.values() if isinstance(v, float))


@pytest.mark.slow
def test_sft_in_bf16_on_cuda_with_gradient_checkpointing_learns(rlhf_tiny_model, tmp_path):
    from rlhf.sft import main

    summary = main([
        "--model_name_or_path", str(rlhf_tiny_model), "--dataset_name", str(DATA / "sft.jsonl"),
        "--eval_dataset_name", str(DATA / "sft_eval.jsonl"), "--output_dir", str(tmp_path / "sft"),
        "--max_steps", "40", "--per_device_train_batch_size", "32", "--learning_rate", "3e-3",
        "--logging_steps", "10", "--disable_tqdm", "true", "--report_to", "none",
    ])
    assert summary["precision"] in ("bf16", "fp16")
    assert summary["eval_loss"] < summary["eval_loss_before"] - 1.0, summary
