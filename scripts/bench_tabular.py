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
from dataclasses import dataclass

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


@dataclass
class Timing:
    wall: float  # best wall-clock seconds
    cpu: float  # process CPU seconds of that best run (less sensitive to a busy machine)
    result: object

    def __str__(self) -> str:
        return f"{self.wall:8.3f} s (cpu {self.cpu:6.3f} s)"


def timed(fn, repeats: int) -> Timing:
    best = None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        t = Timing(time.perf_counter() - start, time.process_time() - start_cpu, result)
        best = t if best is None or t.wall < best.wall else best
    return best


def edge_path_return(q: np.ndarray, P: dict) -> float:
    """Return of the greedy path from the start on the deterministic Cliff Walking model."""
    s, total = 36, 0.0
    for _ in range(100):
        ((_, s, r, done),) = P[s][int(np.argmax(q[s]))]
        total += r
        if done:
            break
    return total


def bench_q_learning(repeats: int) -> None:
    cliff = gym.make("CliffWalking-v1")
    P = cliff.unwrapped.P
    args = (cliff, EPISODES, ALPHA, EPSILON, GAMMA_CLIFF)
    ours = timed(lambda: q_learning(*args, seed=0), repeats)
    via_env = timed(lambda: q_learning(*args, seed=0, use_model=False), repeats)
    ref = timed(lambda: reference_q_learning(cliff, EPISODES), repeats)
    q_ref, ref_returns = ref.result
    print(f"Q-learning, {EPISODES} CliffWalking-v1 episodes (best of {repeats})")
    print(f"  ours (model stepping)  {ours}   greedy path return {edge_path_return(ours.result.q, P):.0f}, "
          f"last-100 mean return {ours.result.episode_returns[-100:].mean():.1f}")  # fmt: skip
    print(
        f"  ours (env.step)        {via_env}   greedy path return {edge_path_return(via_env.result.q, P):.0f}"
    )
    print(f"  reference loop         {ref}   greedy path return {edge_path_return(q_ref, P):.0f}, "
          f"last-100 mean return {ref_returns[-100:].mean():.1f}")  # fmt: skip
    print(
        f"  speed-up (wall): {ref.wall / ours.wall:.1f}x model stepping, {ref.wall / via_env.wall:.1f}x env.step"
    )


def bench_value_iteration(size: int, repeats: int, gamma: float = 0.99) -> None:
    layout = ["S" + "." * (size - 1)] + ["." * size] * (size - 2) + ["." * (size - 1) + "G"]
    build = timed(lambda: GridWorldEnv(layout, slip=0.1, step_reward=-0.04), 1)
    P = build.result.P
    ours = timed(lambda: value_iteration(P, gamma), repeats)
    convert = timed(lambda: TabularModel.from_P(P), repeats)
    sweeps = timed(lambda: value_iteration(convert.result, gamma), repeats)
    ref = timed(lambda: reference_value_iteration(P, gamma), 1)
    print(f"\nValue iteration, {size}x{size} grid world ({len(P)} states, gamma {gamma}, theta 1e-8)")
    print(f"  building the env (P)   {build}")
    print(
        f"  ours, from dict P      {ours}   of which P -> arrays {convert.wall:.3f} s, sweeps {sweeps.wall:.3f} s"
    )
    print(
        f"  reference loop         {ref}   max |V_ours - V_ref| = {np.abs(ours.result[0] - ref.result).max():.1e}"
    )
    print(f"  speed-up (wall): {ref.wall / ours.wall:.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100, help="grid side for value iteration")
    parser.add_argument("--repeats", type=int, default=3, help="best of N timings (reference VI runs once)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    bench_q_learning(args.repeats)
    bench_value_iteration(args.size, args.repeats)


if __name__ == "__main__":
    main()
