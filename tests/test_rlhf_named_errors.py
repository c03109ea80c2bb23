"""Errors that name the user's file: a model folder without its tokenizer names the folder and what is missing
(not transformers' advice to install sentencepiece); an empty prompt names FILE:LINE, also after the held-out
split has shuffled the rows. One line each, exit 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rlhf import cli

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "rlhf" / "data"
REWARD = f"{REPO / 'tests' / 'same_numbers_reward.py'}:letter_fraction"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("named") / "tiny"
    assert cli.main(["tiny-model", "--output_dir", str(path), "--vocab_size", "300", "--hidden_size", "32",
                     "--intermediate_size", "64", "--num_hidden_layers", "1", "--num_attention_heads", "2"]) == 0
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def test_a_model_folder_without_its_tokenizer_says_which_folder_and_what_is_missing(tiny, tmp_path, capsys):
    weights_only = tmp_path / "weights_only"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny / name, weights_only / name)
    assert cli.main(["sft", "--model_name_or_path", str(weights_only), "--dataset_name", str(DATA / "sft_eval.jsonl"),
                     "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--report_to", "none"]) == 2
    line = _one_error_line(capsys)
    assert f"tokenizer '{weights_only}': the folder has no tokenizer" in line, line
    assert "tokenizer.json" in line and "config.json, model.safetensors" in line and "sentencepiece" not in line


@pytest.mark.parametrize("where", ["train", "eval"])
def test_an_empty_prompt_names_its_file_and_line(tiny, tmp_path, capsys, where):
    prompts = tmp_path / "prompts.jsonl"
    rows = [f'{{"prompt": "Review place {i}:"}}' for i in range(20)]
    rows[6] = '{"prompt": ""}'  # line 7
    prompts.write_text("\n".join(rows) + "\n")
    data = ["--dataset_name", str(prompts)] if where == "train" else [
        "--dataset_name", str(DATA / "prompts.jsonl"), "--eval_dataset_name", str(prompts)]
    assert cli.main(["ppo", "--model_name_or_path", str(tiny), *data, "--output_dir", str(tmp_path / "out"),
                     "--reward_fn", REWARD, "--total_episodes", "8", "--per_device_train_batch_size", "4",
                     "--response_length", "4", "--report_to", "none", "--eval_holdout_fraction", "0.2"]) == 2
    line = _one_error_line(capsys)
    assert f"{prompts}:7: the prompt '' tokenizes to no tokens" in line, line
