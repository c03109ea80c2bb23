"""Never lose a user's work, and say clearly what is wrong: the output-folder rules, checkpoints and resume
(sft killed by SIGKILL then resumed equals the uninterrupted run), the divergence guard, one test per kind
of bad input (exit 2, one line naming the file and line or the flag), help that names the command, and the
step-by-step commands learning with `--config configs/rlhf/tiny.yaml`."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf import cli

pytest_plugins = [f"{__package__}.rlhf_fixtures" if __package__ else "rlhf_fixtures"]
pytest.register_assert_rewrite(pytest_plugins[0])
fixtures = importlib.import_module(pytest_plugins[0])  # its flag helpers
DATA, QUIET, REPO = fixtures.DATA, fixtures.QUIET, fixtures.REPO
TINY_YAML = REPO / "configs" / "rlhf" / "tiny.yaml"
SMALL_TINY = ["--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "1", "--vocab_size", "400"]


@pytest.fixture(autouse=True)
def _log_to_the_current_stderr():
    """transformers' log handler keeps the stderr of the test that first logged (pytest closes it later);
    point it at this test's stderr so its warnings are captured instead of failing to print."""
    from transformers.utils import logging as hf_logging

    handler = getattr(hf_logging, "_default_handler", None)
    if handler is not None:
        handler.setStream(sys.stderr)
    yield


def _short_sft(model, out, *extra):
    return [
        "--model_name_or_path", str(model), "--dataset_name", str(DATA / "sft_eval.jsonl"), "--output_dir", str(out),
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--eval_holdout_fraction", "0", *QUIET, *extra,
    ]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


# ----------------------------------------------------------------------------------------------- output folders
def test_non_empty_output_dir_is_refused_and_overwrite_keeps_unrelated_files(tmp_path, monkeypatch, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    assert cli.main(["tiny-model", "--output_dir", str(out), *SMALL_TINY]) == 2
    assert "already exists and is not empty" in _error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]

    monkeypatch.chdir(out)  # `--output_dir .` used to wipe the working directory
    assert cli.main(["tiny-model", "--output_dir", ".", *SMALL_TINY]) == 2
    assert (out / "notes.txt").read_text() == "my notes"

    assert cli.main(["tiny-model", "--output_dir", str(out), *SMALL_TINY, "--overwrite_output_dir"]) == 0
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "model.safetensors").exists() and not (out / ".rlhf-staging").exists()


