"""The end-to-end demo behind `make demo`: tabular RL, a deep agent, then the RLHF pipeline.

    python scripts/demo.py [--out runs/demo] [--skip-rlhf] [--skip-deep]

1. Value iteration on the course's 4x3 grid world (heatmap of V with the greedy policy).
2. SARSA vs Q-learning on Cliff Walking (epsilon 0.1, alpha 0.5, 3 seeds): Sutton & Barto's
   Example 6.6 -- SARSA earns more online, Q-learning's greedy path is the 13-step edge.
3. PPO on CartPole-v1 through the shared PPO core (a short run).
4. `rlhf pipeline --config configs/rlhf/tiny.yaml`: SFT, reward model, PPO on a tiny LM.
Every step writes a run directory under --out; the printed tables summarise them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def tabular(out: Path) -> None:
    from classic_rl.cli import main as classic_rl

    print("\n== 1. Value iteration on the 4x3 grid world (gamma 1, step reward -0.04)")
    classic_rl(["train", "value_iteration", "GridWorld4x3-v0", "--set", "gamma=1.0",
                "--out", str(out / "vi-4x3"), "--quiet"])
    classic_rl(["plot", str(out / "vi-4x3")])

    print("\n== 2. SARSA vs Q-learning on Cliff Walking (epsilon 0.1, alpha 0.5, 500 episodes, 3 seeds)")
    import classic_rl as crl

    rows = []
    runs = []
    for algo in ("sarsa", "q_learning"):
        online, greedy = [], []
        for seed in range(3):
            run = out / f"{algo}-cliff-s{seed}"
            classic_rl(["train", algo, "CliffWalking-v1", "--episodes", "500", "--seed", str(seed),
                        "--set", "epsilon=0.1", "alpha=0.5", "--out", str(run), "--quiet",
                        "--eval-episodes", "0"])
            returns = np.loadtxt(run / "episodes.csv", delimiter=",", skiprows=1, usecols=2)
            online.append(returns[-100:].mean())
            # The greedy path, capped at 100 steps: -13 is the edge, -17 the safe row, -100 a policy
            # that bumps into a wall forever (constant alpha 0.5 can leave SARSA's greedy Q there).
            mean, _ = crl.evaluate(crl.load(run), "CliffWalking-v1", episodes=1, max_steps=100)
            greedy.append(f"{mean:.0f}")
            runs.append(str(run))
        rows.append((algo, np.mean(online), ", ".join(greedy)))
    classic_rl(["plot", *runs, "--out", str(out / "cliff-curves.png")])
    print(f"{'algorithm':<12} {'online return (last 100 ep.)':>30}   greedy return per seed (100-step cap)")
    for algo, online, greedy in rows:
        print(f"{algo:<12} {online:>30.1f}   {greedy}")


def deep(out: Path) -> None:
    import classic_rl

    if "ppo" not in classic_rl.ALGORITHMS:
        print("\n(PPO agent not available; skipping the deep-RL step)")
        return
    from classic_rl.cli import main as classic_rl_cli

    print("\n== 3. PPO on CartPole-v1 (30k steps, the shared PPO core)")
    run = out / "ppo-cartpole"
    classic_rl_cli(["train", "ppo", "CartPole-v1", "--steps", "30000", "--out", str(run), "--quiet"])
    classic_rl_cli(["plot", str(run)])


def rlhf(out: Path) -> None:
    print("\n== 4. RLHF pipeline on the shipped task: tiny model -> SFT -> reward model -> PPO")
    cmd = [sys.executable, "-m", "rlhf", "pipeline", "--config", str(ROOT / "configs/rlhf/tiny.yaml"),
           "--output_dir", str(out / "rlhf")]
    print("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--skip-deep", action="store_true")
    parser.add_argument("--skip-rlhf", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = out.with_name(f"{out.name}-{stamp}")
    out.mkdir(parents=True)
    start = time.perf_counter()
    tabular(out)
    if not args.skip_deep:
        deep(out)
    if not args.skip_rlhf:
        rlhf(out)
    print(f"\nDemo finished in {time.perf_counter() - start:.0f}s; everything is under {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
