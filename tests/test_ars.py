"""ARS: the update rule, observation statistics, parallel rollouts and learning."""

import numpy as np
import pytest

import classic_rl
from classic_rl.agents.ars import ars_update
from classic_rl.normalizers import RunningMeanStd


def test_ars_update_follows_the_formula_on_the_top_directions():
    theta = np.zeros(2)
    deltas = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    r_plus, r_minus = np.array([3.0, 0.0, 1.0]), np.array([1.0, 5.0, 0.5])
    new, sigma_r = ars_update(theta, deltas, r_plus, r_minus, step_size=0.5, top_b=2)
    # max(r+, r-) = [3, 5, 1]: directions 1 and 0 are the top two; direction 2 is ignored.
    used = np.array([3.0, 0.0, 1.0, 5.0])
    assert sigma_r == pytest.approx(used.std())
    expected = 0.5 / (2 * used.std()) * ((3 - 1) * deltas[0] + (0 - 5) * deltas[1])
    np.testing.assert_allclose(new, expected)


def test_ars_update_climbs_a_quadratic():
    rng = np.random.default_rng(0)
    target = np.array([1.0, -2.0, 0.5, 3.0])

    def objective(x):
        return -np.sum((x - target) ** 2)

    theta = np.zeros(4)
    start = np.linalg.norm(theta - target)
    for _ in range(300):
        deltas = rng.standard_normal((8, 4))
        r_plus = np.array([objective(theta + 0.05 * d) for d in deltas])
        r_minus = np.array([objective(theta - 0.05 * d) for d in deltas])
        theta, _ = ars_update(theta, deltas, r_plus, r_minus, step_size=0.02, top_b=4)
    assert np.linalg.norm(theta - target) < 0.05 * start


def test_running_obs_stat_merges_batches_exactly():
    rng = np.random.default_rng(1)
    data = rng.normal(3.0, 2.0, size=(500, 3))
    stat = RunningMeanStd((3,), epsilon=0.0)
    for chunk in np.array_split(data, 7):
        stat.update_from_sums(len(chunk), chunk.sum(0), (chunk**2).sum(0))
    np.testing.assert_allclose(stat.mean, data.mean(0))
    np.testing.assert_allclose(stat.std, data.std(0))


def test_v1_uses_raw_observations_and_v2_normalised_ones():
    v1 = classic_rl.make("ars", env="Pendulum-v1", version="v1", n_workers=0)
    v2 = classic_rl.make("ars", env="Pendulum-v1", version="v2", n_workers=0)
    for agent in (v1, v2):
        agent.obs_stat.update_from_sums(4, np.full(3, 8.0), np.full(3, 20.0))  # mean 2, std 1
    mean1, std1 = v1._norm()
    mean2, std2 = v2._norm()
    np.testing.assert_allclose(mean1, 0.0)
    np.testing.assert_allclose(std1, 1.0)
    np.testing.assert_allclose(mean2, 2.0)
    np.testing.assert_allclose(std2, 1.0)


def test_parallel_rollouts_match_in_process_rollouts():
    kwargs = dict(env="Pendulum-v1", seed=3, n_directions=4, hidden=[4])
    pooled = classic_rl.make("ars", n_workers=2, **kwargs).learn(total_steps=3200, progress=False)
    serial = classic_rl.make("ars", n_workers=0, **kwargs).learn(total_steps=3200, progress=False)
    assert pooled.iterations == serial.iterations == 2
    np.testing.assert_allclose(pooled.theta, serial.theta)
    np.testing.assert_allclose(pooled.obs_stat.mean, serial.obs_stat.mean)


def test_save_and_load_keep_the_policy(tmp_path):
    agent = classic_rl.make("ars", env="Pendulum-v1", n_workers=0, n_directions=2).learn(1600, progress=False)
    agent.save(tmp_path / "ars")
    loaded = classic_rl.load(tmp_path / "ars")
    obs = np.array([0.5, -0.5, 1.0], dtype=np.float32)
    np.testing.assert_allclose(loaded.act(obs), agent.act(obs))
    np.testing.assert_allclose(loaded.obs_stat.std, agent.obs_stat.std)


def test_bad_version_is_a_clear_error():
    with pytest.raises(ValueError, match="version must be one of v1, v2"):
        classic_rl.make("ars", env="Pendulum-v1", version="v3")


def test_ars_solves_mountain_car_continuous():
    # A zero (and a random) policy scores about 0 (-33); reaching the flag gives about +90.
    agent = classic_rl.make(
        "ars", env="MountainCarContinuous-v0", seed=0, n_directions=8, top_directions=4,
        delta_std=0.3, step_size=0.05, n_workers=2,
    )
    before, _ = agent.evaluate(episodes=3)
    agent.learn(total_steps=30_000, progress=False)
    after, _ = agent.evaluate(episodes=5)
    assert before < 1.0
    assert after > 80.0
