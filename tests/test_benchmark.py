"""`classic-rl benchmark`: rliable's aggregate metrics against hand-computed values, and the whole
command on tiny budgets (parallel runs, resuming, --from re-aggregation, bad input in one line)."""

import json
import sys

import numpy as np
import pytest

pytest.importorskip("rliable")
from rliable import metrics  # noqa: E402

from classic_rl.aggregate import (  # noqa: E402
    RunScore,
    aggregate_scores,
    parse_score_ranges,
    probability_of_improvement,
    score_matrices,
    score_ranges_for,
    write_results,
)
from classic_rl.cli import main  # noqa: E402
from classic_rl.safe_io import UserError  # noqa: E402

# Raw returns on an env whose range is given as 0..100: normalised a = .1 .4 .6 1.3, b = .2 .3 .5 1.2
RAW = {"a": [10.0, 40.0, 60.0, 130.0], "b": [20.0, 30.0, 50.0, 120.0]}


def toy_runs():
    return [RunScore(algo, "Toy-v0", seed, score, f"{algo}-{seed}") for algo, scores in RAW.items()
            for seed, score in enumerate(scores)]


def test_aggregates_of_a_small_score_matrix_are_the_hand_computed_ones():
    ranges = score_ranges_for(toy_runs(), {"Toy-v0": (0.0, 100.0)})
    matrices = score_matrices(toy_runs(), ranges)
    np.testing.assert_allclose(matrices["a"][:, 0], [0.1, 0.4, 0.6, 1.3])
    results = aggregate_scores(matrices, reps=500, seed=3)
    a, b = results["algorithms"]["a"], results["algorithms"]["b"]
    # IQM of 4 runs: the mean of the middle two; median: of the per-env means (one env here: the mean);
    # optimality gap: 1 - mean(min(score, 1)).
    assert a["iqm"] == pytest.approx((0.4 + 0.6) / 2) and b["iqm"] == pytest.approx((0.3 + 0.5) / 2)
    assert a["mean"] == pytest.approx(0.6) and b["mean"] == pytest.approx(0.55)
    assert a["median"] == pytest.approx(0.6) and b["median"] == pytest.approx(0.55)
    assert a["optimality_gap"] == pytest.approx(1 - (0.1 + 0.4 + 0.6 + 1.0) / 4)
    assert b["optimality_gap"] == pytest.approx(1 - (0.2 + 0.3 + 0.5 + 1.0) / 4)
    assert a["runs"] == b["runs"] == 4
    # P(a > b): of the 16 pairs, a's 0.4 beats 2 of b's, 0.6 beats 3 and 1.3 beats all 4.
    (pair,) = results["probability_of_improvement"]
    assert (pair["x"], pair["y"]) == ("a", "b") and pair["probability"] == pytest.approx(9 / 16)
    for entry in (a, b):
        for name in ("iqm", "mean", "median", "optimality_gap"):
            low, high = entry[f"{name}_ci"]
            assert low <= entry[name] <= high and low < high
    assert pair["ci"][0] <= pair["probability"] <= pair["ci"][1]
    # Seeded: the same seed gives the same intervals, another seed other ones.
    assert aggregate_scores(matrices, reps=500, seed=3) == results
    assert aggregate_scores(matrices, reps=500, seed=4)["algorithms"]["a"]["mean_ci"] != a["mean_ci"]


def test_probability_of_improvement_is_rliables():
    rng = np.random.default_rng(0)
    for _ in range(20):  # small integer scores: ties included
        x, y = rng.integers(0, 4, (5, 3)).astype(float), rng.integers(0, 4, (7, 3)).astype(float)
        assert probability_of_improvement(x, y) == pytest.approx(metrics.probability_of_improvement(x, y))
    x = rng.random((4, 2))
    assert probability_of_improvement(x, x) == metrics.probability_of_improvement(x, x) == 0.5


def test_score_ranges_given_built_in_or_observed_with_a_note(capsys):
    runs = [RunScore("a", env, 0, score, "p") for env, score in
            (("CartPole-v1", 250.0), ("Toy-v0", 3.0), ("Toy-v0", 5.0), ("Pendulum-v1", -400.0))]
    ranges = score_ranges_for(runs, parse_score_ranges(["Pendulum-v1=-2000:0"]))
    assert ranges["CartPole-v1"] == {"min": 0.0, "max": 500.0, "source": "built-in"}
    assert ranges["Pendulum-v1"] == {"min": -2000.0, "max": 0.0, "source": "--score-range"}
    assert ranges["Toy-v0"] == {"min": 3.0, "max": 5.0, "source": "observed"}
    assert "no score range for Toy-v0" in capsys.readouterr().out
    for bad in ("CartPole-v1", "CartPole-v1=0", "CartPole-v1=a:b", "CartPole-v1=5:1", "=0:1"):
        with pytest.raises(UserError, match="--score-range"):
            parse_score_ranges([bad])


