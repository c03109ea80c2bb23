"""A reward function must return one real number per completion. What would convert silently into
nonsense (a dict's keys, a string's characters, numeric strings, a 2-D tensor, booleans) stops the run with
one line naming the function and showing what it returned, cut short; lists of floats or ints, 1-D tensors
and numpy arrays are taken."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhf.rl.rewards import RewardFunction

PROMPTS, COMPLETIONS = ["p"] * 8, ["c"] * 8


def _call(value):
    return RewardFunction(lambda prompts, completions: value, name="mytask:score")(PROMPTS, COMPLETIONS)


@pytest.mark.parametrize("value, shown", [
    ({i: 1.0 for i in range(8)}, "returned dict {0: 1.0, 1: 1.0"),
    ("11111111", "returned str '11111111'"),
    (["1.5"] * 8, "an element is str '1.5'"),
    (torch.ones(8, 1), "returned a 2-D Tensor of torch.float32"),
    ([True] * 8, "an element is bool True"),
    (torch.ones(8, dtype=torch.bool), "returned a 1-D Tensor of torch.bool"),
    (np.ones(8, dtype=bool), "returned a 1-D ndarray of bool"),
    (None, "returned NoneType None"),
    (3.0, "returned float 3.0"),
])
def test_a_wrong_type_is_one_line_naming_the_function_and_what_came_back(value, shown):
    with pytest.raises(ValueError) as err:
        _call(value)
    message = str(err.value)
    assert message.startswith("--reward_fn mytask:score: ") and shown in message, message
    assert "\n" not in message


def test_what_it_returned_is_shown_cut_short():
    with pytest.raises(ValueError) as err:
        _call("1" * 10_000)
    assert len(str(err.value)) < 200


@pytest.mark.parametrize("value", [
    [0.5] * 8, [1] * 8, (0.25,) * 8, torch.full((8,), 0.5), torch.arange(8), np.full(8, 0.5), np.arange(8),
    np.full(8, 0.5, dtype=np.float32),
])
def test_real_numbers_are_taken(value):
    scores = _call(value)
    assert scores.shape == (8,) and scores.dtype == torch.float32
    assert scores.tolist() == pytest.approx([float(v) for v in (value.tolist() if hasattr(value, "tolist") else value)])


def test_a_wrong_count_or_a_non_finite_score_is_named_too():
    with pytest.raises(ValueError, match=r"--reward_fn mytask:score: returned 3 scores for 8 completions"):
        _call([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"--reward_fn mytask:score: returned a non-finite score"):
        _call([float("nan")] * 8)
