"""Figures: learning curves from run directories, and grid-world values with the greedy policy.

Matplotlib is used through ``matplotlib.figure.Figure`` (Agg canvas), never through pyplot's global
state, so importing this module neither opens windows nor changes the user's backend.

Learning curves: each run directory holds ``episodes.csv`` (``step,episode,return,length,wall_s``)
and ``config.yaml`` (with ``algo``, ``env``, ``seed``). Runs are grouped by (algo, env); each run's
returns are smoothed with a trailing moving average over episodes, put on an x-axis common to the
group (environment steps, interpolated; or episode numbers, as Sutton & Barto's Figure 6.4 draws
Cliff Walking), and the group is drawn as the mean across seeds with a shaded spread (mean +- std,
or min..max). One subplot per environment.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from classic_rl.config import read_yaml
from classic_rl.safe_io import UserError

SPREADS = ("std", "minmax")
X_AXES = ("steps", "episodes")


@dataclass
class Run:
    """One training run's episode log."""

    path: Path
    algo: str
    env: str
    seed: object
    steps: np.ndarray
    returns: np.ndarray


def _run_info(run_dir: Path) -> dict:
    """algo / env / seed from config.yaml, falling back to summary.json."""
    for name, loader in (("config.yaml", read_yaml), ("summary.json", _read_json)):
        path = run_dir / name
        if path.is_file():
            info = loader(path) or {}
            if isinstance(info, dict) and "algo" in info and "env" in info:
                return info
    raise ValueError(
        f"{run_dir}: config.yaml (or summary.json) with keys 'algo' and 'env' is needed to group runs"
    )


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: damaged or truncated JSON ({err})") from None


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory's ``episodes.csv`` and its algo / env / seed."""
    run_dir = Path(run_dir)
    csv_path = run_dir / "episodes.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"{run_dir} has no episodes.csv: pass run directories written by `classic-rl train`"
        )
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"step", "return"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(
                f"{csv_path} lacks column(s) {sorted(missing)}; expected step,episode,return,length,wall_s"
            )
        rows = [(float(r["step"]), float(r["return"])) for r in reader]
    if not rows:
        raise ValueError(f"{csv_path} has no finished episodes to plot")
    info = _run_info(run_dir)
    data = np.array(rows)
    return Run(run_dir, str(info["algo"]), str(info["env"]), info.get("seed"), data[:, 0], data[:, 1])


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average: mean of the last ``window`` values (fewer at the start)."""
    if window <= 1:
        return np.asarray(values, dtype=np.float64)
    cumsum = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - window)
    return (cumsum[idx] - cumsum[lo]) / (idx - lo)


def group_curve(
    runs: Sequence[Run], window: int | None = None, points: int = 200, x: str = "steps"
) -> tuple[np.ndarray, np.ndarray, int]:
    """Smoothed returns of several seeds on a common x grid: ``(grid, curves (n_runs, len(grid)), window)``.

    ``x="steps"``: the grid spans the environment steps every run covers (from the latest first
    episode to the earliest last episode), so no run is extrapolated. ``x="episodes"``: episodes
    1..N, N the fewest episodes any run finished (no interpolation needed).
    """
    if x not in X_AXES:
        raise ValueError(f"x must be one of {list(X_AXES)}, got {x!r}")
    if window is None:
        window = max(1, min(len(r.returns) for r in runs) // 20)
    if x == "episodes":
        n = min(len(r.returns) for r in runs)
        return np.arange(1, n + 1), np.array([smooth(r.returns, window)[:n] for r in runs]), window
    start = max(r.steps[0] for r in runs)
    stop = min(r.steps[-1] for r in runs)
    grid = np.linspace(start, stop, points) if stop > start else np.array([stop])
    curves = np.array([np.interp(grid, r.steps, smooth(r.returns, window)) for r in runs])
    return grid, curves, window


def learning_curves_figure(
    run_dirs: Iterable[str | Path], smooth_window: int | None = None, spread: str = "std", points: int = 200,
    x: str = "steps", ylim: tuple[float, float] | None = None,
) -> Figure:
    """Mean return vs environment step (or episode, ``x="episodes"``) for every (algo, env) group,
    with a shaded spread across seeds. ``ylim`` fixes the y range (e.g. ``(-100, 0)`` to show
    SARSA vs Q-learning on Cliff Walking, whose first episodes return -1000 and less)."""
    if x not in X_AXES:
        raise ValueError(f"x must be one of {list(X_AXES)}, got {x!r}")
    if spread not in SPREADS:
        raise ValueError(f"spread must be one of {list(SPREADS)}, got {spread!r}")
    runs = [load_run(d) for d in run_dirs]
    if not runs:
        raise ValueError("run_dirs is empty: pass at least one run directory")
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.algo, run.env), []).append(run)
    envs = sorted({env for _, env in groups})
    ncols = min(len(envs), 3)
    nrows = -(-len(envs) // ncols)
    fig = Figure(figsize=(5.5 * ncols, 4.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, env in zip(axes, envs):
        for (algo, group_env), members in sorted(groups.items()):
            if group_env != env:
                continue
            grid, curves, window = group_curve(members, smooth_window, points, x)
            mean = curves.mean(axis=0)
            (line,) = ax.plot(grid, mean, label=f"{algo} ({len(members)} seed{'s' * (len(members) > 1)})")
            if len(members) > 1:
                low, high = (
                    (mean - curves.std(axis=0), mean + curves.std(axis=0))
                    if spread == "std"
                    else (curves.min(axis=0), curves.max(axis=0))
                )
                ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(env)
        ax.set_xlabel("environment steps" if x == "steps" else "episodes")
        ax.set_ylabel(f"sum of rewards per episode\n(moving average over {window} episodes)")
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    for ax in axes[len(envs) :]:
        ax.set_visible(False)
    return fig


def plot_learning_curves(run_dirs: list[str | Path], out: str | Path, **kwargs) -> Path:
    """Draw :func:`learning_curves_figure` and save it as a PNG at ``out``; returns the path."""
    return _save(learning_curves_figure(run_dirs, **kwargs), out)


def _save(fig: Figure, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


@dataclass
class GridView:
    """What a value plot needs to know about a grid: where each state is drawn and what it is."""

    shape: tuple[int, int]
    cells: Sequence[tuple[int, int]]  # state -> (row, col)
    walls: set[tuple[int, int]]
    labels: dict[int, str]  # terminal (or special) state -> label
    start: int | None
    action_deltas: Sequence[tuple[int, int]]  # action -> (d_row, d_col)


def grid_view(env_or_layout) -> GridView:
    """Describe our GridWorld (env, Layout or layout strings), FrozenLake or CliffWalking as a GridView."""
    from classic_rl.envs.gridworld import ACTION_DELTAS, Layout, parse_layout

    obj = getattr(env_or_layout, "unwrapped", env_or_layout)
    layout = getattr(obj, "grid", obj)
    if isinstance(layout, (str, list, tuple)):
        layout = parse_layout(layout)
    if isinstance(layout, Layout):
        n_rows, n_cols = layout.shape
        walls = {(r, c) for r in range(n_rows) for c in range(n_cols) if layout.is_wall(r, c)}
        labels = {s: f"{reward:+g}" for s, reward in layout.terminal_rewards.items()}
        return GridView(layout.shape, layout.cells, walls, labels, layout.start, ACTION_DELTAS)
    if hasattr(obj, "desc"):  # FrozenLake: actions left, down, right, up
        desc = [[ch.decode() if isinstance(ch, bytes) else ch for ch in row] for row in obj.desc]
        n_rows, n_cols = len(desc), len(desc[0])
        cells = [(r, c) for r in range(n_rows) for c in range(n_cols)]
        labels = {s: desc[r][c] for s, (r, c) in enumerate(cells) if desc[r][c] in "HG"}
        start = next(s for s, (r, c) in enumerate(cells) if desc[r][c] == "S")
        return GridView((n_rows, n_cols), cells, set(), labels, start, ((0, -1), (1, 0), (0, 1), (-1, 0)))
    if hasattr(obj, "_cliff") and hasattr(obj, "shape"):  # CliffWalking: actions up, right, down, left
        n_rows, n_cols = obj.shape
        cells = [(r, c) for r in range(n_rows) for c in range(n_cols)]
        labels = {s: "cliff" for s, cell in enumerate(cells) if obj._cliff[cell]}
        labels[n_rows * n_cols - 1] = "G"
        return GridView((n_rows, n_cols), cells, set(), labels, int(obj.start_state_index), ACTION_DELTAS)
    raise ValueError(
        "env_or_layout must be a GridWorld env, a Layout, layout strings, FrozenLake or CliffWalking; "
        f"got {type(env_or_layout).__name__}"
    )


def grid_values_figure(V, policy, env_or_layout, title: str | None = None) -> Figure:
    """Heatmap of V on the grid, walls in grey, the greedy policy as arrows, terminals labelled."""
    view = grid_view(env_or_layout)
    V = np.asarray(V, dtype=np.float64)
    if V.shape != (len(view.cells),):
        raise ValueError(f"V must have one value per state, shape ({len(view.cells)},); got {V.shape}")
    actions = None
    if policy is not None:
        policy = np.asarray(policy)
        actions = policy.argmax(axis=1) if policy.ndim == 2 else policy.astype(int)
        if actions.shape != V.shape:
            raise ValueError(
                f"policy must give one action per state ({len(view.cells)}); got shape {policy.shape}"
            )

    n_rows, n_cols = view.shape
    image = np.full(view.shape, np.nan)
    for s, (r, c) in enumerate(view.cells):
        image[r, c] = V[s]
    fig = Figure(figsize=(max(3.0, 1.1 * n_cols + 1.5), max(2.5, 1.1 * n_rows + 0.8)), layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="dimgray")  # walls are masked
    finite = V[np.isfinite(V)]
    span = max(np.abs(finite).max(), 1e-9) if finite.size else 1.0
    mesh = ax.imshow(np.ma.masked_invalid(image), cmap=cmap, vmin=-span, vmax=span)
    fig.colorbar(mesh, ax=ax, shrink=0.8, label="V(s) (arrows: greedy action)")
    small = n_cols > 12 or n_rows > 12
    for s, (r, c) in enumerate(view.cells):
        if s in view.labels:  # terminals: a plain cell with its label instead of a colour
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, facecolor="whitesmoke", edgecolor="black"))
            ax.text(c, r, view.labels[s], ha="center", va="center", fontsize=9, fontweight="bold")
            continue
        if not small:
            ax.text(c, r + 0.3, f"{V[s]:.3g}", ha="center", va="center", fontsize=7)
        if actions is not None:
            dr, dc = view.action_deltas[actions[s]]
            ax.annotate(
                "", xy=(c + 0.3 * dc, r - 0.05 + 0.3 * dr), xytext=(c - 0.3 * dc, r - 0.05 - 0.3 * dr),
                arrowprops={"arrowstyle": "->", "lw": 1.2},
            )  # fmt: skip
    if view.start is not None and view.start not in view.labels:
        r, c = view.cells[view.start]
        ax.text(c - 0.4, r - 0.35, "S", fontsize=7, fontweight="bold")
    for r, c in view.walls:
        ax.text(c, r, "#", ha="center", va="center", color="white", fontsize=8)
    ax.set_xticks(range(n_cols))
    ax.set_yticks(range(n_rows))
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    ax.set_xticks(np.arange(-0.5, n_cols), minor=True)
    ax.set_yticks(np.arange(-0.5, n_rows), minor=True)
    ax.grid(which="minor", color="black", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    if title:
        ax.set_title(title)
    return fig


def plot_grid_values(V, policy, env_or_layout, out: str | Path, title: str | None = None) -> Path:
    """Save :func:`grid_values_figure` as a PNG at ``out``; returns the path."""
    return _save(grid_values_figure(V, policy, env_or_layout, title), out)
