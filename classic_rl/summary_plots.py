"""Figures of a tuning study and of a benchmark (PNG), drawn as :mod:`classic_rl.plots` draws:
on ``matplotlib.figure.Figure`` (Agg canvas), never through pyplot's global state.

- :func:`optimization_history_figure`: each trial's value by trial number (pruned trials at their
  last reported evaluation) and the best value so far.
- :func:`param_importances_figure`: Optuna's parameter importances as horizontal bars.
- :func:`interval_estimates_figure`: rliable-style aggregate metrics (IQM, mean, median,
  optimality gap) per algorithm with their bootstrap confidence intervals.
- :func:`performance_profile_figure`: the fraction of runs above each normalised score, with its
  confidence band, per algorithm.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from classic_rl.safe_io import atomic_write_bytes


def save_figure(fig: Figure, out: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``out`` atomically; returns the path."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(out, buffer.getvalue())
    return Path(out)


def optimization_history_figure(trials: list[Any], title: str) -> Figure:
    """Optuna ``FrozenTrial``s -> values by trial number, with the running best of the complete ones."""
    from optuna.trial import TrialState

    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.subplots()
    complete = [(t.number, t.value) for t in trials if t.state == TrialState.COMPLETE]
    pruned = [(t.number, t.intermediate_values[t.last_step]) for t in trials
              if t.state == TrialState.PRUNED and t.last_step is not None]
    if complete:
        ax.scatter(*zip(*complete), label="complete", color="tab:blue", zorder=3)
        best, running = [], float("-inf")
        for _, value in complete:
            running = max(running, value)
            best.append(running)
        ax.step([n for n, _ in complete], best, where="post", color="tab:red", label="best so far")
    if pruned:
        ax.scatter(*zip(*pruned), label="pruned (last evaluation)", color="tab:gray", marker="x", zorder=3)
    ax.set_xlabel("trial")
    ax.set_ylabel("mean greedy return")
    ax.set_title(f"optimisation history: {title}")
    ax.grid(alpha=0.3)
    if complete or pruned:
        ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no finished trial yet", ha="center", va="center", transform=ax.transAxes)
    return fig


def param_importances_figure(importances: dict[str, float], title: str) -> Figure:
    names = list(importances)[::-1]  # most important on top
    fig = Figure(figsize=(7.0, 0.8 + 0.4 * len(names)), layout="constrained")
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (share of the value's variation)")
    ax.set_title(f"parameter importances: {title}")
    ax.grid(alpha=0.3, axis="x")
    return fig


METRIC_TITLES = {"iqm": "IQM", "median": "median", "mean": "mean", "optimality_gap": "optimality gap"}


def interval_estimates_figure(algorithms: dict[str, dict[str, Any]], confidence: float) -> Figure:
    """``algorithms[algo][metric]`` and ``[metric + "_ci"]`` -> one panel per metric, one bar per algo."""
    names = list(algorithms)
    fig = Figure(figsize=(3.2 * len(METRIC_TITLES), 0.9 + 0.45 * len(names)), layout="constrained")
    axes = fig.subplots(1, len(METRIC_TITLES), sharey=True, squeeze=False)[0]
    colors = [f"C{i}" for i in range(len(names))]
    for ax, (metric, label) in zip(axes, METRIC_TITLES.items()):
        for row, (name, color) in enumerate(zip(names, colors)):
            low, high = algorithms[name][f"{metric}_ci"]
            ax.barh(row, high - low, left=low, height=0.6, color=color, alpha=0.75)
            ax.vlines(algorithms[name][metric], row - 0.3, row + 0.3, color="black", linewidth=2)
        ax.set_title(label)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("normalised score")
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"aggregate metrics with {confidence:.0%} stratified-bootstrap intervals "
                 "(optimality gap: lower is better)", fontsize="medium")
    return fig


def performance_profile_figure(profile: dict[str, Any]) -> Figure:
    """``profile["tau"]`` and per algorithm ``fraction``, ``ci_low``, ``ci_high`` -> one curve each."""
    fig = Figure(figsize=(6.5, 4.0), layout="constrained")
    ax = fig.subplots()
    tau = profile["tau"]
    for i, (name, curve) in enumerate(profile["algorithms"].items()):
        ax.plot(tau, curve["fraction"], color=f"C{i}", label=name)
        ax.fill_between(tau, curve["ci_low"], curve["ci_high"], color=f"C{i}", alpha=0.2, linewidth=0)
    ax.set_xlabel(r"normalised score $\tau$")
    ax.set_ylabel(r"fraction of runs with score > $\tau$")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("performance profile")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return fig
