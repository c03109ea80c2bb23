"""The benchmark script's summary: final snapshot, second-half periodic mean, threshold, ratios."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_classic.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_classic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _run(impl, seed, final, evals, cpu, reached=None):
    return {"algo": "dqn", "env": "CartPole-v1", "impl": impl, "seed": seed, "steps": 100, "steps_done": 100,
            "eval_mean": final, "evals": evals, "steps_to_threshold": reached, "wall_s": cpu * 2, "cpu_s": cpu}


def test_summary_reports_second_half_mean_beside_the_final_snapshot(bench):
    runs = [
        _run("ours", 0, 20.0, [(25, 10.0), (50, 30.0), (75, 500.0), (100, 300.0)], cpu=1.0, reached=75),
        _run("ours", 1, 500.0, [(50, 100.0), (100, 500.0)], cpu=3.0),
        _run("sb3", 0, 400.0, [], cpu=8.0),
    ]
    ours, sb3 = bench.summarize(runs)
    assert ours["eval_mean"] == pytest.approx(260.0) and ours["eval_std"] == pytest.approx(240.0)
    # seed 0: evals after step 50 -> (500 + 300) / 2; seed 1: 500; mean over seeds
    assert ours["late"] == pytest.approx((400.0 + 500.0) / 2)
    assert ours["to_threshold"] == 75 and ours["reached"] == "1/2"
    assert ours["cpu_ratio"] == pytest.approx(2.0 / 8.0)
    assert sb3["late"] is None  # no periodic evaluations
    table = bench.markdown_table([ours, sb3])
    assert "| 450.0 |" in table and "| 260.0 ± 240.0 |" in table and "| 0.25 |" in table


def test_sb3_set_changes_only_the_config_sb3_is_built_from(bench, monkeypatch):
    seen = {}

    class Captured(Exception):
        pass

    def capture(impl):
        def build(cfg, env, seed):
            seen[impl] = list(cfg.hidden)
            raise Captured
        return build

    monkeypatch.setitem(bench.BENCHMARKS, "ddpg", bench.Benchmark("ddpg", capture("sb3")))
    spec = {"algo": "ddpg", "env": "Pendulum-v1", "seed": 0, "impl": "sb3", "steps": 10, "eval_every": 0,
            "eval_every_episodes": 1, "eval_episodes": 1, "overrides": {"hidden": [8, 8]},
            "sb3_overrides": {"hidden": [16, 12]}}
    with pytest.raises(Captured):
        bench.run_one(spec)
    assert seen["sb3"] == [16, 12]
    spec.pop("sb3_overrides")
    with pytest.raises(Captured):
        bench.run_one(spec)
    assert seen["sb3"] == [8, 8]  # without it SB3 gets ours' settings (--set applies to both)
