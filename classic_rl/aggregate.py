"""Aggregate the final scores of many runs with rliable (Agarwal et al., "Deep RL at the edge of
the statistical precipice", 2021).

A run's score is the final greedy evaluation of ``classic-rl train`` (``eval_return_mean`` in its
``summary.json``). Scores are normalised per environment, ``(score - min) / (max - min)``, with the
range given by ``--score-range ENV=MIN:MAX``, else :data:`DEFAULT_SCORE_RANGES`, else the min and
max over the runs on that environment (a printed note says so). Per algorithm the normalised scores
form a (runs x environments) matrix (algorithms in alphabetical order, so that the same runs give
the same file however they were listed), and rliable's metrics give:

- IQM (mean of the middle 50% of all runs' scores), mean and median (of the per-environment means)
  and the optimality gap (how far the scores fall short of 1, clipped at 1), each with a
  stratified-bootstrap confidence interval (runs resampled within each environment);
- the performance profile: the fraction of runs scoring above each threshold tau, with its band;
- the probability of improvement P(X > Y) for every pair of algorithms, with its interval.

The metrics are rliable's own functions (``rliable.metrics``). The bootstrap is done here, the
way rliable's ``StratifiedBootstrap`` / ``StratifiedIndependentBootstrap`` do it (runs resampled
with replacement within each environment; percentile intervals), because rliable's runs on the
``arch`` package, and the ``arch`` releases rliable accepts (< 8) fail to import with pandas 3.
Every bootstrap starts from ``numpy.random.default_rng(seed)``, per algorithm (or pair), so the
results are reproducible and an algorithm's numbers do not depend on which others are compared.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from classic_rl.safe_io import UserError, atomic_write_json, atomic_write_text

INSTALL_HINT = 'pip install -e ".[benchmark]"'
DEFAULT_SCORE_RANGES: dict[str, tuple[float, float]] = {
    # The range of the episode return where it is bounded: worst possible .. best possible (or the
    # bound no policy passes: Acrobot and MountainCar pay -1 per step until the goal).
    "CartPole-v1": (0.0, 500.0),
    "CartPole-v0": (0.0, 200.0),
    "Acrobot-v1": (-500.0, 0.0),
    "MountainCar-v0": (-200.0, 0.0),
    "Pendulum-v1": (-1600.0, 0.0),
    # Unbounded returns: about a random policy's (-200) .. about the best landings' (300; 200 is "solved").
    "LunarLander-v3": (-200.0, 300.0),
    "LunarLanderContinuous-v3": (-200.0, 300.0),
    "LunarLander-v2": (-200.0, 300.0),
}
METRICS = ("iqm", "mean", "median", "optimality_gap")


def import_rliable_metrics() -> Any:
    try:
        from rliable import metrics  # numpy and scipy only (rliable.library would import arch)
    except ImportError:
        raise UserError(f"classic-rl benchmark needs rliable: {INSTALL_HINT} (or pip install rliable)") from None
    return metrics


@dataclass(frozen=True)
class RunScore:
    algo: str
    env: str
    seed: int
    score: float
    path: str


# ----------------------------------------------------------------------------- reading runs
def is_run_dir(path: Path) -> bool:
    from classic_rl.checkpoint import checkpoint_file

    return checkpoint_file(path, "config.yaml").is_file()


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Each path is a run directory, or a folder holding run directories (also under its ``runs/``)."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            raise UserError(f"--from {path}: no such directory")
        if is_run_dir(path):
            found.append(path)
            continue
        inside = [p for p in sorted(path.iterdir()) if p.is_dir() and is_run_dir(p)]
        if not inside and (path / "runs").is_dir():
            inside = [p for p in sorted((path / "runs").iterdir()) if p.is_dir() and is_run_dir(p)]
        if not inside:
            raise UserError(f"--from {path}: neither a run directory nor a folder of run directories "
                            "(none has a config.yaml)")
        found.extend(inside)
    return found


def read_run(run_dir: str | Path) -> RunScore:
    """The run's algo, env, seed and final evaluation; a run that did not finish is a one-line error."""
    from classic_rl.agents.base import Agent

    run_dir = Path(run_dir)
    meta = Agent.read_meta(run_dir)
    summary_path = run_dir / "summary.json"
    resume = f"classic-rl train {meta['algo']} {meta['env']} --resume {run_dir}"
    if not summary_path.is_file():
        raise UserError(f"{run_dir}: no summary.json, the run did not finish; resume it with `{resume}`")
    try:
        summary = json.loads(summary_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{summary_path}: damaged ({err})") from None
    if summary.get("interrupted"):
        raise UserError(f"{run_dir}: the run was stopped before its end; resume it with `{resume}`")
    score = summary.get("eval_return_mean")
    if score is None or not math.isfinite(float(score)):
        raise UserError(f"{run_dir}: summary.json has no final evaluation (trained with --eval-episodes 0?); "
                        f"evaluate it with `classic-rl eval {run_dir}` and train again with evaluation")
    return RunScore(meta["algo"], meta["env"], int(meta.get("seed", 0)), float(score), str(run_dir))


# ----------------------------------------------------------------------------- normalisation
def parse_score_ranges(items: list[str]) -> dict[str, tuple[float, float]]:
    """``["CartPole-v1=0:500", "Pendulum-v1=-1600:0"]`` -> ``{env: (min, max)}``."""
    ranges: dict[str, tuple[float, float]] = {}
    for item in items or []:
        env, sep, bounds = item.rpartition("=")
        low, colon, high = bounds.partition(":")
        try:
            pair = (float(low), float(high))
        except ValueError:
            pair = None
        if not sep or not env or not colon or pair is None:
            raise UserError(f"--score-range {item}: expected ENV=MIN:MAX, e.g. CartPole-v1=0:500")
        if not (math.isfinite(pair[0]) and math.isfinite(pair[1]) and pair[0] < pair[1]):
            raise UserError(f"--score-range {item}: MIN must be below MAX, both finite")
        ranges[env] = pair
    return ranges


def score_ranges_for(runs: list[RunScore], given: dict[str, tuple[float, float]]) -> dict[str, dict[str, Any]]:
    """Per env: the range used to normalise, and where it came from (given, built-in or observed)."""
    ranges: dict[str, dict[str, Any]] = {}
    for env in sorted({r.env for r in runs}):
        if env in given:
            low, high, source = *given[env], "--score-range"
        elif env in DEFAULT_SCORE_RANGES:
            low, high, source = *DEFAULT_SCORE_RANGES[env], "built-in"
        else:
            scores = [r.score for r in runs if r.env == env]
            low, high, source = min(scores), max(scores), "observed"
            print(f"note: no score range for {env}: normalising by the min and max over its runs "
                  f"({low:g}..{high:g}); give one with --score-range {env}=MIN:MAX")
        ranges[env] = {"min": low, "max": high, "source": source}
    return ranges


def normalise(score: float, span: dict[str, Any]) -> float:
    width = span["max"] - span["min"]
    return (score - span["min"]) / width if width > 0 else 0.0  # one observed value: nothing to compare


def score_matrices(runs: list[RunScore], ranges: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per algorithm, normalised scores as (runs x envs), rows in seed order, envs sorted. Every
    algorithm must have the same number of runs on every env (rliable's matrices are rectangular)."""
    envs = sorted(ranges)
    algos = sorted({r.algo for r in runs})  # not the command line's order: --from must give the same file
    matrices = {}
    for algo in algos:
        columns = []
        for env in envs:
            cell = sorted((r for r in runs if r.algo == algo and r.env == env), key=lambda r: (r.seed, r.path))
            if not cell:
                raise UserError(f"{algo} has no run on {env}; every algorithm needs runs on every environment "
                                "to be compared")
            columns.append([normalise(r.score, ranges[env]) for r in cell])
        if len({len(c) for c in columns}) > 1:
            counts = ", ".join(f"{len(c)} runs on {env}" for c, env in zip(columns, envs))
            raise UserError(f"{algo} has {counts}; give every environment the same number of runs")
        matrices[algo] = np.array(columns, dtype=float).T
    return matrices


# ----------------------------------------------------------------------------- bootstrap
def stratified_bootstrap(func: Callable[..., Any], samples: tuple[np.ndarray, ...], reps: int,
                         rng: np.random.Generator) -> np.ndarray:
    """``func(*resampled)`` for ``reps`` resamples, as rows of an array: in each (runs x envs)
    sample, every environment's runs are drawn with replacement on their own (the strata), and
    several samples (two algorithms) are resampled independently."""
    stats = []
    for _ in range(reps):
        resampled = []
        for sample in samples:
            rows = rng.integers(0, sample.shape[0], size=sample.shape)
            resampled.append(np.take_along_axis(sample, rows, axis=0))
        stats.append(np.atleast_1d(func(*resampled)))
    return np.array(stats)


def percentile_interval(stats: np.ndarray, confidence: float) -> np.ndarray:
    """(2, k): the lower and upper percentile bounds of each statistic."""
    tail = 100.0 * (1.0 - confidence) / 2.0
    return np.percentile(stats, [tail, 100.0 - tail], axis=0)


def interval_estimate(func: Callable[..., Any], samples: tuple[np.ndarray, ...], reps: int, seed: int,
                      confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """(point estimates, (2, k) interval) of ``func`` on ``samples``."""
    point = np.atleast_1d(func(*samples)).astype(float)
    stats = stratified_bootstrap(func, samples, reps, np.random.default_rng(seed))
    return point, percentile_interval(stats, confidence)


def probability_of_improvement(scores_x: np.ndarray, scores_y: np.ndarray) -> float:
    """rliable's P(X > Y): per environment the Mann-Whitney U statistic over n_x * n_y (a tie counts
    half), averaged over environments. Computed directly: ``rliable.metrics.probability_of_improvement``
    calls scipy's test, whose per-call overhead dominates thousands of bootstrap resamples (the
    tests check that both agree)."""
    x, y = scores_x[:, None, :], scores_y[None, :, :]
    per_env = np.mean(x > y, axis=(0, 1)) + 0.5 * np.mean(x == y, axis=(0, 1))
    return float(np.mean(per_env))


def aggregate_scores(matrices: dict[str, np.ndarray], reps: int, seed: int,
                     confidence: float = 0.95) -> dict[str, Any]:
    """Point estimates and stratified-bootstrap intervals of every metric, the performance profile
    and the probabilities of improvement (see the module docstring)."""
    metrics = import_rliable_metrics()

    def all_metrics(scores: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(scores), metrics.aggregate_mean(scores),
                         metrics.aggregate_median(scores), metrics.aggregate_optimality_gap(scores)])

    algorithms: dict[str, Any] = {}
    for algo, scores in matrices.items():
        point, ci = interval_estimate(all_metrics, (scores,), reps, seed, confidence)
        entry: dict[str, Any] = {"runs": int(scores.size)}
        for i, name in enumerate(METRICS):
            entry[name] = float(point[i])
            entry[f"{name}_ci"] = [float(ci[0][i]), float(ci[1][i])]
        algorithms[algo] = entry

    everything = np.concatenate([m.ravel() for m in matrices.values()])
    tau = np.linspace(min(0.0, float(everything.min())), max(1.0, float(everything.max())), 101)

    def profile_of(scores: np.ndarray) -> np.ndarray:  # rliable's score distribution: P(score > tau)
        return np.mean(scores.ravel()[None, :] > tau[:, None], axis=1)

    profile: dict[str, Any] = {"tau": tau.tolist(), "algorithms": {}}
    for algo, scores in matrices.items():
        fraction, band = interval_estimate(profile_of, (scores,), reps, seed, confidence)
        profile["algorithms"][algo] = {"fraction": fraction.tolist(), "ci_low": band[0].tolist(),
                                       "ci_high": band[1].tolist()}

    names = list(matrices)
    improvement = []
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            point, ci = interval_estimate(probability_of_improvement, (matrices[x], matrices[y]), reps, seed,
                                          confidence)
            improvement.append({"x": x, "y": y, "probability": float(point[0]),
                                "ci": [float(ci[0][0]), float(ci[1][0])]})
    return {"algorithms": algorithms, "probability_of_improvement": improvement, "performance_profile": profile}


# ----------------------------------------------------------------------------- results
def write_results(runs: list[RunScore], out: str | Path, given_ranges: dict[str, tuple[float, float]],
                  reps: int, seed: int, confidence: float = 0.95) -> dict[str, Any]:
    """Aggregate ``runs`` and write ``results.json``, ``results.md`` and the two figures into ``out``."""
    from classic_rl.summary_plots import interval_estimates_figure, performance_profile_figure, save_figure

    if reps < 1:
        raise UserError(f"--reps must be a positive integer, got {reps}")
    if not runs:
        raise UserError("no runs to aggregate")
    runs = sorted(runs, key=lambda r: (r.algo, r.env, r.seed, r.path))
    ranges = score_ranges_for(runs, given_ranges)
    matrices = score_matrices(runs, ranges)
    results = {
        "metric": "final greedy evaluation (summary.json eval_return_mean), normalised per env",
        "confidence": confidence, "reps": reps, "seed": seed,
        "envs": sorted(ranges), "score_ranges": ranges,
        **aggregate_scores(matrices, reps, seed, confidence),
        "runs": [{"algo": r.algo, "env": r.env, "seed": r.seed, "score": r.score,
                  "normalised": normalise(r.score, ranges[r.env]), "path": r.path} for r in runs],
    }
    out = Path(out)
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", results_markdown(results))
    save_figure(interval_estimates_figure(results["algorithms"], confidence), out / "aggregate_intervals.png")
    save_figure(performance_profile_figure(results["performance_profile"]), out / "performance_profile.png")
    return results


def results_markdown(results: dict[str, Any]) -> str:
    def cell(entry: dict[str, Any], name: str) -> str:
        low, high = entry[f"{name}_ci"]
        return f"{entry[name]:.3f} [{low:.3f}, {high:.3f}]"

    level = f"{results['confidence']:.0%}"
    lines = [f"Normalised scores on {', '.join(results['envs'])}; {level} stratified-bootstrap intervals "
             f"({results['reps']} resamples, seed {results['seed']}).", "",
             "| algorithm | runs | IQM | mean | median | optimality gap |", "|---|---|---|---|---|---|"]
    for algo, entry in results["algorithms"].items():
        lines.append(f"| {algo} | {entry['runs']} | " + " | ".join(cell(entry, m) for m in METRICS) + " |")
    if results["probability_of_improvement"]:
        lines += ["", "| P(X > Y) | value | interval |", "|---|---|---|"]
        for pair in results["probability_of_improvement"]:
            lines.append(f"| P({pair['x']} > {pair['y']}) | {pair['probability']:.3f} | "
                         f"[{pair['ci'][0]:.3f}, {pair['ci'][1]:.3f}] |")
    return "\n".join(lines) + "\n"
