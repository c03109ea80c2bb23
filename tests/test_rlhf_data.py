"""Dataset loading and validation: local files and directories, formats, and the errors users see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset

from rlhf.data import (
    DataArguments,
    detect_format,
    load_dataset_dict,
    load_train_eval,
    ranked_responses,
    render_prompt,
    resolve_path,
    reward_text,
    validate_dataset,
)

# The shared rlhf fixtures (tests/rlhf_fixtures.py), loaded as a plugin whether or not tests/ is a package.
pytest_plugins = [f"{__package__}.rlhf_fixtures" if __package__ else "rlhf_fixtures"]
REPO = Path(__file__).resolve().parents[1]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("columns", "task", "expected"),
    [
        (["prompt", "completion"], "sft", "prompt_completion"),
        (["messages"], "sft", "messages"),
        (["prompt", "chosen", "rejected", "margin"], "reward", "preference"),
        (["prompt", "responses"], "reward", "ranking"),
        (["prompt", "extra"], "ppo", "prompt"),
    ],
)
def test_detect_format(columns, task, expected):
    assert detect_format(columns, task) == expected


@pytest.mark.parametrize(
    ("task", "accepted"),
    [
        ("sft", "{prompt, completion} or {messages}"),
        ("reward", "{prompt, chosen, rejected} or {prompt, responses}"),
        ("ppo", "{prompt}"),
    ],
)
def test_missing_columns_error_names_the_accepted_formats(task, accepted):
    with pytest.raises(ValueError) as err:
        validate_dataset(Dataset.from_list([{"question": "q", "answer": "a"}]), task)
    assert accepted in str(err.value)
    assert "['answer', 'question']" in str(err.value)


def test_empty_dataset_is_an_error():
    empty = Dataset.from_dict({"prompt": [], "completion": []})
    with pytest.raises(ValueError, match="is empty"):
        validate_dataset(empty, "sft")


def test_rankings_need_two_responses_and_text_values():
    with pytest.raises(ValueError, match="at least 2 responses"):
        validate_dataset(Dataset.from_list([{"prompt": "p", "responses": ["only one"]}]), "reward")
    with pytest.raises(ValueError, match="dataset, row 0: column 'completion'"):
        validate_dataset(Dataset.from_list([{"prompt": "p", "completion": 3}]), "sft")


def test_local_jsonl_json_parquet_and_directory_load_the_same_rows(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": f" c{i}"} for i in range(5)]
    jsonl = _write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    (tmp_path / "dir").mkdir()
    _write_jsonl(tmp_path / "dir" / "train.jsonl", rows)
    _write_jsonl(tmp_path / "dir" / "test.jsonl", rows[:2])
    for name in (jsonl, tmp_path / "d.json", tmp_path / "d.parquet"):
        assert load_dataset_dict(str(name))["train"].to_list() == rows
    splits = load_dataset_dict(str(tmp_path / "dir"))
    assert len(splits["train"]) == 5 and len(splits["test"]) == 2
    train, held_out = load_train_eval(DataArguments(dataset_name=str(tmp_path / "dir")))
    assert len(train) == 5 and len(held_out) == 2


def test_held_out_split_and_separate_eval_file(tmp_path):
    rows = [{"prompt": f"p{i}"} for i in range(20)]
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    train, held_out = load_train_eval(DataArguments(dataset_name=str(path), eval_holdout_fraction=0.25), seed=0)
    assert len(train) == 15 and len(held_out) == 5
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in held_out})
    other = _write_jsonl(tmp_path / "e.jsonl", rows[:3])
    train, held_out = load_train_eval(DataArguments(dataset_name=str(path), eval_dataset_name=str(other)))
    assert len(train) == 20 and len(held_out) == 3


def test_missing_local_file_and_unreachable_hub_give_clear_errors(monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_dataset_dict("./does/not/exist.jsonl")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="cannot be reached offline"):
        load_dataset_dict("nobody-here/no-such-dataset")


def test_shipped_paths_resolve_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_path("rlhf/data/sft.jsonl") == REPO / "rlhf" / "data" / "sft.jsonl"
    assert resolve_path("rlhf/data/nothing.jsonl") is None


def test_text_conventions(rlhf_tiny_model):
    from rlhf.models import load_tokenizer

    tokenizer = load_tokenizer(str(rlhf_tiny_model))
    messages = [{"role": "user", "content": "Review the cafe:"}]
    assert render_prompt(messages, tokenizer) == "<|user|>\nReview the cafe:\n<|assistant|>\n"
    assert render_prompt("plain", tokenizer) == "plain"
    eos = tokenizer.eos_token
    assert reward_text("p", " r", eos) == reward_text("p", " r" + eos, eos) == "p r" + eos
    assert ranked_responses({"chosen": "a", "rejected": "b"}, "preference") == ["a", "b"]
