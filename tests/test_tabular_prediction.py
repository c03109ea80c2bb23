"""Model-free prediction on the 19-state random walk (Sutton & Barto, Figure 7.2) and the 4x3 world."""

import gymnasium as gym
import numpy as np
import pytest

from classic_rl.envs import RandomWalkEnv, gridworld_4x3
from classic_rl.tabular import (
    mc_prediction,
    n_step_td_prediction,
    rms_error,
    td_prediction,
    value_iteration,
)

WALK = RandomWalkEnv(19)
TRUE_V = WALK.true_values()
UNIFORM = WALK.random_policy()
INNER = WALK.nonterminal_states


def rms_curve(method, *args, **kwargs):
    """RMS error over the 19 inner states after each episode."""
    errors = []
    method(WALK, UNIFORM, *args, callback=lambda i, V: errors.append(rms_error(V, TRUE_V, INNER)), **kwargs)
    return np.array(errors)


@pytest.mark.parametrize(
    "method, args",
    [
        (mc_prediction, (None, 300)),  # sample averages
        (mc_prediction, (0.02, 300)),
        (td_prediction, (0.05, 300)),
        (n_step_td_prediction, (4, 0.05, 300)),
    ],
)
def test_rms_error_falls_with_episodes(method, args):
    curves = np.array([rms_curve(method, *args, seed=seed) for seed in range(3)])
    mean = curves.mean(axis=0)
    assert mean[0] > 0.45  # V starts at 0, true values spread over [-0.9, 0.9]
    assert mean[99] < 0.75 * mean[9]
    assert mean[-1] < 0.12


def test_intermediate_n_beats_one_step_and_large_n_over_first_10_episodes():
    """Figure 7.2 at alpha = 0.4: n = 4 is clearly best; n = 1 bootstraps too slowly, n = 32 is noisy MC."""

    def average_error(n):
        return np.mean([rms_curve(n_step_td_prediction, n, 0.4, 10, seed=seed).mean() for seed in range(20)])

    err_1, err_4, err_32 = average_error(1), average_error(4), average_error(32)
    # Measured: about 0.41, 0.27 and 0.54 (the book's figure: ~0.42, ~0.27, ~0.55).
    assert err_4 < err_1 - 0.08
    assert err_4 < err_32 - 0.15


def test_n_step_with_n_1_is_td0_and_with_large_n_is_every_visit_mc():
    kwargs = {"episodes": 20, "gamma": 1.0, "seed": 3}
    np.testing.assert_array_equal(
        n_step_td_prediction(WALK, UNIFORM, 1, 0.1, **kwargs), td_prediction(WALK, UNIFORM, 0.1, **kwargs)
    )
    np.testing.assert_allclose(
        n_step_td_prediction(WALK, UNIFORM, 10_000, 0.1, **kwargs),
        mc_prediction(WALK, UNIFORM, 0.1, first_visit=False, **kwargs),
        atol=1e-12,
    )


def test_discounting_in_targets():
    # Always right from the middle state 10: 10 steps, reward +1 on the last, so V(10) = gamma^9.
    right = np.ones(21, dtype=int)
    V = mc_prediction(WALK, right, None, 1, gamma=0.9)
    assert V[10] == pytest.approx(0.9**9)
    assert V[19] == pytest.approx(1.0)
    assert V[5] == 0.0  # never visited
    V = n_step_td_prediction(WALK, right, 3, 1.0, 1, gamma=0.9, v_init=np.arange(21.0))
    # With alpha = 1, V(10) <- R11 + g R12 + g^2 R13 + g^3 V(13), where V(13) was not yet updated.
    assert V[10] == pytest.approx(0.9**3 * 13.0)


def test_first_visit_and_every_visit_differ_on_revisits():
    first = mc_prediction(WALK, UNIFORM, None, 5, first_visit=True, seed=1)
    every = mc_prediction(WALK, UNIFORM, None, 5, first_visit=False, seed=1)
    assert not np.allclose(first, every)


def test_policy_as_callable_int_array_or_probabilities():
    def always_left(state, rng):
        return 0

    left = np.zeros(21, dtype=int)
    probs = np.tile([1.0, 0.0], (21, 1))
    results = [td_prediction(WALK, p, 0.5, 3, seed=0) for p in (always_left, left, probs)]
    for V in results[1:]:
        np.testing.assert_array_equal(V, results[0])
    assert results[0][1] < 0  # the left terminal pays -1

    def coin(state, rng):
        return int(rng.integers(2))

    curve = rms_curve(td_prediction, 0.1, 100, seed=0)
    coin_errors = []
    td_prediction(WALK, coin, 0.1, 100, callback=lambda i, V: coin_errors.append(rms_error(V, TRUE_V, INNER)))
    assert coin_errors[-1] < 0.6 * coin_errors[0] and curve[-1] < 0.6 * curve[0]


def test_same_seed_repeats_exactly_and_env_id_accepted():
    a = mc_prediction(WALK, UNIFORM, 0.1, 30, seed=7)
    b = mc_prediction("RandomWalk19-v0", UNIFORM, 0.1, 30, seed=7)
    c = mc_prediction(WALK, UNIFORM, 0.1, 30, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_model_free_estimates_agree_with_dp_on_the_4x3_world():
    env = gridworld_4x3()
    V_star, policy = value_iteration(env.P, 1.0)
    start = env.grid.start
    V_mc = mc_prediction(env, policy, None, 1500, seed=0)
    V_td = td_prediction(gym.make("GridWorld4x3-v0"), policy, 0.05, 1500, seed=0)  # through env.step
    assert V_mc[start] == pytest.approx(V_star[start], abs=0.03)
    assert V_td[start] == pytest.approx(V_star[start], abs=0.05)


def test_truncated_episodes_bootstrap():
    # max_steps=1 truncates after one step: TD(0) then bootstraps from V(S_1) = v_init.
    V = td_prediction(WALK, np.ones(21, dtype=int), 1.0, 1, v_init=2.0, max_steps=1)
    assert V[10] == pytest.approx(2.0)  # 0 + 1.0 * V(11)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: td_prediction(WALK, UNIFORM, 0.0, 10), "alpha"),
        (lambda: mc_prediction(WALK, UNIFORM, 1.5, 10), "alpha"),
        (lambda: n_step_td_prediction(WALK, UNIFORM, 0, 0.1, 10), "n must be"),
        (lambda: td_prediction(WALK, UNIFORM, 0.1, 10, gamma=2.0), "gamma"),
        (lambda: td_prediction(WALK, UNIFORM[:5], 0.1, 10), "policy"),
        (lambda: td_prediction(WALK, UNIFORM, 0.1, 0), "episodes"),
        (lambda: td_prediction(gym.make("CartPole-v1"), UNIFORM, 0.1, 10), "Discrete"),
    ],
)
def test_bad_input_is_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()
