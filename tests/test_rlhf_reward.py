"""`rlhf reward`: the K-wise ranking loss against hand-computed values, the batch layout, learning on the
shipped rankings (held-out accuracy), and the calibration that centres the SFT policy's scores at 0."""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch
from rlhf.reward import (
    DataCollatorForRanking,
    RewardArguments,
    calibration_pairs,
    correct_pairs,
    kwise_ranking_loss,
    main,
    scores_by_prompt,
)

pytest_plugins = [f"{__package__}.rlhf_fixtures" if __package__ else "rlhf_fixtures"]
pytest.register_assert_rewrite(pytest_plugins[0])
fixtures = importlib.import_module(pytest_plugins[0])  # its flag helpers


def _softplus(x: float) -> float:  # -log sigmoid(d) = log(1 + exp(-d))
    return math.log1p(math.exp(-x))


def test_kwise_loss_matches_a_hand_computed_example():
    # one prompt, K = 3, scores best..worst = 3, 1, 0: pairs (3-1), (3-0), (1-0), each weighted 1/C(3,2)
    loss = kwise_ranking_loss(torch.tensor([[3.0, 1.0, 0.0]]))
    expected = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-3)) + math.log1p(math.exp(-1))) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.1629258, abs=1e-6)


def test_kwise_loss_weights_each_prompt_once_whatever_its_k():
    # prompt A: K = 4 in order (0.5 apart); prompt B: K = 2 (padded), ranked the wrong way round
    rewards = torch.tensor([[1.5, 1.0, 0.5, 0.0], [-1.0, 1.0, 9.0, 9.0]])
    loss = kwise_ranking_loss(rewards, num_responses=torch.tensor([4, 2]))
    a = (3 * _softplus(0.5) + 2 * _softplus(1.0) + _softplus(1.5)) / 6
    b = _softplus(-2.0)
    assert loss.item() == pytest.approx((a + b) / 2, abs=1e-6)


def test_kwise_loss_is_bradley_terry_for_pairs_and_honours_margins():
    chosen, rejected = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([1.0, 0.5, 1.0])
    pairs = torch.stack([chosen, rejected], dim=1)
    bt = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
    assert kwise_ranking_loss(pairs).item() == pytest.approx(bt.item(), abs=1e-6)
    margin = torch.tensor([0.5, 0.0, 1.0])
    with_margin = -torch.nn.functional.logsigmoid(chosen - rejected - margin).mean()
    assert kwise_ranking_loss(pairs, margin=margin).item() == pytest.approx(with_margin.item(), abs=1e-6)
    assert kwise_ranking_loss(pairs, margin=1.0).item() > kwise_ranking_loss(pairs).item()


def test_kwise_loss_gradient_pushes_better_responses_up():
    rewards = torch.zeros(1, 4, requires_grad=True)
    kwise_ranking_loss(rewards).backward()
    # at equal scores each pair pulls its winner up and its loser down by sigmoid(0) / C(4,2) = 1/12
    assert torch.allclose(rewards.grad, torch.tensor([[-3.0, -1.0, 1.0, 3.0]]) / 12)


def test_batch_layout_and_pair_accuracy():
    examples = [
        {"responses_ids": [[5, 6, 7], [5, 8], [5, 9, 9, 9]]},
        {"responses_ids": [[3], [4, 4]], "margin": 0.5},
    ]
    batch = DataCollatorForRanking(pad_token_id=0, default_margin=0.25)(examples)
    assert batch["input_ids"].shape == (5, 4)
    assert batch["input_ids"][1].tolist() == [5, 8, 0, 0] and batch["attention_mask"][1].tolist() == [1, 1, 0, 0]
    assert batch["num_responses"].tolist() == [3, 2]
    assert batch["margin"].tolist() == [0.25, 0.5]
    scores = torch.tensor([3.0, 1.0, 2.0, 0.0, 1.0])
    grouped = scores_by_prompt(scores, batch["num_responses"])
    assert grouped.tolist() == [[3.0, 1.0, 2.0], [0.0, 1.0, 0.0]]
    right, total = correct_pairs(grouped, batch["num_responses"])
    assert right.tolist() == [2, 0] and total.tolist() == [3, 1]


@pytest.mark.slow
def test_reward_model_learns_the_preference_from_rankings(rlhf_reward_run):
    path, summary = rlhf_reward_run
    assert summary["dataset_format"] == "ranking" and summary["world_size"] == 1
    assert summary["eval_accuracy"] >= 0.75  # held-out pairs labelled by the gold scorer
    assert summary["eval_accuracy"] > summary["eval_accuracy_before"] + 0.2
    assert summary["calibration_source"] == "policy samples"
    logged = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [10, 20, 30, 40]
    assert "eval_accuracy" in logged[-1]


def test_calibration_centres_the_sft_policy_at_zero(rlhf_reward_run, rlhf_sft_run):
    from datasets import load_dataset
    from rlhf.evaluate import mean, reward_model_scores
    from rlhf.models import load_reward_model, load_tokenizer

    path, summary = rlhf_reward_run
    tokenizer = load_tokenizer(str(path))
    train = load_dataset("json", data_files=str(fixtures.DATA / "rankings.jsonl"), split="train")
    args = RewardArguments(calibration_dataset=str(fixtures.DATA / "prompts.jsonl"), calibration_num_samples=32)
    prompts, responses, source = calibration_pairs(args, str(rlhf_sft_run[0]), tokenizer, train, 0, torch.device("cpu"))
    assert source == "policy samples" and len(responses) == 32
    model = load_reward_model(str(path), tokenizer)
    assert mean(reward_model_scores(model, tokenizer, prompts, responses)) == pytest.approx(0.0, abs=1e-4)
    assert summary["score_bias"] == pytest.approx(-summary["calibration_mean_before"], abs=1e-5)


def test_pairs_dataset_trains_with_bradley_terry(rlhf_sft_run, tmp_path):
    summary = main(fixtures.reward_flags(
        rlhf_sft_run[0], tmp_path / "rm", "--dataset_name", str(fixtures.DATA / "pairs_eval.jsonl"),
        "--max_steps", "2", "--calibrate", "false", "--eval_holdout_fraction", "0.1",
    ))
    assert summary["dataset_format"] == "preference" and "score_bias" not in summary
    assert summary["eval_accuracy"] is not None


def test_reward_dataset_with_wrong_columns_names_the_formats(rlhf_sft_run, tmp_path):
    data = tmp_path / "sft_like.jsonl"
    data.write_text(json.dumps({"prompt": "p", "completion": " c"}) + "\n")
    with pytest.raises(ValueError, match=r"\{prompt, chosen, rejected\} or \{prompt, responses\}"):
        main(fixtures.reward_flags(rlhf_sft_run[0], tmp_path / "rm", "--dataset_name", str(data)))
    assert not (tmp_path / "rm").exists() and not (tmp_path / ".rm.partial").exists()
