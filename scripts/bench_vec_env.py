"""PPO's training steps/s on each on-policy vector-env backend (``vec_env`` sync, async, envpool).

Every (backend, repeat) trains a fresh PPO agent (the env's tuned config, ``--steps`` steps, no
evaluation) in its own subprocess with one torch thread; the backends alternate within each repeat
so they see the same machine load. Reported per backend: the best and the median steps/s over the
repeats (on a shared machine the best is the least disturbed), and the random-policy steps/s of the
same vector env (:func:`bench_classic.random_policy_rate`: the environment's own limit). Backends
whose package is missing (EnvPool) are listed as skipped.

    python scripts/bench_vec_env.py --env CartPole-v1 --steps 50000 --repeats 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np

THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
BACKENDS = ("sync", "async", "envpool")


def run_one(env_id: str, vec_env: str, steps: int, seed: int) -> dict[str, float]:
    """Train once and measure (inside the worker process)."""
    import torch

    torch.set_num_threads(1)
    from bench_classic import random_policy_rate

    from classic_rl.agents.ppo import PPO

    agent = PPO(env_id, seed=seed, vec_env=vec_env)
    wall = time.perf_counter()
    agent.learn(total_steps=steps, progress=False)
    wall = time.perf_counter() - wall
    steps_done, num_envs = agent.num_timesteps, agent.config.num_envs
    agent.close()
    rate = random_policy_rate(env_id, num_envs, 20_000, seed, vec_env)
    return {"steps_per_s": steps_done / wall, "random_steps_per_s": rate["random_steps_per_s"], "num_envs": num_envs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(run_one(spec["env"], spec["vec_env"], spec["steps"], spec["seed"])))
        return 0
    backends = [b for b in args.backends if b != "envpool" or importlib.util.find_spec("envpool")]
    results: dict[str, list[dict[str, float]]] = {b: [] for b in backends}
    for repeat in range(args.repeats):
        for vec_env in backends:
            spec = json.dumps({"env": args.env, "vec_env": vec_env, "steps": args.steps, "seed": repeat})
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", spec], capture_output=True,
                                  text=True, env={**os.environ, **THREAD_ENV}, check=True)
            results[vec_env].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"{vec_env} repeat {repeat}: {results[vec_env][-1]['steps_per_s']:,.0f} steps/s", file=sys.stderr)
    print(f"PPO on {args.env}, {args.steps:,} steps per run, {args.repeats} runs per backend (tuned config)\n")
    print("| vec_env | n_envs | PPO steps/s, best | PPO steps/s, median | random-policy steps/s, best |")
    print("|---|---|---|---|---|")
    for vec_env, runs in results.items():
        rates = [r["steps_per_s"] for r in runs]
        print(f"| {vec_env} | {runs[0]['num_envs']} | {max(rates):,.0f} | {np.median(rates):,.0f} | "
              f"{max(r['random_steps_per_s'] for r in runs):,.0f} |")
    for vec_env in set(args.backends) - set(backends):
        print(f"| {vec_env} | - | skipped: not installed | - | - |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_classic beside this file
    sys.exit(main())
