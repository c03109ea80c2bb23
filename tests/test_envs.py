"""The course's tabular environments: dynamics, registration, validation of layouts."""

import importlib
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import classic_rl.envs
from classic_rl.envs import GRIDWORLD_4X3, GridWorldEnv, RandomWalkEnv, gridworld_4x3
from classic_rl.envs.gridworld import DOWN, LEFT, RIGHT, UP
from classic_rl.tabular import policy_evaluation


def outcome_probs(env, s, a):
    return {nxt: prob for prob, nxt, _, _ in env.P[s][a]}


def test_registered_ids_make_working_envs():
    for env_id in classic_rl.envs.ENV_IDS:
        env = gym.make(env_id)
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        env.step(env.action_space.sample())
    env = gym.make("GridWorld-v0", layout=["S.G"], slip=0.0, step_reward=-1.0)
    assert env.unwrapped.P[0][RIGHT] == [(1.0, 1, -1.0, False)]
    assert gym.make("RandomWalk-v0", n_states=5).observation_space.n == 7


def test_reimport_does_not_reregister():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(classic_rl.envs)
    assert "GridWorld-v0" in gym.envs.registry and "RandomWalk19-v0" in gym.envs.registry


@pytest.mark.parametrize("make", [gridworld_4x3, lambda: RandomWalkEnv(5)])
def test_gymnasium_env_checker_passes(make):
    env = make()
    check_env(env, skip_render_check=True)  # raises on any API violation
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


def test_4x3_moves_intended_with_0_8_and_slips_0_1_each_side():
    env = gridworld_4x3()
    s = env.state_of(2, 1)  # bottom row, below the wall
    # Up hits the wall (0.8, bounce back), slips left and right 0.1 each.
    assert outcome_probs(env, s, UP) == pytest.approx(
        {s: 0.8, env.state_of(2, 0): 0.1, env.state_of(2, 2): 0.1}
    )
    start = env.grid.start  # bottom-left corner: left bounces (0.8), down bounces (0.1), up (0.1)
    assert outcome_probs(env, start, LEFT) == pytest.approx({start: 0.9, env.state_of(1, 0): 0.1})
    s = env.state_of(0, 2)
    assert outcome_probs(env, s, RIGHT) == pytest.approx(
        {env.state_of(0, 3): 0.8, s: 0.1, env.state_of(1, 2): 0.1}
    )


def test_rewards_and_termination():
    env = gridworld_4x3()
    goal, pit = env.state_of(0, 3), env.state_of(1, 3)
    for _prob, nxt, reward, terminated in env.P[env.state_of(0, 2)][RIGHT]:
        assert terminated == (nxt in (goal, pit))
        expected = -0.04 + (1.0 if nxt == goal else -1.0 if nxt == pit else 0.0)
        assert reward == pytest.approx(expected)
    assert env.P[goal][DOWN] == [(1.0, goal, 0.0, True)]  # terminals absorb
    assert sorted(env.terminal_states) == [goal, pit]


def test_step_samples_the_model():
    env = gridworld_4x3()
    env.reset(seed=0)
    s = env.state_of(0, 1)
    counts = {}
    for _ in range(3000):
        env.s = s
        nxt, *_ = env.step(DOWN)
        counts[nxt] = counts.get(nxt, 0) + 1
    for nxt, prob in outcome_probs(env, s, DOWN).items():
        assert counts[nxt] / 3000 == pytest.approx(prob, abs=0.03)


def test_slip_zero_is_deterministic_and_custom_terminals():
    env = GridWorldEnv(["S.5", "..Z"], slip=0.0, step_reward=0.0, terminal_rewards={"Z": -2.0})
    assert env.P[0][RIGHT] == [(1.0, 1, 0.0, False)]
    five, z = env.state_of(0, 2), env.state_of(1, 2)
    assert env.P[1][RIGHT] == [(1.0, five, 5.0, True)]
    assert env.P[five][DOWN] == [(1.0, five, 0.0, True)]
    assert env.grid.terminal_rewards == {five: 5.0, z: -2.0}


def test_layout_as_multiline_string():
    env = GridWorldEnv("\n".join(GRIDWORLD_4X3))
    assert env.layout == GRIDWORLD_4X3 and env.observation_space.n == 11


@pytest.mark.parametrize(
    "layout, message",
    [
        (["...G", "....", "...."], "exactly one start"),
        (["S..G", "S..."], "exactly one start"),
        (["S..G", "..."], "same length"),
        (["S..G", "..?."], "valid characters"),
        (["S.#G"], "cannot be reached"),
        (["S..#", "..#G"], "cannot be reached"),
        (["S..."], "no terminal"),
        ([], "non-empty"),
    ],
)
def test_bad_layouts_are_rejected_with_a_clear_message(layout, message):
    with pytest.raises(ValueError, match=message):
        GridWorldEnv(layout)


def test_bad_slip_is_rejected():
    with pytest.raises(ValueError, match="slip"):
        GridWorldEnv(GRIDWORLD_4X3, slip=0.6)


def test_random_walk_true_values_are_linear_and_match_dp():
    env = RandomWalkEnv(19)
    V = env.true_values()
    np.testing.assert_allclose(V[1:-1], np.linspace(-0.9, 0.9, 19), atol=1e-12)
    assert V[0] == V[-1] == 0.0
    np.testing.assert_allclose(policy_evaluation(env.P, env.random_policy(), 1.0), V, atol=1e-7)
    np.testing.assert_allclose(
        policy_evaluation(env.P, env.random_policy(), 0.9), env.true_values(0.9), atol=1e-8
    )


def test_random_walk_dynamics():
    env = RandomWalkEnv(5)
    obs, _ = env.reset(seed=0)
    assert obs == 3  # the middle state C of A..E
    assert env.P[1][0] == [(1.0, 0, -1.0, True)]
    assert env.P[5][1] == [(1.0, 6, 1.0, True)]
    assert env.P[2][1] == [(1.0, 3, 0.0, False)]
    with pytest.raises(ValueError, match="n_states"):
        RandomWalkEnv(0)


def test_importing_the_package_registers_the_environments():
    # A fresh interpreter: `import classic_rl` alone must make gym.make("GridWorld4x3-v0") work.
    import subprocess
    import sys

    code = (
        "import gymnasium as gym\n"
        "assert 'GridWorld4x3-v0' not in gym.envs.registry\n"
        "import classic_rl\n"
        "from gymnasium.utils.env_checker import check_env\n"
        "for env_id in ('GridWorld-v0', 'GridWorld4x3-v0', 'RandomWalk-v0', 'RandomWalk19-v0'):\n"
        "    env = gym.make(env_id)\n"
        "    check_env(env.unwrapped, skip_render_check=True)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
