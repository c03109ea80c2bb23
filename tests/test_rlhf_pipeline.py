"""`rlhf pipeline`: config checks, step chaining, the results table and the PPO curves, and a short
end-to-end run (sft, reward, ppo) on the tiny model."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import yaml
from rlhf.pipeline import PipelineConfig, plot_ppo_curves, results_table, step_flags

from rlhf import pipeline

pytest_plugins = [f"{__package__}.rlhf_fixtures" if __package__ else "rlhf_fixtures"]
pytest.register_assert_rewrite(pytest_plugins[0])
fixtures = importlib.import_module(pytest_plugins[0])  # its flag helpers
REPO = Path(__file__).resolve().parents[1]


def test_shipped_config_parses_and_chains_the_steps():
    cfg = PipelineConfig.from_yaml(REPO / "configs" / "rlhf" / "tiny.yaml").validate()
    assert cfg.steps == ["tiny_model", "sft", "reward", "ppo"]
    out = Path(cfg.output_dir)
    assert step_flags(cfg, "sft")["model_name_or_path"] == str(out / "tiny_model")
    assert step_flags(cfg, "reward")["model_name_or_path"] == str(out / "sft")
    ppo = step_flags(cfg, "ppo")
    assert ppo["model_name_or_path"] == str(out / "sft") and ppo["reward_model_path"] == str(out / "reward")
    assert ppo["seed"] == cfg.seed and ppo["output_dir"] == str(out / "ppo")


def test_config_errors_name_the_valid_choices(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path), "sfts": {}}))
    with pytest.raises(ValueError, match="unknown keys \\['sfts'\\]"):
        PipelineConfig.from_yaml(path)
    with pytest.raises(ValueError, match="choose from"):
        PipelineConfig(output_dir=str(tmp_path), steps=["sft", "dpo"]).validate()
    with pytest.raises(ValueError, match="set sft.model_name_or_path"):
        PipelineConfig(output_dir=str(tmp_path), steps=["sft"]).validate()


def test_missing_ppo_module_fails_before_any_training(tmp_path, monkeypatch):
    monkeypatch.setitem(pipeline.STEP_MODULES, "ppo", "rlhf.not_installed_here")
    cfg = PipelineConfig(output_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="ppo step needs module rlhf.not_installed_here"):
        pipeline.run_pipeline(cfg)
    assert not (tmp_path / "run").exists()


def test_results_table_and_ppo_curves(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(
        json.dumps({"step": i, "episode": 64 * i, "objective/scores": 0.1 * i, "objective/rlhf_reward": 0.09 * i,
                    "objective/kl": 0.02 * i}) + "\n" for i in range(1, 6)
    ))
    assert plot_ppo_curves(metrics, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert not plot_ppo_curves(tmp_path / "none.jsonl", tmp_path / "none.png")
    table = results_table(
        {"sft": {"eval_loss_before": 6.5, "eval_loss": 1.2}, "reward": {"eval_accuracy": 0.9}, "ppo": {"kl_mean": 3.0}},
        {"sft": {"gold": -0.2, "reward": 0.0, "eos_fraction": 1.0}, "ppo": {"gold": 0.7, "reward": 2.0, "eos_fraction": 1.0}},
    )
    assert "| SFT eval loss (before -> after SFT)" in table and "6.500 -> 1.200" in table
    assert "-0.200 -> 0.700" in table and "0.900" in table and "3.000" in table


@pytest.mark.slow
def test_pipeline_runs_sft_reward_and_ppo_and_reports(rlhf_tiny_model, tmp_path):
    data = fixtures.DATA
    quiet = {"disable_tqdm": True}
    config = {
        "output_dir": str(tmp_path / "run"),
        "seed": 0,
        "steps": ["sft", "reward", "ppo"],
        "evaluation": {"prompts": str(data / "prompts_eval.jsonl"), "num_prompts": 8},
        "sft": {"model_name_or_path": str(rlhf_tiny_model), "dataset_name": str(data / "sft_eval.jsonl"),
                "max_steps": 3, "per_device_train_batch_size": 8, "eval_holdout_fraction": 0.1, **quiet},
        "reward": {"dataset_name": str(data / "pairs_eval.jsonl"), "max_steps": 2, "per_device_train_batch_size": 8,
                   "calibration_num_samples": 8, "calibration_max_new_tokens": 8, "eval_holdout_fraction": 0.1, **quiet},
        "ppo": {"dataset_name": str(data / "prompts.jsonl"), "eval_dataset_name": str(data / "prompts_eval.jsonl"),
                "total_episodes": 16, "per_device_train_batch_size": 8, "response_length": 8, "num_ppo_epochs": 1,
                "num_eval_prompts": 8, "learning_rate": 1e-4, "num_sample_generations": 0, **quiet},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    summary = pipeline.main(["--config", str(path)])
    run = tmp_path / "run"
    assert summary["steps"] == ["sft", "reward", "ppo"]
    for step in ("sft", "reward", "ppo"):
        assert (run / step / "summary.json").exists() and (run / "configs" / f"{step}.yaml").exists()
    assert json.loads((run / "ppo" / "summary.json").read_text())["model_name_or_path"] == str(run / "sft")
    assert set(summary["evaluation"]) == {"sft", "ppo"}
    assert {"gold", "reward", "eos_fraction"} <= set(summary["evaluation"]["ppo"])
    table = (run / "results.md").read_text()
    assert "RM held-out pairwise accuracy" in table and "n/a" not in table
    assert (run / "ppo_curves.png").exists()


@pytest.mark.slow
def test_the_pipeline_table_and_the_rl_step_give_one_number_per_quantity(tmp_path):
    """The pipeline samples the held-out prompts as the RL step did for its before/after numbers (same
    seed, same slices, same sampler), so on the same prompts with the same reward its table repeats the RL
    step's reward and EOS rate exactly; results.md says so, and the summary keeps the scored samples."""
    data = REPO / "rlhf" / "data"
    config = {
        "output_dir": str(tmp_path / "run"), "seed": 0, "steps": ["tiny_model", "sft", "grpo"],
        "evaluation": {"prompts": str(data / "reverse_prompts_eval.jsonl"), "reward_fn": "rlhf.tasks.verifiable:reward",
                       "num_prompts": 48},
        "tiny_model": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "vocab_size": 300},
        "sft": {"dataset_name": str(data / "reverse_sft.jsonl"), "max_steps": 60, "per_device_train_batch_size": 32,
                "learning_rate": 3e-3, "disable_tqdm": True, "report_to": "none"},
        "grpo": {"dataset_name": str(data / "reverse_prompts.jsonl"), "eval_dataset_name": str(data / "reverse_prompts_eval.jsonl"),
                 "reward_fn": "rlhf.tasks.verifiable:reward", "num_eval_prompts": 48, "num_generations": 4,
                 "per_device_train_batch_size": 16, "max_completion_length": 4, "max_steps": 3, "learning_rate": 1e-3,
                 "temperature": 1.5, "num_sample_generations": 0, "disable_tqdm": True, "report_to": "none"},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    summary = pipeline.main(["--config", str(path)])
    grpo = json.loads((tmp_path / "run" / "grpo" / "summary.json").read_text())
    for policy, when in (("sft", "before"), ("grpo", "after")):
        assert summary["evaluation"][policy]["gold"] == grpo[f"reward_mean_{when}"], policy
        assert summary["evaluation"][policy]["eos_fraction"] == grpo[f"eos_fraction_{when}"], policy
    assert len(summary["samples"]) == pipeline.NUM_SAMPLES_KEPT
    assert [a["policy"] for a in summary["samples"][0]["answers"]] == ["sft", "grpo"]
    assert "come from the same samples" in (tmp_path / "run" / "results.md").read_text()
    assert (tmp_path / "run" / "grpo_curves.png").is_file()
