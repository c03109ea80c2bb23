"""`rlhf sft`: the loss falls and the policy learns the task's format; messages, packing and LoRA work;
bad input fails clearly and leaves nothing half-written in --output_dir."""

from __future__ import annotations

import importlib
import json

import pytest
from rlhf.sft import main

pytest_plugins = [f"{__package__}.rlhf_fixtures" if __package__ else "rlhf_fixtures"]
pytest.register_assert_rewrite(pytest_plugins[0])
fixtures = importlib.import_module(pytest_plugins[0])  # its flag helpers
DATA, QUIET = fixtures.DATA, fixtures.QUIET


def _short(model, out, data, *extra):
    return [
        "--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(out),
        "--max_steps", "2", "--per_device_train_batch_size", "4", *QUIET, *extra,
    ]


@pytest.mark.slow
def test_sft_loss_falls_and_the_policy_learns_the_format(rlhf_sft_run, rlhf_tiny_model):
    path, summary = rlhf_sft_run
    assert summary["eval_loss"] < summary["eval_loss_before"] - 3.0  # from about 6.5 (uniform) to below 3.5
    assert summary["world_size"] == 1 and summary["dataset_format"] == "prompt_completion"
    for name in ("model.safetensors", "tokenizer.json", "metrics.jsonl", "summary.json", "config.yaml"):
        assert (path / name).exists(), name
    logged = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [10, 20, 30, 40, 50, 60]

    from rlhf.evaluate import sample_completions
    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.task import all_prompts, is_well_formed

    def well_formed_fraction(model_dir):
        tokenizer = load_tokenizer(str(model_dir))
        samples = sample_completions(load_causal_lm(str(model_dir), tokenizer), tokenizer, all_prompts()[::10], seed=0)
        ok = [end and is_well_formed(c) for end, c in zip(samples.ended, samples.completions)]
        return sum(ok) / len(ok)

    assert well_formed_fraction(rlhf_tiny_model) == 0.0
    assert well_formed_fraction(path) > 0.5  # "the <aspect> was <adjective> [and ...]." then EOS (T = 1)


def test_sft_is_deterministic_given_the_seed(rlhf_tiny_model, tmp_path):
    data = DATA / "sft_eval.jsonl"
    a = main(_short(rlhf_tiny_model, tmp_path / "a", data, "--eval_holdout_fraction", "0", "--learning_rate", "1e-3"))
    b = main(_short(rlhf_tiny_model, tmp_path / "b", data, "--eval_holdout_fraction", "0", "--learning_rate", "1e-3"))
    c = main(_short(rlhf_tiny_model, tmp_path / "c", data, "--eval_holdout_fraction", "0", "--learning_rate", "1e-3",
                    "--seed", "1"))
    assert a["train_loss"] == b["train_loss"] != c["train_loss"]


def test_messages_format_uses_the_chat_template_and_assistant_only_loss(rlhf_tiny_model, tmp_path):
    rows = [json.loads(line) for line in (DATA / "sft_eval.jsonl").read_text().splitlines()[:16]]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]})
        + "\n" for r in rows
    ))
    summary = main(_short(rlhf_tiny_model, tmp_path / "out", data, "--eval_holdout_fraction", "0.25"))
    assert summary["dataset_format"] == "messages" and summary["eval_loss"] is not None
    config = (tmp_path / "out" / "config.yaml").read_text()
    assert "assistant_only_loss: true" in config


def test_lora_with_packing_saves_a_merged_model_and_the_adapter(rlhf_tiny_model, tmp_path):
    out = tmp_path / "lora"
    summary = main(_short(
        rlhf_tiny_model, out, DATA / "sft_eval.jsonl", "--use_peft", "--lora_r", "4",
        "--lora_target_modules", "q_proj", "v_proj", "--packing", "--max_length", "64", "--eval_holdout_fraction", "0",
    ))
    assert summary["use_peft"] is True
    assert (out / "adapter" / "adapter_config.json").exists()
    from rlhf.models import load_causal_lm

    load_causal_lm(str(out))  # the merged model loads as a plain causal LM


def test_bad_dataset_fails_clearly_and_leaves_no_output(rlhf_tiny_model, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"\{prompt, completion\} or \{messages\}"):
        main(_short(rlhf_tiny_model, out, data))
    assert list(tmp_path.iterdir()) == [data]


def test_failure_during_training_keeps_the_previous_output_intact(rlhf_tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text('{"previous": true}')

    def boom(self, *args, **kwargs):
        raise RuntimeError("disk full")

    import trl

    monkeypatch.setattr(trl.SFTTrainer, "train", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        main(_short(rlhf_tiny_model, out, DATA / "sft_eval.jsonl", "--eval_holdout_fraction", "0",
                    "--overwrite_output_dir"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert json.loads((out / "summary.json").read_text()) == {"previous": True}
    assert not (out / "model.safetensors").exists() and not (out / ".rlhf-staging").exists()


def test_missing_model_path_mentions_the_offline_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="cannot be reached offline"):
        main(_short("someone/not-a-model", tmp_path / "out", DATA / "sft_eval.jsonl"))
    assert not (tmp_path / "out").exists()