@pytest.mark.slow
def test_sft_killed_after_a_checkpoint_then_resumed_equals_the_uninterrupted_run(rlhf_tiny_model, tmp_path):
    flags = fixtures.sft_flags(rlhf_tiny_model, "OUT", "--max_steps", "24", "--save_steps", "6",
                               "--logging_steps", "4", "--per_device_train_batch_size", "8")
    whole = tmp_path / "whole"
    summary = cli_run(flags, whole)

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    args = [a if a != "OUT" else str(killed) for a in flags]
    proc = subprocess.Popen([sys.executable, "-m", "rlhf", "sft", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "checkpoint-6").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoint-6").exists() and not (killed / "model.safetensors").exists()
    checkpoints_before = {p.name for p in killed.glob("checkpoint-*")}

    resumed = cli_run(flags + ["--resume_from_checkpoint", "true"], killed)
    assert resumed["resumed_from"].startswith(str(killed / "checkpoint-"))
    assert _max_weight_difference(whole, killed) < 1e-5
    assert resumed["eval_loss"] == pytest.approx(summary["eval_loss"], abs=1e-5)
    assert resumed["train_loss"] == pytest.approx(summary["train_loss"], abs=1e-5)
    def rows(folder):  # every logged number but the wall-clock ones
        logged = map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
        return [{k: round(v, 5) if isinstance(v, float) else v for k, v in r.items()
                 if not ("runtime" in k or "per_second" in k or k.endswith("_time"))} for r in logged]

    # the same rows, none duplicated or missing: the losses (also of the window the checkpoint cut in two,
    # checkpoints every 6 steps, a log line every 4), TRL's num_tokens, the final train_loss
    assert rows(killed) == rows(whole)
    assert checkpoints_before <= {p.name for p in killed.glob("checkpoint-*")}  # none deleted


def cli_run(flags: list[str], out: Path) -> dict:
    from rlhf.sft import main

    return main([a if a != "OUT" else str(out) for a in flags])


@pytest.mark.slow
def test_reward_resumed_from_a_checkpoint_equals_the_uninterrupted_run(rlhf_sft_run, tmp_path):
    from rlhf.reward import main

    extra = ("--max_steps", "12", "--save_steps", "6", "--logging_steps", "3", "--calibrate", "false",
             "--per_device_train_batch_size", "8")
    whole = main(fixtures.reward_flags(rlhf_sft_run[0], tmp_path / "whole", *extra))
    # A run killed after step 6: its folder holds checkpoint-6 and the metrics logged so far.
    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-6", part / "checkpoint-6")
    lines = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    (part / "metrics.jsonl").write_text("".join(x + "\n" for x in lines if json.loads(x)["step"] <= 9))
    resumed = main(fixtures.reward_flags(rlhf_sft_run[0], part, *extra, "--resume_from_checkpoint", "true"))
    assert resumed["resumed_from"] == str(part / "checkpoint-6")
    assert _max_weight_difference(tmp_path / "whole", part) < 1e-5
    assert resumed["eval_accuracy"] == whole["eval_accuracy"]
    assert resumed["eval_loss"] == pytest.approx(whole["eval_loss"], abs=1e-5)
    assert [json.loads(x)["step"] for x in (part / "metrics.jsonl").read_text().splitlines()] == \
        [json.loads(x)["step"] for x in lines]


def test_save_total_limit_never_deletes_checkpoints_of_an_earlier_run(rlhf_tiny_model, tmp_path):
    from rlhf.sft import main

    out = tmp_path / "out"
    old = out / "checkpoint-1000"
    old.mkdir(parents=True)
    (old / "model.safetensors").write_text("an earlier run's checkpoint")
    main(_short_sft(rlhf_tiny_model, out, "--max_steps", "6", "--save_steps", "2", "--save_total_limit", "1",
                    "--overwrite_output_dir"))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1000", "checkpoint-6"]


# ----------------------------------------------------------------------------------------------- divergence
def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(rlhf_tiny_model, tmp_path, monkeypatch,
                                                                          capsys):
    import trl

    original = trl.SFTTrainer.compute_loss

    def poisoned(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if self.model.training and self.state.global_step >= 4:  # step 5 goes wrong
            nan = float("nan")
            result = (result[0] * nan, *result[1:]) if isinstance(result, tuple) else result * nan
        return result

    monkeypatch.setattr(trl.SFTTrainer, "compute_loss", poisoned)
    out = tmp_path / "out"
    rc = cli.main(["sft", *_short_sft(rlhf_tiny_model, out, "--max_steps", "8", "--save_steps", "2")])
    assert rc == 3  # diverged (the exit status classic-rl gives too)
    line = _error_line(capsys)
    assert "diverged at step 5: the loss is nan" in line and str(out / "checkpoint-4") in line
    assert not (out / "model.safetensors").exists() and not (out / "summary.json").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert all(torch.isfinite(t).all() for t in _weights(out / "checkpoint-4").values())


def test_non_finite_gradient_norm_stops_the_run_before_the_step_is_saved(rlhf_sft_run, tmp_path, monkeypatch,
                                                                          capsys):
    from rlhf.reward import RankingRewardTrainer

    original = RankingRewardTrainer.compute_loss

    def exploding(self, model, inputs, *args, **kwargs):
        loss = original(self, model, inputs, *args, **kwargs)
        if model.training and self.state.global_step >= 2:  # a finite loss, an infinite gradient at step 3
            loss.register_hook(lambda g: g * float("inf"))
        return loss

    monkeypatch.setattr(RankingRewardTrainer, "compute_loss", exploding)
    out = tmp_path / "rm"
    rc = cli.main(["reward", *fixtures.reward_flags(rlhf_sft_run[0], out, "--max_steps", "6", "--save_steps", "2",
                                                    "--calibrate", "false")])
    assert rc == 3
    line = _error_line(capsys)
    assert "diverged at step 3: the gradient norm is" in line and str(out / "checkpoint-2") in line
    assert not (out / "model.safetensors").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]


# ----------------------------------------------------------------------------------------------- bad input
def test_malformed_yaml_names_the_file_and_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("sft:\n  max_steps: 10\n  learning_rate: [1e-3\n  seed: 0\n")
    assert cli.main(["sft", "--config", str(config), "--output_dir", str(tmp_path / "o")]) == 2
    line = _error_line(capsys)
    assert f"{config}:4" in line and "invalid YAML" in line
    assert cli.main(["pipeline", "--config", str(config)]) == 2
    assert f"{config}:4" in _error_line(capsys)


def test_unknown_key_in_a_config_section_names_its_line(tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("seed: 0\nsft:\n  max_steps: 10\n  learning_rat: 1.0e-3\n")
    assert cli.main(["sft", "--config", str(config), "--output_dir", str(tmp_path / "o")]) == 2
    line = _error_line(capsys)
    assert f"{config}:4: unknown flag 'learning_rat'" in line


def test_config_section_is_taken_from_a_pipeline_yaml_and_a_missing_one_is_named(tmp_path):
    from rlhf.utils import config_section, load_yaml

    from classic_rl.safe_io import UserError

    pipeline_yaml = load_yaml(TINY_YAML)
    sft = config_section(pipeline_yaml, "sft", TINY_YAML)
    assert sft["learning_rate"] == pipeline_yaml["sft"]["learning_rate"] and sft["seed"] == pipeline_yaml["seed"]
    assert "output_dir" not in sft and "steps" not in sft  # the pipeline's own keys are not the command's flags
    assert config_section(pipeline_yaml, "tiny-model", TINY_YAML)["hidden_size"] == 128
    with pytest.raises(UserError, match="none named 'grpo'"):
        config_section(pipeline_yaml, "grpo", TINY_YAML)
    assert config_section({"max_steps": 3}, "sft", "flat.yaml") == {"max_steps": 3}  # a plain file of flags


def test_malformed_jsonl_names_the_file_and_line(rlhf_tiny_model, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    good = json.dumps({"prompt": "p", "completion": " c"})
    data.write_text(f"{good}\n\n{good}\n{{\"prompt\": \"p\", \"completion\": \n")
    assert cli.main(["sft", *_short_sft(rlhf_tiny_model, tmp_path / "o", "--dataset_name", str(data))]) == 2
    assert f"{data}:4: not valid JSON" in _error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_a_bad_row_after_row_100_is_reported_by_its_file_line(rlhf_sft_run, tmp_path, capsys):
    rows = (DATA / "rankings.jsonl").read_text().splitlines()[:150]
    bad = json.loads(rows[120])
    bad["responses"] = bad["responses"][:1]
    rows[120] = json.dumps(bad)
    data = tmp_path / "rankings.jsonl"
    data.write_text("\n".join(rows) + "\n")
    assert cli.main(["reward", *fixtures.reward_flags(rlhf_sft_run[0], tmp_path / "o", "--dataset_name", str(data),
                                                      "--eval_dataset_name", str(data))]) == 2
    assert f"{data}:121: 'responses' must list at least 2 responses" in _error_line(capsys)


def test_empty_dataset_file_is_a_clear_error(rlhf_tiny_model, tmp_path, capsys):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    assert cli.main(["sft", *_short_sft(rlhf_tiny_model, tmp_path / "o", "--dataset_name", str(data))]) == 2
    assert f"{data}: the file is empty" in _error_line(capsys)


def test_truncated_weight_file_is_a_clear_error(rlhf_tiny_model, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(rlhf_tiny_model, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert cli.main(["sft", *_short_sft(model, tmp_path / "o")]) == 2
    line = _error_line(capsys)
    assert f"weight file {weights} cannot be read" in line and "truncated" in line


@pytest.mark.parametrize(("flag", "value", "text"), [
    ("--num_train_epochs", "-1", "must be >= 0"),
    ("--learning_rate", "-0.001", "must be >= 0"),
    ("--per_device_train_batch_size", "0", "must be >= 1"),
])
def test_out_of_range_flags_name_the_flag_and_range(rlhf_tiny_model, tmp_path, capsys, flag, value, text):
    assert cli.main(["sft", *_short_sft(rlhf_tiny_model, tmp_path / "o", flag, value)]) == 2
    line = _error_line(capsys)
    assert f"error: {flag} " in line and text in line


def test_a_prompt_longer_than_the_context_is_an_error_naming_its_line(rlhf_tiny_model, tmp_path, capsys):
    data = tmp_path / "long.jsonl"
    rows = [{"prompt": "a short prompt", "completion": " ok."}] * 3
    rows.append({"prompt": "word " * 400, "completion": " ok."})  # the tiny model's context is 256 tokens
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli.main(["sft", *_short_sft(rlhf_tiny_model, tmp_path / "o", "--dataset_name", str(data))]) == 2
    line = _error_line(capsys)
    assert f"{data}:4: the prompt is" in line and "256-token limit" in line


def test_debug_shows_the_traceback(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("sft: [\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "rlhf", "sft", "--config", str(config), "--debug"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr  # a UserError


# ----------------------------------------------------------------------------------------------- help and output
@pytest.mark.parametrize("command", ["sft", "reward", "tiny-model"])
def test_help_names_the_command_and_lists_this_projects_flags_first(command, capsys):
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: rlhf {command} ")
    assert out.index("this project's flags:") < out.index("--overwrite_output_dir") and "--help-all" in out
    assert len(out.splitlines()) < 120  # the main flags, each explained in full (wrapped at 100 columns)
    assert cli.main([command, "--help-all"]) == 0
    full = capsys.readouterr().out
    assert full.startswith(f"usage: rlhf {command} ") and len(full.splitlines()) > len(out.splitlines())


def test_reward_from_a_causal_lm_says_one_plain_line_about_the_new_head(rlhf_sft_run, capfd):
    from rlhf.models import load_reward_model, load_tokenizer

    load_reward_model(str(rlhf_sft_run[0]), load_tokenizer(str(rlhf_sft_run[0])))
    err = capfd.readouterr().err
    assert "new reward head initialised" in err and "LOAD REPORT" not in err and "MISSING" not in err


def test_sft_ends_with_a_summary_line(rlhf_tiny_model, tmp_path, capsys):
    from rlhf.sft import main

    main(_short_sft(rlhf_tiny_model, tmp_path / "o", "--eval_holdout_fraction", "0.2"))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("rlhf sft: done") and str(tmp_path / "o") in last and "eval loss" in last


# ----------------------------------------------------------------------------------------------- step by step
@pytest.mark.slow
def test_step_by_step_sft_learns_with_the_pipeline_yaml_section(rlhf_tiny_model, tmp_path):
    from rlhf.sft import main

    common = ["--model_name_or_path", str(rlhf_tiny_model), "--max_steps", "30", "--report_to", "none",
              "--save_strategy", "no"]
    tuned = main(["--config", str(TINY_YAML), *common, "--output_dir", str(tmp_path / "tuned")])
    plain = main(["--dataset_name", str(DATA / "sft.jsonl"), "--eval_dataset_name", str(DATA / "sft_eval.jsonl"),
                  "--disable_tqdm", "true", *common, "--output_dir", str(tmp_path / "plain")])
    assert tuned["eval_loss_before"] == pytest.approx(plain["eval_loss_before"])
    assert tuned["eval_loss"] < plain["eval_loss"] - 2.0  # lr 3e-3 and batch 32 from the sft: section
    config = (tmp_path / "tuned" / "config.yaml").read_text()
    assert "learning_rate: 0.003" in config and "seed: 0" in config  # the section, and the top-level seed


def test_pipeline_resume_skips_finished_steps_and_resumes_the_interrupted_one(tmp_path, capsys):
    from rlhf import pipeline

    config = tmp_path / "p.yaml"
    sft = {"dataset_name": str(DATA / "sft_eval.jsonl"), "eval_holdout_fraction": 0, "max_steps": 6,
           "save_steps": 3, "per_device_train_batch_size": 4, "report_to": "none", "disable_tqdm": True}
    import yaml

    config.write_text(yaml.safe_dump({"seed": 0, "steps": ["tiny_model", "sft"],
                                      "tiny_model": {"hidden_size": 32, "intermediate_size": 64,
                                                     "num_hidden_layers": 1, "vocab_size": 400}, "sft": sft}))
    whole, part = tmp_path / "whole", tmp_path / "part"
    pipeline.main(["--config", str(config), "--output_dir", str(whole)])
    assert cli.main(["pipeline", "--config", str(config), "--output_dir", str(whole)]) == 2  # not empty
    # A run killed during sft, after its checkpoint-3:
    pipeline.main(["--config", str(config), "--output_dir", str(part), "--steps", "tiny_model"])
    shutil.copytree(whole / "sft" / "checkpoint-3", part / "sft" / "checkpoint-3")
    tiny_stamp = (part / "tiny_model" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    pipeline.main(["--config", str(config), "--output_dir", str(part), "--resume"])
    out = capsys.readouterr().out
    assert "tiny_model already done" in out
    assert (part / "tiny_model" / "model.safetensors").stat().st_mtime_ns == tiny_stamp
    summary = json.loads((part / "sft" / "summary.json").read_text())
    assert summary["resumed_from"] == str(part / "sft" / "checkpoint-3")
    assert _max_weight_difference(whole / "sft", part / "sft") < 1e-5
