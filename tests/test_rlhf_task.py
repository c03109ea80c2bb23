"""The shipped task: the gold scorer's rule, and the generated datasets (deterministic, as shipped)."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import pytest
from rlhf.task import all_prompts, gold_reward, gold_score, place_of

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "rlhf" / "data"
DATA_FILES = ("sft.jsonl", "sft_eval.jsonl", "rankings.jsonl", "pairs_eval.jsonl", "prompts.jsonl", "prompts_eval.jsonl")


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_rlhf_data", REPO / "scripts" / "make_rlhf_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (" the coffee was great and the staff was friendly.", 1.0),
        (" the coffee was awful.", -1.0),
        (" the coffee was great and the cake was okay.", 0.5),
        (" the coffee was great and the room was great.", 0.0),  # "room" is off topic for a cafe
        (" the coffee was great and the coffee was great.", 0.0),  # a repeated aspect counts -1
        (" the coffee was great and the staff was great and", 0.5),  # malformed: 1 - 0.5
        (" great great great", -1.0),  # no clause at all
        (" the coffee was purple.", -1.0),  # unknown adjective
    ],
)
def test_gold_score_follows_the_documented_rule(completion, expected):
    assert gold_score("Review the cafe near the station:", completion) == pytest.approx(expected)


def test_gold_reward_is_a_reward_fn_and_checks_lengths():
    assert gold_reward(["How was the gym?"] * 2, [" the trainer was good.", " the shower was dirty."]) == [1.0, -1.0]
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        gold_reward(["a", "b"], ["c"])


def test_every_prompt_names_a_place():
    prompts = all_prompts()
    assert len(prompts) == len(set(prompts)) == 400
    assert all(place_of(p) is not None for p in prompts)


def test_generator_is_deterministic_and_matches_the_shipped_files(tmp_path):
    generator = _load_generator()
    generator.generate(tmp_path / "a", seed=0)
    generator.generate(tmp_path / "b", seed=1)
    for name in (*DATA_FILES, "corpus.txt"):
        assert (tmp_path / "a" / name).read_text() == (DATA / name).read_text(), name
    assert (tmp_path / "b" / "sft.jsonl").read_text() != (DATA / "sft.jsonl").read_text()


def test_shipped_datasets_have_the_documented_shape():
    train_prompts = {r["prompt"] for r in _rows("prompts.jsonl")}
    eval_prompts = {r["prompt"] for r in _rows("prompts_eval.jsonl")}
    assert train_prompts.isdisjoint(eval_prompts)
    assert {r["prompt"] for r in _rows("sft.jsonl")} <= train_prompts
    assert {r["prompt"] for r in _rows("rankings.jsonl")} <= train_prompts
    assert {r["prompt"] for r in _rows("pairs_eval.jsonl")} <= eval_prompts
    sft = _rows("sft.jsonl")
    assert all(r["completion"].startswith(" ") for r in sft)
    # demonstrations teach the format, not the preference: gold mean about 0
    assert abs(sum(gold_reward([r["prompt"] for r in sft], [r["completion"] for r in sft])) / len(sft)) < 0.1
    rankings = _rows("rankings.jsonl")
    assert all(len(r["responses"]) == 4 for r in rankings)
    # ranked by gold + noise: mostly, not always, in gold order
    agree = total = 0
    for r in rankings:
        for i, j in itertools.combinations(range(4), 2):
            gi, gj = gold_score(r["prompt"], r["responses"][i]), gold_score(r["prompt"], r["responses"][j])
            if gi != gj:
                total += 1
                agree += gi > gj
    assert 0.85 < agree / total < 0.99
    assert all(gold_score(r["prompt"], r["chosen"]) > gold_score(r["prompt"], r["rejected"]) for r in _rows("pairs_eval.jsonl"))
