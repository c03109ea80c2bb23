"""Learning-curve and grid-value figures: grouping by (algo, env), averaging seeds, PNG output."""

import gymnasium as gym
import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from classic_rl.envs import gridworld_4x3
from classic_rl.plots import (
    grid_values_figure,
    learning_curves_figure,
    plot_grid_values,
    plot_learning_curves,
    smooth,
)
from classic_rl.tabular import value_iteration


def write_run(root, name, algo, env, seed, returns, lengths=None):
    run = root / name
    run.mkdir()
    lengths = lengths or [10] * len(returns)
    steps = np.cumsum(lengths)
    lines = ["step,episode,return,length,wall_s"]
    lines += [f"{s},{i},{r},{n},{0.01 * i}" for i, (s, r, n) in enumerate(zip(steps, returns, lengths))]
    (run / "episodes.csv").write_text("\n".join(lines) + "\n")
    (run / "config.yaml").write_text(yaml.safe_dump({"algo": algo, "env": env, "seed": seed, "gamma": 0.99}))
    return run


@pytest.fixture
def runs(tmp_path):
    ramp = list(np.linspace(-100, 0, 60))
    return [
        write_run(tmp_path, "q0", "q_learning", "CliffWalking-v1", 0, [1.0] * 60),
        write_run(tmp_path, "q1", "q_learning", "CliffWalking-v1", 1, [3.0] * 50, lengths=[12] * 50),
        write_run(tmp_path, "s0", "sarsa", "CliffWalking-v1", 0, ramp),
        write_run(tmp_path, "s1", "sarsa", "CliffWalking-v1", 1, ramp[::-1]),
        write_run(tmp_path, "p0", "ppo", "CartPole-v1", 0, list(range(40))),
    ]


def test_one_line_per_group_and_one_subplot_per_env(runs):
    fig = learning_curves_figure(runs)
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert sorted(ax.get_title() for ax in visible) == ["CartPole-v1", "CliffWalking-v1"]
    cliff = next(ax for ax in visible if ax.get_title() == "CliffWalking-v1")
    assert len(cliff.get_lines()) == 2  # q_learning and sarsa, 2 seeds each
    assert len(cliff.collections) == 2  # a shaded spread per group
    labels = sorted(t.get_text() for t in cliff.get_legend().get_texts())
    assert labels == ["q_learning (2 seeds)", "sarsa (2 seeds)"]
    # Seeds with constant returns 1 and 3 average to 2 on the common step grid ...
    q_line = next(line for line in cliff.get_lines() if line.get_label().startswith("q_learning"))
    np.testing.assert_allclose(q_line.get_ydata(), 2.0)
    # ... which spans only the steps both runs cover (600 for q0, 12..600 for q1).
    assert q_line.get_xdata()[0] == 12 and q_line.get_xdata()[-1] == 600
    cartpole = next(ax for ax in visible if ax.get_title() == "CartPole-v1")
    assert len(cartpole.get_lines()) == 1 and len(cartpole.collections) == 0  # one seed: no spread


def test_minmax_spread_covers_all_seeds(runs):
    fig = learning_curves_figure(runs[2:4], spread="minmax", smooth_window=1)
    (band,) = fig.axes[0].collections
    ys = np.concatenate([path.vertices[:, 1] for path in band.get_paths()])
    assert ys.min() == pytest.approx(-100, abs=2) and ys.max() == pytest.approx(0, abs=2)


def test_png_is_written_and_not_blank(runs, tmp_path):
    out = plot_learning_curves(runs, tmp_path / "figs" / "curves.png")
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(out)
    assert image.shape[0] > 200 and image.shape[1] > 400
    assert image[..., :3].std() > 0.05  # lines and text, not a blank canvas


def test_missing_episodes_csv_is_a_clear_error(tmp_path, runs):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="episodes.csv"):
        plot_learning_curves([runs[0], empty], tmp_path / "x.png")
    (empty / "episodes.csv").write_text("step,episode,return,length,wall_s\n")
    with pytest.raises(ValueError, match="no finished episodes"):
        learning_curves_figure([empty])
    with pytest.raises(ValueError, match="spread"):
        learning_curves_figure(runs, spread="iqr")


