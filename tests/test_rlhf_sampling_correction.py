"""The vLLM sampling correction's arithmetic (rlhf.rl.correction), the weight sync's names, and the
`--use_vllm` refusals; no vLLM needed (tests/test_rlhf_vllm.py runs the engine)."""

from __future__ import annotations

import importlib.util
import math
from types import SimpleNamespace

import pytest
import torch

from rlhf.cli import main as cli_main
from rlhf.rl.correction import apply_importance_weight, reduce_mismatch_metrics, truncated_importance_weight
from rlhf.rl.weight_sync import engine_name


def test_truncated_importance_weight_and_trl_metrics_by_hand():
    train = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    engine = torch.tensor([[-1.0, -3.5, -2.0], [-0.5, -0.7, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the last token is not trained on
    token, sequence, stats = truncated_importance_weight(train, engine, mask, cap=3.0)
    expected = torch.tensor([[1.0, min(math.exp(1.5), 3.0), math.exp(-1.0)], [1.0, math.exp(0.2), 1.0]])
    torch.testing.assert_close(token, expected)
    torch.testing.assert_close(sequence, torch.tensor([[math.exp(0.5)], [math.exp(0.2)]]))
    metrics = reduce_mismatch_metrics(SimpleNamespace(device="cpu", num_processes=1), stats)
    assert metrics["sampling/sampling_logp_difference/mean"] == pytest.approx((0 + 1.5 + 1.0 + 0 + 0.2) / 5)
    assert metrics["sampling/sampling_logp_difference/max"] == pytest.approx(1.5)
    assert metrics["sampling/importance_sampling_ratio/min"] == pytest.approx(math.exp(-1.0))
    assert metrics["sampling/importance_sampling_ratio/max"] == pytest.approx(3.0)
    assert metrics["sampling/importance_sampling_ratio/mean"] == pytest.approx(float(expected[mask > 0].mean()))


def test_losses_are_unchanged_without_a_weight_and_multiplied_with_one():
    per_token, per_sequence = torch.randn(2, 3), torch.randn(2, 1)
    assert apply_importance_weight(per_token, {"mask": torch.ones(2, 3)}) is per_token  # no vLLM: same numbers
    micro = {"importance_weight": torch.full((2, 3), 2.0), "sequence_importance_weight": torch.full((2, 1), 0.5)}
    torch.testing.assert_close(apply_importance_weight(per_token, micro), 2 * per_token)
    torch.testing.assert_close(apply_importance_weight(per_sequence, micro), 0.5 * per_sequence)


def test_peft_and_fsdp_names_become_the_checkpoint_names():
    assert engine_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight") == \
        "model.layers.0.self_attn.q_proj.weight"
    assert engine_name("model.layers.1._checkpoint_wrapped_module.mlp.up_proj.weight") == "model.layers.1.mlp.up_proj.weight"
    assert engine_name("lm_head.weight") == "lm_head.weight"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_use_vllm_without_vllm_is_one_line_naming_the_extra(capsys, tmp_path):
    code = cli_main(["grpo", "--output_dir", str(tmp_path / "o"), "--model_name_or_path", "m", "--dataset_name", "d",
                     "--reward_fn", "a:b", "--use_vllm"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "rl-course-toolkit[vllm]" in err and err.startswith("rlhf grpo: error:")


def test_sleep_mode_call_order_with_a_fake_engine():
    """GPU-only sleep mode, checked without a GPU: the KV cache is woken to sample, everything sleeps after
    (level 2), and the weights are woken and pushed after the update before the next sample."""
    from rlhf.rl.sampler import SamplingSettings
    from rlhf.rl.vllm_engine import EngineOptions, Generation, LocalEngine
    from rlhf.rl.vllm_sampler import VLLMSampler

    calls = []

    class FakeLLM:
        def sleep(self, level):
            calls.append(f"sleep{level}")

        def wake_up(self, tags):
            calls.append("wake " + "+".join(tags))

    engine = LocalEngine.__new__(LocalEngine)
    engine.options, engine.llm, engine.awake = EngineOptions(model="m", enable_sleep_mode=True), FakeLLM(), {"weights", "kv_cache"}
    engine.generate = lambda *a: calls.append("generate") or [Generation([5, 0], [-1.0, -2.0])]
    engine.load_weights = lambda w: calls.append(f"load {sorted(w)}")
    plain = SimpleNamespace(policy=torch.nn.Linear(2, 1, bias=False))
    accelerator = SimpleNamespace(state=SimpleNamespace(), num_processes=1, unwrap_model=lambda m: m)
    sampler = VLLMSampler(engine, SamplingSettings(4, 1.0, 1, 0), "cpu", plain, accelerator)
    samples = sampler.sample([[3, 4]], torch.Generator().manual_seed(0))
    assert samples.responses.tolist() == [[5, 0]] and samples.logprobs.tolist() == [[-1.0, -2.0]]
    sampler.sync_weights()  # after an update
    sampler.sample([[3, 4]], torch.Generator().manual_seed(0))
    sampler.sample([[3, 4]], torch.Generator().manual_seed(0))  # evaluation: no update in between
    assert calls == ["generate", "sleep2", "wake weights", "load ['weight']", "wake kv_cache", "generate", "sleep2",
                     "wake weights", "load ['weight']", "wake kv_cache", "generate", "sleep2"]
