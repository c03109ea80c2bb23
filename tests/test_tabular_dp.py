"""Dynamic programming: values checked by hand, against exact linear solves, and on textbook worlds."""

import gymnasium as gym
import numpy as np
import pytest

from classic_rl.envs import GridWorldEnv, gridworld_4x3
from classic_rl.tabular import (
    ConvergenceError,
    TabularModel,
    policy_evaluation,
    policy_iteration,
    q_from_v,
    value_iteration,
)

# Two states. State 0: action 0 "stay" (+1, back to 0), action 1 "go" (0, to state 1).
# State 1: action 0 "finish" (+2, terminates), action 1 "back" (0, to state 0).
TWO_STATE_P = {
    0: {0: [(1.0, 0, 1.0, False)], 1: [(1.0, 1, 0.0, False)]},
    1: {0: [(1.0, 1, 2.0, True)], 1: [(1.0, 0, 0.0, False)]},
}


def exact_policy_values(P, policy, gamma):
    """V_pi from (I - gamma P_pi) V = r_pi, built with plain loops (independent of the library)."""
    n = len(P)
    P_pi, r_pi = np.zeros((n, n)), np.zeros(n)
    for s in range(n):
        for prob, nxt, reward, terminated in P[s][int(policy[s])]:
            r_pi[s] += prob * reward
            if not terminated:
                P_pi[s, nxt] += prob
    return np.linalg.solve(np.eye(n) - gamma * P_pi, r_pi)


def bellman_optimality_residual(P, V, gamma):
    worst = 0.0
    for s in range(len(P)):
        q = [sum(p * (r + (0 if t else gamma * V[n])) for p, n, r, t in P[s][a]) for a in range(len(P[s]))]
        worst = max(worst, abs(max(q) - V[s]))
    return worst


def test_hand_solved_two_state_mdp():
    # gamma = 0.9: staying forever is worth 1 / (1 - 0.9) = 10; from state 1, going back is worth 9 > 2.
    for solver in (value_iteration, policy_iteration):
        V, policy = solver(TWO_STATE_P, 0.9)
        np.testing.assert_allclose(V, [10.0, 9.0], atol=1e-6)
        assert policy.tolist() == [0, 1]
    # gamma = 0.5: staying is worth 2, finishing from state 1 is worth 2 > 0.5 * 2.
    for solver in (value_iteration, policy_iteration):
        V, policy = solver(TWO_STATE_P, 0.5)
        np.testing.assert_allclose(V, [2.0, 2.0], atol=1e-6)
        assert policy[1] == 0


def test_policy_evaluation_by_hand_deterministic_and_stochastic():
    # go, then finish: V1 = 2, V0 = 0.9 * 2.
    np.testing.assert_allclose(policy_evaluation(TWO_STATE_P, np.array([1, 0]), 0.9), [1.8, 2.0], atol=1e-8)
    # 50/50 in state 0: V0 = 0.5 (1 + 0.9 V0) + 0.5 (0.9 * 2)  =>  V0 = 1.4 / 0.55.
    policy = np.array([[0.5, 0.5], [1.0, 0.0]])
    np.testing.assert_allclose(policy_evaluation(TWO_STATE_P, policy, 0.9), [1.4 / 0.55, 2.0], atol=1e-8)


def test_q_from_v_one_step_backup():
    Q = q_from_v(TWO_STATE_P, np.array([10.0, 9.0]), 0.9)
    # finish terminates: no bootstrap from V(1).
    np.testing.assert_allclose(Q, [[1 + 9.0, 0.9 * 9.0], [2.0, 0.9 * 10.0]])


def test_stochastic_outcomes_are_weighted():
    P = {0: {0: [(0.25, 0, 4.0, True), (0.75, 0, 0.0, False)]}}
    # V = 0.25 * 4 + 0.75 * gamma * V  =>  V = 1 / (1 - 0.75 * 0.5) = 1.6
    np.testing.assert_allclose(policy_evaluation(P, np.array([0]), 0.5), [1.6], atol=1e-8)


@pytest.mark.parametrize("gamma", [0.9, 0.99])
def test_value_and_policy_iteration_agree_on_slippery_frozenlake(gamma):
    P = gym.make("FrozenLake-v1", is_slippery=True).unwrapped.P
    V_vi, pi_vi = value_iteration(P, gamma, theta=1e-10)
    V_pi, pi_pi = policy_iteration(P, gamma)
    exact_vi = exact_policy_values(P, pi_vi, gamma)
    exact_pi = exact_policy_values(P, pi_pi, gamma)
    np.testing.assert_allclose(V_pi, exact_pi, atol=1e-7)  # PI's V is its policy's value
    np.testing.assert_allclose(V_vi, exact_vi, atol=1e-6)  # VI's greedy policy achieves VI's V
    np.testing.assert_allclose(exact_vi, exact_pi, atol=1e-6)  # both policies are equally good
    assert bellman_optimality_residual(P, exact_pi, gamma) < 1e-7  # ... and optimal
    assert V_vi[0] > 0.5 if gamma == 0.99 else V_vi[0] > 0.05


