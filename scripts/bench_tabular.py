"""Time the tabular code against straightforward plain-Python reference loops.

1. Q-learning, 500 episodes of CliffWalking-v1 (alpha 0.5, epsilon 0.1, gamma 1):
   ours (samples the model P directly) and ours through env.step, vs a textbook loop over env.step
   with a numpy Q table.
2. Value iteration on a 100x100 stochastic grid world (slip 0.1, step reward -0.04, gamma 0.99):
   ours (vectorised sweeps over padded arrays) vs a textbook loop over the dict P.

Both pairs are checked to agree (learned edge path / max |V difference|). Run:
    python scripts/bench_tabular.py [--size 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time

import gymnasium as gym
import numpy as np

from classic_rl.envs import GridWorldEnv
from classic_rl.tabular import TabularModel, q_learning, value_iteration

EPISODES, ALPHA, EPSILON, GAMMA_CLIFF = 500, 0.5, 0.1, 1.0


def reference_q_learning(env: gym.Env, episodes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The loop most tutorials write: env.step, numpy Q table, np.argmax (first-index ties)."""
    n_states, n_actions = env.observation_space.n, env.action_space.n
    q = np.zeros((n_states, n_actions))
    rng = np.random.default_rng(seed)
    returns = np.zeros(episodes)
    s, _ = env.reset(seed=seed)
    for episode in range(episodes):
        if episode:
            s, _ = env.reset()
        done = False
        while not done:
            a = int(rng.integers(n_actions)) if rng.random() < EPSILON else int(np.argmax(q[s]))
            s2, r, terminated, truncated, _ = env.step(a)
            target = r if terminated else r + GAMMA_CLIFF * np.max(q[s2])
            q[s, a] += ALPHA * (target - q[s, a])
            returns[episode] += r
            s, done = s2, terminated or truncated
    return q, returns


def reference_value_iteration(P: dict, gamma: float, theta: float = 1e-8) -> np.ndarray:
    """Sutton & Barto's value iteration, in place, looping over the dict P."""
    V = np.zeros(len(P))
    while True:
        delta = 0.0
        for s in range(len(P)):
            best = max(
                sum(p * (r + (0.0 if done else gamma * V[nxt])) for p, nxt, r, done in outcomes)
                for outcomes in P[s].values()
            )
            delta = max(delta, abs(best - V[s]))
            V[s] = best
        if delta < theta:
            return V


def best_time(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def edge_path_return(q: np.ndarray, P: dict) -> float:
    s, total = 36, 0.0
    for _ in range(100):
        ((_, s, r, done),) = P[s][int(np.argmax(q[s]))]
        total += r
        if done:
            break
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100, help="grid side for value iteration")
    parser.add_argument("--repeats", type=int, default=3, help="best of N timings (reference VI runs once)")
    args = parser.parse_args()

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (timings are wall-clock)\n")
    cliff = gym.make("CliffWalking-v1")
    P_cliff = cliff.unwrapped.P
    t_ours, ours = best_time(
        lambda: q_learning(cliff, EPISODES, ALPHA, EPSILON, GAMMA_CLIFF, seed=0), args.repeats
    )
    t_env, via_env = best_time(
        lambda: q_learning(cliff, EPISODES, ALPHA, EPSILON, GAMMA_CLIFF, seed=0, use_model=False),
        args.repeats,
    )
    t_ref, (q_ref, ref_returns) = best_time(lambda: reference_q_learning(cliff, EPISODES), args.repeats)
    print(f"Q-learning, {EPISODES} CliffWalking-v1 episodes (best of {args.repeats})")
    print(f"  ours (model stepping)   {t_ours:8.3f} s   {ours.total_steps} steps, greedy path return "
          f"{edge_path_return(ours.q, P_cliff):.0f}, last-100 mean return {ours.episode_returns[-100:].mean():.1f}")  # fmt: skip
    print(
        f"  ours (env.step)         {t_env:8.3f} s   greedy path return {edge_path_return(via_env.q, P_cliff):.0f}"
    )
    print(f"  reference loop          {t_ref:8.3f} s   greedy path return {edge_path_return(q_ref, P_cliff):.0f}, "
          f"last-100 mean return {ref_returns[-100:].mean():.1f}")  # fmt: skip
    print(f"  speed-up: {t_ref / t_ours:.1f}x (model stepping), {t_ref / t_env:.1f}x (env.step)")

    n = args.size
    layout = ["S" + "." * (n - 1)] + ["." * n] * (n - 2) + ["." * (n - 1) + "G"]
    start = time.perf_counter()
    grid = GridWorldEnv(layout, slip=0.1, step_reward=-0.04)
    t_build = time.perf_counter() - start
    gamma = 0.99
    t_vi, (V, _) = best_time(lambda: value_iteration(grid.P, gamma), args.repeats)
    model = TabularModel.from_P(grid.P)
    t_convert, _ = best_time(lambda: TabularModel.from_P(grid.P), args.repeats)
    t_sweeps, _ = best_time(lambda: value_iteration(model, gamma), args.repeats)
    t_ref_vi, V_ref = best_time(lambda: reference_value_iteration(grid.P, gamma), 1)
    print(
        f"\nValue iteration, {n}x{n} grid world ({grid.observation_space.n} states, gamma {gamma}, theta 1e-8)"
    )
    print(f"  building the env (P)    {t_build:8.3f} s")
    print(
        f"  ours, from dict P       {t_vi:8.3f} s   (P -> arrays {t_convert:.3f} s, sweeps {t_sweeps:.3f} s)"
    )
    print(
        f"  reference loop          {t_ref_vi:8.3f} s   max |V_ours - V_ref| = {np.abs(V - V_ref).max():.1e}"
    )
    print(f"  speed-up: {t_ref_vi / t_vi:.0f}x")


if __name__ == "__main__":
    main()
