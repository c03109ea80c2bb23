"""Greedy evaluation: episodes that cannot end are capped and explained, never NaN; DP reports sweeps."""

import json

import gymnasium as gym
import numpy as np
import pytest

import classic_rl
from classic_rl.cli import main as cli
from classic_rl.evaluation import EvaluationCapWarning, evaluate, evaluate_episodes
from classic_rl.tabular import policy_iteration, value_iteration


class Always:
    """A fixed-action agent: action 0 is 'up', which bumps into the top wall of Cliff Walking forever."""

    def __init__(self, action):
        self.action = action

    def act(self, obs, deterministic=True):
        return self.action


def test_a_policy_that_never_ends_gets_a_capped_return_and_a_note():
    result = evaluate_episodes(Always(0), "CliffWalking-v1", episodes=3, max_steps=50)
    assert result.returns == [-50.0] * 3 and result.lengths == [50] * 3 and result.capped == 3
    assert "3 of 3 evaluation episodes did not end within 50 steps" in result.note
    with pytest.warns(EvaluationCapWarning, match="did not end within 50 steps"):
        mean, std = evaluate(Always(0), "CliffWalking-v1", episodes=2, max_steps=50)
    assert (mean, std) == (-50.0, 0.0)


def test_episodes_that_end_by_themselves_are_not_capped():
    # CartPole's own time limit ends episodes: truncation by the env is not a cap of the evaluation.
    result = evaluate_episodes(Always(1), "CartPole-v1", episodes=2)
    assert result.capped == 0 and result.note is None and all(n < 500 for n in result.lengths)


def test_summary_json_has_no_nan_when_not_evaluated(tmp_path, capsys):
    cli(["train", "sarsa", "CliffWalking-v1", "--episodes", "5", "--out", str(tmp_path / "r"), "--quiet",
         "--eval-episodes", "0"])
    text = (tmp_path / "r" / "summary.json").read_text()
    assert "NaN" not in text and json.loads(text)["eval_return_mean"] is None
    assert "not evaluated" in capsys.readouterr().out


def test_dynamic_programming_reports_sweeps_not_steps(tmp_path, capsys):
    env = gym.make("GridWorld4x3-v0").unwrapped
    stats = {}
    value_iteration(env.P, 1.0, stats=stats)
    assert stats["sweeps"] > 5
    pi_stats = {}
    V_pi, _ = policy_iteration(env.P, 1.0, stats=pi_stats)
    assert pi_stats["improvements"] >= 2 and pi_stats["sweeps"] >= pi_stats["improvements"]
    cli(["train", "value_iteration", "GridWorld4x3-v0", "--set", "gamma=1.0", "--out", str(tmp_path / "vi"),
         "--quiet"])
    out = capsys.readouterr().out
    assert f"value iteration converged in {stats['sweeps']} sweeps" in out and "0 steps" not in out
    assert json.loads((tmp_path / "vi" / "summary.json").read_text())["solve"] == {"sweeps": stats["sweeps"]}
    np.testing.assert_allclose(classic_rl.load(tmp_path / "vi").v, V_pi, atol=1e-6)


def test_the_cli_prints_the_cap_note_as_one_plain_line(tmp_path, capsys):
    # five episodes teach Q-learning nothing: its greedy policy walks into a wall until the cap
    assert cli(["train", "q_learning", "CliffWalking-v1", "--episodes", "5", "--out", str(tmp_path / "r"),
                "--quiet", "--eval-episodes", "2"]) == 0
    err = capsys.readouterr().err
    assert "classic-rl train: note: 2 of 2 evaluation episodes did not end within" in err
    assert "EvaluationCapWarning" not in err and "return evaluate(" not in err  # not Python's warning form
