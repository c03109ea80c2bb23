"""Model-free TD control: SARSA, Q-learning and expected SARSA share one loop; only the target differs.

After each transition (S, A, R, S') the action value moves toward a TD target:

    Q(S, A) <- Q(S, A) + alpha * (td_target - Q(S, A))

    SARSA           td_target = R + gamma * Q(S', A')            A' ~ epsilon-greedy(Q)(S'), then taken
    Q-learning      td_target = R + gamma * max_a Q(S', a)
    expected SARSA  td_target = R + gamma * sum_a pi(a|S') Q(S', a)
                              = R + gamma * (epsilon * mean_a Q(S', a) + (1 - epsilon) * max_a Q(S', a))

with no bootstrap (td_target = R) when S' is terminal. SARSA is on-policy: the bootstrap action is
the next behaviour action ("2 x epsilon-greedy"); Q-learning is off-policy: epsilon-greedy
behaviour, greedy target ("1 x epsilon-greedy"). On a time-limit truncation the target still
bootstraps, since S' is not terminal.

The inner loop keeps Q as Python lists and draws uniforms in blocks: for small tables that is
faster than per-element numpy indexing (``scripts/bench_tabular.py``; docs/benchmarks.md, "Measurements moved out of the code").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from classic_rl.tabular.model import check_gamma
from classic_rl.tabular.schedules import Schedule, as_schedule
from classic_rl.tabular.stepper import UniformStream, make_stepper, resolve_env

METHODS = ("sarsa", "q_learning", "expected_sarsa")


@dataclass
class TDControlResult:
    """What a TD control run learned and how training went.

    Attributes:
        q: action values, shape (n_states, n_actions).
        episode_returns: undiscounted return of each finished training episode (behaviour policy).
        episode_lengths: number of steps of each finished episode.
        episode_wall_s: seconds since the start of training at the end of each episode.
        unfinished_steps: steps of a last episode cut short by ``total_steps`` (not in the arrays).
    """

    q: np.ndarray
    episode_returns: np.ndarray
    episode_lengths: np.ndarray
    episode_wall_s: np.ndarray
    unfinished_steps: int = 0

    @property
    def policy(self) -> np.ndarray:
        """Greedy actions argmax_a Q(s, a), shape (n_states,); ties go to the lowest action."""
        return self.q.argmax(axis=1)

    @property
    def v(self) -> np.ndarray:
        """State values of the greedy policy under Q: max_a Q(s, a)."""
        return self.q.max(axis=1)

    @property
    def total_steps(self) -> int:
        """Every environment step taken, including those of an unfinished last episode."""
        return int(self.episode_lengths.sum()) + self.unfinished_steps


def epsilon_greedy(row: list[float], epsilon: float, uniform: UniformStream) -> int:
    """With probability epsilon a uniformly random action, else a greedy one (ties broken at random)."""
    n = len(row)
    if uniform() < epsilon:
        return min(int(uniform() * n), n - 1)
    best = max(row)
    if row.count(best) == 1:
        return row.index(best)
    ties = [a for a in range(n) if row[a] == best]
    return ties[min(int(uniform() * len(ties)), len(ties) - 1)]


def _initial_q(q_init: float | np.ndarray, n_states: int, n_actions: int) -> list[list[float]]:
    q = np.asarray(q_init, dtype=np.float64)
    if q.ndim == 0:
        q = np.full((n_states, n_actions), float(q))
    if q.shape != (n_states, n_actions):
        raise ValueError(
            f"q_init must be a number or an array of shape ({n_states}, {n_actions}), got {q.shape}"
        )
    return q.tolist()


def td_control(
    env: gym.Env | str,
    episodes: int | None,
    alpha: float | Schedule,
    epsilon: float | Schedule,
    gamma: float,
    seed: int = 0,
    *,
    method: str = "q_learning",
    max_steps: int | None = None,
    total_steps: int | None = None,
    q_init: float | np.ndarray = 0.0,
    use_model: bool | None = None,
    callback: Callable[[int, np.ndarray], object] | None = None,
    uniform: UniformStream | None = None,
    seed_env: bool = True,
    first_episode: int = 0,
) -> TDControlResult:
    """Train a tabular action-value function with SARSA, Q-learning or expected SARSA.

    Args:
        env: a gymnasium env with Discrete observations and actions, or its registered id.
        episodes: number of training episodes (None: stop only at ``total_steps``).
        alpha: step size in (0, 1], or a schedule of the episode index.
        epsilon: exploration rate in [0, 1], or a schedule of the episode index (see schedules.py).
        gamma: discount factor in [0, 1].
        seed: seeds action selection and transitions; the same seed repeats the run exactly.
        method: 'sarsa', 'q_learning' or 'expected_sarsa'.
        max_steps: truncate episodes after this many steps (on top of the env's TimeLimit).
        total_steps: stop after this many environment steps; an unfinished episode is not recorded.
        q_init: initial Q, a number or an (n_states, n_actions) array (e.g. to continue training).
        use_model: step the env's model ``P`` directly (None: whenever that is exact, see stepper.py).
        callback: called as ``callback(episode_index, q)`` after each finished episode.
        uniform: the random stream to draw from (default: a new one from ``seed``); passing the
            same stream to consecutive calls makes them one run cut in pieces (checkpoints).
        seed_env: seed the env's first reset with ``seed`` (env stepping only; False continues
            the env's own generator).
        first_episode: index of the first episode, for the ``alpha``/``epsilon`` schedules.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if episodes is None and total_steps is None:
        raise ValueError("give episodes or total_steps (or both) to say when training stops")
    for name, value in (("episodes", episodes), ("total_steps", total_steps)):
        if value is not None and (int(value) != value or value <= 0):
            raise ValueError(f"{name} must be a positive integer or None, got {value}")
    env = resolve_env(env)
    gamma = check_gamma(gamma)
    alpha_at = as_schedule(alpha, "alpha")
    epsilon_at = as_schedule(epsilon, "epsilon")
    n_states, n_actions = int(env.observation_space.n), int(env.action_space.n)
    q = _initial_q(q_init, n_states, n_actions)
    if uniform is None:
        uniform = UniformStream(np.random.default_rng(seed))
    stepper = make_stepper(env, uniform, seed if seed_env else None, max_steps, use_model)
    sarsa, expected = method == "sarsa", method == "expected_sarsa"

    returns: list[float] = []
    lengths: list[int] = []
    wall: list[float] = []
    start_time = time.perf_counter()
    steps_left = total_steps if total_steps is not None else -1
    episode, unfinished = 0, 0
    while (episodes is None or episode < episodes) and steps_left != 0:
        a_rate, eps = float(alpha_at(first_episode + episode)), float(epsilon_at(first_episode + episode))
        s = stepper.reset()
        a = epsilon_greedy(q[s], eps, uniform)
        ret, length, done = 0.0, 0, False
        while steps_left != 0:
            s2, r, terminated, truncated = stepper.step(a)
            ret += r
            length += 1
            steps_left -= 1
            row = q[s2]
            if terminated:
                td_target = r
            elif sarsa:
                a2 = epsilon_greedy(row, eps, uniform)  # the action we will take next
                td_target = r + gamma * row[a2]
            elif expected:
                td_target = r + gamma * (eps * sum(row) / n_actions + (1.0 - eps) * max(row))
            else:
                td_target = r + gamma * max(row)
            q[s][a] += a_rate * (td_target - q[s][a])
            if terminated or truncated:
                done = True
                break
            s = s2
            a = a2 if sarsa else epsilon_greedy(row, eps, uniform)
        if not done:
            unfinished = length  # total_steps ran out mid-episode: the episode did not finish
            break
        returns.append(ret)
        lengths.append(length)
        wall.append(time.perf_counter() - start_time)
        if callback is not None:
            callback(first_episode + episode, np.array(q))
        episode += 1

    return TDControlResult(
        q=np.array(q, dtype=np.float64).reshape(n_states, n_actions),
        episode_returns=np.array(returns, dtype=np.float64),
        episode_lengths=np.array(lengths, dtype=np.int64),
        episode_wall_s=np.array(wall, dtype=np.float64),
        unfinished_steps=unfinished,
    )


def sarsa(
    env: gym.Env | str,
    episodes: int | None,
    alpha: float | Schedule,
    epsilon: float | Schedule,
    gamma: float,
    seed: int = 0,
    **kwargs,
) -> TDControlResult:
    """On-policy TD control: td_target = R + gamma Q(S', A') with A' the next epsilon-greedy action.

    Keyword options as in :func:`td_control`.
    """
    return td_control(env, episodes, alpha, epsilon, gamma, seed, method="sarsa", **kwargs)


def q_learning(
    env: gym.Env | str,
    episodes: int | None,
    alpha: float | Schedule,
    epsilon: float | Schedule,
    gamma: float,
    seed: int = 0,
    **kwargs,
) -> TDControlResult:
    """Off-policy TD control: td_target = R + gamma max_a Q(S', a). Keyword options as in :func:`td_control`."""
    return td_control(env, episodes, alpha, epsilon, gamma, seed, method="q_learning", **kwargs)


def expected_sarsa(
    env: gym.Env | str,
    episodes: int | None,
    alpha: float | Schedule,
    epsilon: float | Schedule,
    gamma: float,
    seed: int = 0,
    **kwargs,
) -> TDControlResult:
    """TD control toward the expectation of Q(S', .) under the epsilon-greedy policy.

    Keyword options as in :func:`td_control`.
    """
    return td_control(env, episodes, alpha, epsilon, gamma, seed, method="expected_sarsa", **kwargs)