def test_policy_evaluation_matches_linear_solve():
    P = gym.make("FrozenLake-v1", is_slippery=True).unwrapped.P
    policy = np.random.default_rng(0).integers(0, 4, size=16)
    np.testing.assert_allclose(
        policy_evaluation(P, policy, 0.95), exact_policy_values(P, policy, 0.95), atol=1e-8
    )


def test_gridworld_4x3_textbook_values():
    env = gridworld_4x3()
    V, policy = value_iteration(env.P, 1.0)
    # Russell & Norvig, Figure 17.3 (gamma = 1, step reward -0.04), by (row, col) from the top.
    textbook = {
        (0, 0): 0.812, (0, 1): 0.868, (0, 2): 0.918,
        (1, 0): 0.762, (1, 2): 0.660,
        (2, 0): 0.705, (2, 1): 0.655, (2, 2): 0.611, (2, 3): 0.388,
    }  # fmt: skip
    for cell, value in textbook.items():
        assert V[env.state_of(*cell)] == pytest.approx(value, abs=1e-3)
    np.testing.assert_allclose(V, exact_policy_values(env.P, policy, 1.0), atol=1e-6)
    # The famous detour: next to the -1 terminal at the bottom, go left (the long way round).
    assert policy[env.state_of(2, 3)] == 3
    V_pi, pi_pi = policy_iteration(env.P, 1.0)
    np.testing.assert_allclose(V_pi, V, atol=1e-6)


def test_deterministic_grid_values_count_steps():
    env = GridWorldEnv(["S..G"], slip=0.0, step_reward=-1.0, terminal_rewards={"G": 0.0})
    V, policy = value_iteration(env.P, 1.0)
    np.testing.assert_allclose(V[:3], [-3.0, -2.0, -1.0])
    assert policy[:3].tolist() == [1, 1, 1]  # right


def test_model_arrays_pad_and_flag_terminals():
    model = TabularModel.from_P(gym.make("CliffWalking-v1").unwrapped.P)
    assert model.probs.shape == (48, 4, 1)
    assert model.terminated[35, 2, 0]  # stepping down from above the goal ends the episode
    assert model.rewards[36, 1, 0] == -100  # stepping right from the start falls off the cliff


@pytest.mark.parametrize("gamma", [-0.1, 1.5, "x"])
def test_gamma_outside_unit_interval_is_rejected(gamma):
    with pytest.raises(ValueError, match="gamma"):
        value_iteration(TWO_STATE_P, gamma)
    with pytest.raises(ValueError, match="gamma"):
        policy_evaluation(TWO_STATE_P, np.array([0, 0]), gamma)


def test_probabilities_must_sum_to_one():
    P = {0: {0: [(1.0, 0, 0.0, True)], 1: [(0.5, 0, 0.0, True), (0.4, 0, 1.0, True)]}}
    with pytest.raises(ValueError, match=r"P\[0\]\[1\] sum to 0\.9"):
        value_iteration(P, 0.9)


def test_bad_model_and_policy_shapes_are_rejected():
    with pytest.raises(ValueError, match="next_state"):
        value_iteration({0: {0: [(1.0, 3, 0.0, True)]}}, 0.9)
    with pytest.raises(ValueError, match="policy"):
        policy_evaluation(TWO_STATE_P, np.array([0, 0, 0]), 0.9)
    with pytest.raises(ValueError, match="state 1 sum to 0.5"):
        policy_evaluation(TWO_STATE_P, np.array([[0.5, 0.5], [0.5, 0.0]]), 0.9)


def test_gamma_one_with_non_terminating_policy_raises_instead_of_hanging():
    # "stay" forever earns +1 per step: V is unbounded with gamma = 1.
    with pytest.raises(ConvergenceError, match="never terminates"):
        policy_evaluation(TWO_STATE_P, np.array([0, 0]), 1.0)
    # In a 4x3 world without slip, "always up" bounces against the top border forever at -0.04 a step.
    with pytest.raises(ConvergenceError, match="never terminates"):
        policy_evaluation(gridworld_4x3(slip=0.0).P, np.zeros(11, dtype=int), 1.0)


def test_value_iteration_with_unbounded_values_hits_the_iteration_cap():
    with pytest.raises(ConvergenceError, match="max_iterations=500"):
        value_iteration(TWO_STATE_P, 1.0, max_iterations=500)
    # A state that can never terminate and earns reward is reported up front.
    with pytest.raises(ConvergenceError, match="never terminate"):
        value_iteration({0: {0: [(1.0, 0, -1.0, False)]}}, 1.0)


def test_policy_iteration_with_gamma_one_starts_from_a_proper_policy():
    # Without slip, all-zeros (up) never terminates; policy iteration must still converge.
    env = gridworld_4x3(slip=0.0)
    V, policy = policy_iteration(env.P, 1.0)
    assert V[env.grid.start] == pytest.approx(1.0 - 5 * 0.04)  # 5 moves to the +1 terminal
    V, policy = policy_iteration(gridworld_4x3().P, 1.0)
    assert V[gridworld_4x3().grid.start] == pytest.approx(0.7053, abs=1e-4)