def test_smooth_is_a_trailing_mean():
    np.testing.assert_allclose(smooth(np.array([0.0, 2.0, 4.0, 6.0]), 2), [0.0, 1.0, 3.0, 5.0])


def test_grid_values_figure_draws_values_walls_arrows_and_terminals(tmp_path):
    env = gridworld_4x3()
    V, policy = value_iteration(env.P, 1.0)
    fig = grid_values_figure(V, policy, env, title="4x3")
    ax = fig.axes[0]
    texts = {t.get_text() for t in ax.texts}
    assert {"+1", "-1", "#", "0.705", "0.388"} <= texts
    assert len([c for c in ax.get_children() if type(c).__name__ == "Annotation"]) == 9  # one arrow per state
    image = ax.get_images()[0].get_array()
    assert image.mask[1, 1]  # the wall is masked (drawn grey)
    out = plot_grid_values(V, policy, list(env.layout), tmp_path / "values.png", title="4x3")
    assert imread(out)[..., :3].std() > 0.05


def test_grid_values_for_gymnasium_grids_and_bad_shapes():
    lake = gym.make("FrozenLake-v1")
    V, policy = value_iteration(lake.unwrapped.P, 0.99)
    texts = [t.get_text() for t in grid_values_figure(V, policy, lake).axes[0].texts]
    assert texts.count("H") == 4 and texts.count("G") == 1
    cliff = gym.make("CliffWalking-v1")
    texts = [t.get_text() for t in grid_values_figure(np.zeros(48), None, cliff).axes[0].texts]
    assert texts.count("cliff") == 10 and texts.count("G") == 1
    with pytest.raises(ValueError, match="one value per state"):
        grid_values_figure(np.zeros(5), None, gridworld_4x3())
    with pytest.raises(ValueError, match="env_or_layout"):
        grid_values_figure(np.zeros(4), None, gym.make("CartPole-v1"))


def test_curves_over_episodes_with_a_fixed_y_range(runs):
    # Sutton & Barto's Figure 6.4: sum of rewards per episode vs episode, y from -100 to 0.
    fig = learning_curves_figure(runs[:4], x="episodes", ylim=(-100, 0), smooth_window=1)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "episodes" and "sum of rewards per episode" in ax.get_ylabel()
    assert ax.get_ylim() == (-100, 0)
    q_line = next(line for line in ax.get_lines() if line.get_label().startswith("q_learning"))
    # q0 has 60 episodes, q1 50: both curves end at episode 50, whatever their step counts.
    np.testing.assert_array_equal(q_line.get_xdata(), np.arange(1, 51))
    np.testing.assert_allclose(q_line.get_ydata(), 2.0)
    sarsa = next(line for line in ax.get_lines() if line.get_label().startswith("sarsa"))
    np.testing.assert_allclose(sarsa.get_ydata(), -50.0)  # a ramp up and a ramp down average out
    with pytest.raises(ValueError, match="x must be one of"):
        learning_curves_figure(runs, x="time")


def test_every_axis_is_labelled(runs):
    V, policy = value_iteration(gridworld_4x3().P, 1.0)
    for fig in (learning_curves_figure(runs), grid_values_figure(V, policy, gridworld_4x3())):
        for ax in fig.axes:
            if ax.get_visible() and ax.get_label() != "<colorbar>":
                assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()


def test_ppo_curves_have_labelled_axes(tmp_path):
    import json

    from rlhf.pipeline import plot_ppo_curves

    metrics = tmp_path / "metrics.jsonl"
    rows = [{"episode": 64 * (i + 1), "objective/kl": 0.1 * i, "objective/scores": 0.5 * i,
             "objective/rlhf_reward": 0.4 * i} for i in range(5)]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    import matplotlib.pyplot as plt

    captured = []
    original = plt.Figure.savefig

    def spy(fig, *args, **kwargs):
        captured.append(fig)
        return original(fig, *args, **kwargs)

    plt.Figure.savefig = spy
    try:
        assert plot_ppo_curves(metrics, tmp_path / "ppo_curves.png")
    finally:
        plt.Figure.savefig = original
    assert (tmp_path / "ppo_curves.png").exists()
    (fig,) = captured
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()