def test_algorithms_need_the_same_runs_on_every_env(tmp_path):
    runs = toy_runs() + [RunScore("a", "Other-v0", seed, 1.0, "x") for seed in range(4)]
    with pytest.raises(UserError, match="b has no run on Other-v0"):
        write_results(runs, tmp_path, {}, reps=10, seed=0)
    with pytest.raises(UserError, match="a has 1 runs on Other-v0, 4 runs on Toy-v0"):
        write_results([*toy_runs(), runs[-1]], tmp_path, {}, reps=10, seed=0)


BENCH = ["benchmark", "ppo", "a2c", "--env", "CartPole-v1", "--seeds", "3", "--steps", "1000", "--eval-episodes", "3",
         "--reps", "300", "--workers", "2"]


def test_benchmark_runs_in_parallel_resumes_and_reaggregates(tmp_path, capsys, ctrl_c_at_step):
    from classic_rl.train import train_run

    out = tmp_path / "bench"
    # One run was stopped by Ctrl-C before the benchmark: it is resumed, not restarted.
    undo = ctrl_c_at_step(300)
    agent, stopped = train_run("ppo", "CartPole-v1", steps=1000, seed=0, out=out / "runs" / "ppo-CartPole-v1-seed0",
                               quiet=True, eval_episodes=3)
    agent.close()
    undo()
    assert stopped["interrupted"]
    capsys.readouterr()

    assert main([*BENCH, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "6 runs to do of 6, 2 at a time" in printed
    assert "ppo on CartPole-v1 seed 0: eval return" in printed and "(resumed," in printed
    assert printed.count("(new run,") == 5
    results = json.loads((out / "results.json").read_text())
    assert list(results["algorithms"]) == ["a2c", "ppo"]
    for entry in results["algorithms"].values():
        assert entry["runs"] == 3
        for name in ("iqm", "mean", "median", "optimality_gap"):
            low, high = entry[f"{name}_ci"]
            assert low <= entry[name] <= high
    assert [(p["x"], p["y"]) for p in results["probability_of_improvement"]] == [("a2c", "ppo")]
    assert results["score_ranges"]["CartPole-v1"] == {"min": 0.0, "max": 500.0, "source": "built-in"}
    scores = {(r["algo"], r["seed"]): r["score"] for r in results["runs"]}
    for (algo, seed), score in scores.items():
        summary = json.loads((out / "runs" / f"{algo}-CartPole-v1-seed{seed}" / "summary.json").read_text())
        assert summary["eval_return_mean"] == score and summary["steps"] >= 1000
    for name in ("results.md", "aggregate_intervals.png", "performance_profile.png"):
        assert (out / name).stat().st_size > 0

    # A rerun trains nothing; --from gives the same results.json.
    assert main([*BENCH, "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("skip ") == 6
    assert json.loads((out / "results.json").read_text()) == results
    again = tmp_path / "again"
    assert main(["benchmark", "--from", str(out / "runs"), "--out", str(again), "--reps", "300"]) == 0
    assert json.loads((again / "results.json").read_text()) == results


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("argv, words", [
    (["ppoo", "--env", "CartPole-v1", "--seeds", "1", "--steps", "10"], ["Unknown algorithm 'ppoo'"]),
    (["ppo", "--env", "CartPol-v1", "--seeds", "1", "--steps", "10"], ["Unknown environment 'CartPol-v1'"]),
    (["sac", "--env", "CartPole-v1", "--seeds", "1", "--steps", "10"], ["sac needs a continuous action space"]),
    (["ppo", "--env", "CartPole-v1", "--seeds", "0", "--steps", "10"], ["--seeds must be a positive integer"]),
    (["ppo", "--env", "CartPole-v1", "--steps", "10"], ["benchmark needs --seeds"]),
    (["ppo", "--env", "CartPole-v1", "--seeds", "1", "--steps", "10", "--score-range", "CartPole-v1=1"],
     ["--score-range CartPole-v1=1: expected ENV=MIN:MAX"]),
    (["ppo", "--from", "nowhere"], ["--from aggregates existing runs: drop ALGO"]),
    (["--from", "nowhere"], ["--from nowhere: no such directory"]),
])
def test_bad_input_is_one_line_and_trains_nothing(tmp_path, capsys, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    assert main(["benchmark", *argv, "--out", "bench"]) == 2
    err = one_line_error(capsys)
    for word in words:
        assert word in err
    assert not (tmp_path / "bench" / "runs").exists()


def test_without_rliable_one_line_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "rliable", None)  # `from rliable import metrics` now raises ImportError
    argv = ["benchmark", "ppo", "--env", "CartPole-v1", "--seeds", "1", "--steps", "10", "--out", str(tmp_path / "b")]
    assert main(argv) == 2
    assert 'pip install -e ".[benchmark]"' in one_line_error(capsys)
    assert not (tmp_path / "b").exists()
