"""Model-free prediction: estimate V_pi of a fixed policy from sampled episodes.

    Monte Carlo     V(S_t) <- V(S_t) + alpha (G_t - V(S_t)),     G_t = R_{t+1} + gamma G_{t+1}
    TD(0)           V(S_t) <- V(S_t) + alpha (R_{t+1} + gamma V(S_{t+1}) - V(S_t))
    n-step TD       target G_{t:t+n} = R_{t+1} + ... + gamma^{n-1} R_{t+n} + gamma^n V(S_{t+n})

Monte Carlo waits for the full return (no bootstrapping); TD(0) bootstraps from the next state's
estimate; n-step TD sits in between (n = 1 is TD(0), n >= episode length is constant-alpha
every-visit MC). A terminal state contributes V = 0; when an episode is truncated by a time limit
the last state is not terminal and TD targets bootstrap from it.

The policy is fixed, so an episode does not depend on V: each episode is generated first and the
updates are then applied in the order the online algorithm would apply them (same result).
Given the same seed, all three methods see the same episodes, which makes comparisons fair.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from classic_rl.tabular.dp import policy_matrix
from classic_rl.tabular.model import check_gamma
from classic_rl.tabular.stepper import UniformStream, make_stepper, resolve_env

PolicyLike = Callable[[int, np.random.Generator], int] | np.ndarray | Sequence
Callback = Callable[[int, np.ndarray], object]


@dataclass
class Episode:
    """States S_0..S_T, rewards R_1..R_T (``rewards[t]`` follows ``states[t]``), how it ended."""

    states: list[int]
    rewards: list[float]
    terminated: bool


def make_action_sampler(
    policy: PolicyLike, n_states: int, n_actions: int, rng: np.random.Generator, uniform: UniformStream
) -> Callable[[int], int]:
    """Turn a callable ``policy(state, rng) -> action``, integer actions (S,), or probabilities (S, A)
    into a function state -> action driven by the seeded generator."""
    if callable(policy):
        return lambda s: int(policy(s, rng))
    probs = policy_matrix(policy, n_states, n_actions)
    cumulative = np.cumsum(probs, axis=1).tolist()
    last = n_actions - 1

    def sample(s: int) -> int:
        u, cum, a = uniform(), cumulative[s], 0
        while a < last and u >= cum[a]:
            a += 1
        return a

    return sample


def generate_episode(stepper, act: Callable[[int], int]) -> Episode:
    """Run one episode with the fixed policy ``act``."""
    s = stepper.reset()
    states, rewards = [s], []
    while True:
        s, r, terminated, truncated = stepper.step(act(s))
        states.append(s)
        rewards.append(r)
        if terminated or truncated:
            return Episode(states, rewards, bool(terminated))


def _check_alpha(alpha: float | None, allow_none: bool) -> None:
    if alpha is None and allow_none:
        return
    if alpha is None or not 0.0 < float(alpha) <= 1.0:
        extra = " or None for sample averages" if allow_none else ""
        raise ValueError(f"alpha must be in (0, 1]{extra}, got {alpha}")


def _episodes(
    env: gym.Env | str,
    policy: PolicyLike,
    episodes: int,
    seed: int,
    max_steps: int | None,
    use_model: bool | None,
    v_init: float | np.ndarray,
):
    """Shared set-up: returns (V, iterator over episodes)."""
    if int(episodes) != episodes or episodes <= 0:
        raise ValueError(f"episodes must be a positive integer, got {episodes}")
    env = resolve_env(env)
    n_states, n_actions = int(env.observation_space.n), int(env.action_space.n)
    V = np.array(np.broadcast_to(np.asarray(v_init, dtype=np.float64), (n_states,)))
    rng = np.random.default_rng(seed)
    uniform = UniformStream(rng)
    act = make_action_sampler(policy, n_states, n_actions, rng, uniform)
    stepper = make_stepper(env, uniform, seed, max_steps, use_model)
    return V, (generate_episode(stepper, act) for _ in range(int(episodes)))


def mc_prediction(
    env: gym.Env | str,
    policy: PolicyLike,
    alpha: float | None,
    episodes: int,
    gamma: float = 1.0,
    first_visit: bool = True,
    seed: int = 0,
    *,
    v_init: float | np.ndarray = 0.0,
    max_steps: int | None = None,
    use_model: bool | None = None,
    callback: Callback | None = None,
) -> np.ndarray:
    """Monte Carlo prediction of V_pi: move V(S_t) toward the return G_t at the end of each episode.

    ``alpha=None`` averages the returns (V(s) = mean of the returns seen from s, i.e. alpha = 1/N(s));
    otherwise constant-alpha MC. ``first_visit`` counts only the first visit to a state per episode.
    ``callback(episode, V)`` is called after each episode (e.g. to record an RMS error curve).
    """
    gamma = check_gamma(gamma)
    _check_alpha(alpha, allow_none=True)
    V, episode_iter = _episodes(env, policy, episodes, seed, max_steps, use_model, v_init)
    counts = np.zeros_like(V)
    for i, ep in enumerate(episode_iter):
        T = len(ep.rewards)
        returns = [0.0] * T
        G = 0.0
        for t in range(T - 1, -1, -1):
            G = ep.rewards[t] + gamma * G  # G_t = R_{t+1} + gamma G_{t+1}
            returns[t] = G
        seen: set[int] = set()
        for t in range(T):  # in time order, as n-step TD with n >= T would apply them
            s = ep.states[t]
            if first_visit and s in seen:
                continue
            seen.add(s)
            counts[s] += 1
            step = 1.0 / counts[s] if alpha is None else alpha
            V[s] += step * (returns[t] - V[s])
        if callback is not None:
            callback(i, V.copy())
    return V


def td_prediction(
    env: gym.Env | str,
    policy: PolicyLike,
    alpha: float,
    episodes: int,
    gamma: float = 1.0,
    seed: int = 0,
    *,
    v_init: float | np.ndarray = 0.0,
    max_steps: int | None = None,
    use_model: bool | None = None,
    callback: Callback | None = None,
) -> np.ndarray:
    """TD(0) prediction of V_pi: V(S_t) += alpha (R_{t+1} + gamma V(S_{t+1}) - V(S_t)) after each step."""
    gamma = check_gamma(gamma)
    _check_alpha(alpha, allow_none=False)
    V, episode_iter = _episodes(env, policy, episodes, seed, max_steps, use_model, v_init)
    for i, ep in enumerate(episode_iter):
        T = len(ep.rewards)
        for t in range(T):
            s, s_next = ep.states[t], ep.states[t + 1]
            bootstrap = 0.0 if (ep.terminated and t == T - 1) else V[s_next]
            td_target = ep.rewards[t] + gamma * bootstrap
            V[s] += alpha * (td_target - V[s])
        if callback is not None:
            callback(i, V.copy())
    return V


def n_step_td_prediction(
    env: gym.Env | str,
    policy: PolicyLike,
    n: int,
    alpha: float,
    episodes: int,
    gamma: float = 1.0,
    seed: int = 0,
    *,
    v_init: float | np.ndarray = 0.0,
    max_steps: int | None = None,
    use_model: bool | None = None,
    callback: Callback | None = None,
) -> np.ndarray:
    """n-step TD prediction of V_pi (Sutton & Barto section 7.1).

    V(S_tau) moves toward G_{tau:tau+n} = sum_{i=tau+1}^{min(tau+n, T)} gamma^{i-tau-1} R_i
    + gamma^n V(S_{tau+n}) (the bootstrap term only if tau + n < T, or at a truncated end).
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer (number of steps before bootstrapping), got {n}")
    gamma = check_gamma(gamma)
    _check_alpha(alpha, allow_none=False)
    V, episode_iter = _episodes(env, policy, episodes, seed, max_steps, use_model, v_init)
    for i, ep in enumerate(episode_iter):
        T = len(ep.rewards)
        for tau in range(T):
            end = min(tau + n, T)
            G = 0.0
            for k in range(end - 1, tau - 1, -1):  # rewards R_{tau+1} .. R_end, discounted
                G = ep.rewards[k] + gamma * G
            if end < T or not ep.terminated:
                G += gamma ** (end - tau) * V[ep.states[end]]
            V[ep.states[tau]] += alpha * (G - V[ep.states[tau]])
        if callback is not None:
            callback(i, V.copy())
    return V


def rms_error(V: np.ndarray, true_values: np.ndarray, states: np.ndarray | Sequence | None = None) -> float:
    """Root-mean-square error sqrt(mean_s (V(s) - V_true(s))^2) over ``states`` (default: all)."""
    V, true_values = np.asarray(V, dtype=np.float64), np.asarray(true_values, dtype=np.float64)
    idx = slice(None) if states is None else np.asarray(states)
    return float(np.sqrt(np.mean((V[idx] - true_values[idx]) ** 2)))
