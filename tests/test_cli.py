"""The `classic-rl` command: run directory contents, listing, evaluation and clear errors."""

import csv
import json

import pytest
import yaml

import classic_rl
from classic_rl.cli import main


def test_train_writes_the_run_directory(tmp_path, capsys):
    out = tmp_path / "ql"
    code = main(["train", "q_learning", "CliffWalking-v1", "--episodes", "200", "--seed", "3",
                 "--set", "alpha=0.5", "epsilon=0.1", "--out", str(out), "--quiet"])
    assert code == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["algo"] == "q_learning" and config["env"] == "CliffWalking-v1" and config["seed"] == 3
    assert config["config"]["alpha"] == 0.5 and "epsilon_schedule" in config["config"]  # every resolved setting
    rows = list(csv.DictReader(open(out / "episodes.csv")))
    assert len(rows) == 200 and list(rows[0]) == ["step", "episode", "return", "length", "wall_s"]
    assert int(rows[-1]["step"]) == sum(int(r["length"]) for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("algo", "env", "seed", "steps", "wall_s", "eval_episodes", "eval_return_mean", "eval_return_std"):
        assert key in summary
    assert summary["eval_return_mean"] == -13.0  # the greedy edge path
    assert (out / "model.safetensors").is_file() and any((out / "tb").iterdir())
    agent = classic_rl.load(out)
    assert agent.num_episodes == 200 and agent.act(36) == 0  # start state: step up, then along the edge


def test_same_seed_repeats_the_run(tmp_path):
    for name in ("a", "b"):
        assert main(["train", "sarsa", "CliffWalking-v1", "--episodes", "50", "--seed", "1",
                     "--out", str(tmp_path / name), "--quiet", "--eval-episodes", "1"]) == 0
    returns = [[r["return"] for r in csv.DictReader(open(tmp_path / n / "episodes.csv"))] for n in ("a", "b")]
    assert returns[0] == returns[1]


def test_dynamic_programming_agent_solves_the_4x3_world(tmp_path):
    assert main(["train", "value_iteration", "GridWorld4x3-v0", "--set", "gamma=1.0",
                 "--out", str(tmp_path / "vi"), "--quiet"]) == 0
    agent = classic_rl.load(tmp_path / "vi")
    start = agent.env.unwrapped.grid.start
    assert agent.v[start] == pytest.approx(0.705, abs=1e-3)  # Russell & Norvig's value of the start
    assert json.loads((tmp_path / "vi" / "summary.json").read_text())["eval_return_mean"] > 0.5


def test_list_names_every_algorithm(capsys):
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    for name in ("value_iteration", "sarsa", "q_learning", "expected_sarsa"):
        assert name in listed


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "sarsaa", "CliffWalking-v1"], "Valid names"),
        (["train", "sarsa", "CliffWalkin-v1"], "CliffWalking-v1"),
        (["train", "sarsa", "CliffWalking-v1", "--set", "alhpa=0.1"], "Valid keys"),
        (["train", "sarsa", "CliffWalking-v1", "--set", "gamma=1.5"], "gamma"),
        (["train", "value_iteration", "CartPole-v1"], "Discrete observation"),
        (["train", "sarsa", "CliffWalking-v1", "--env-kwargs", "{bad json"], "JSON"),
        (["train", "sarsa", "CliffWalking-v1", "--episodes", "0"], "positive"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys, argv, expected):
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out), "--quiet"]) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_existing_nonempty_out_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["train", "sarsa", "CliffWalking-v1", "--episodes", "5", "--out", str(out), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"


def test_plot_draws_curves_and_the_grid_value_heatmap(tmp_path, capsys):
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"ql{seed}"
        assert main(["train", "q_learning", "GridWorld4x3-v0", "--episodes", "100", "--seed", str(seed),
                     "--set", "gamma=0.99", "--out", str(run), "--quiet", "--eval-episodes", "1"]) == 0
        runs.append(str(run))
    out = tmp_path / "curves.png"
    assert main(["plot", *runs, "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    for run in runs:
        assert (tmp_path / run / "values.png").stat().st_size > 10_000
    assert main(["plot", str(tmp_path / "missing")]) == 2


def test_eval_repeats_the_number_training_reported(tmp_path, capsys):
    """Training's final evaluation and `classic-rl eval RUN` use one default seed (10000) and the
    run's episode count, so the same agent gives the same number (they used to differ: 123)."""
    run = tmp_path / "sac"
    assert main(["train", "sac", "Pendulum-v1", "--steps", "600", "--set", "learning_starts=200",
                 "--eval-episodes", "2", "--out", str(run), "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_seed"] == 10_000 and summary["eval_episodes"] == 2
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["seed"] == 10_000 and result["episodes"] == 2
    assert result["eval_return_mean"] == summary["eval_return_mean"]
    assert result["eval_return_std"] == summary["eval_return_std"]
    assert main(["eval", str(run), "--seed", "123"]) == 0  # another seed is another number, said in the output
    other = json.loads(capsys.readouterr().out)
    assert other["seed"] == 123 and other["eval_return_mean"] != summary["eval_return_mean"]
