"""FrozenLake-v1 (4x4, not slippery) four ways: tabular Q-learning, classic-rl PPO, and a tiny LM agent that
reads and writes text -- SFT on random transcripts, then GRPO or PPO rewarded by the lake.

    python scripts/agent_table.py [--out runs/agent_table] [--seed 0]

The LM agent follows configs/rlhf/agent_tiny.yaml (its rollouts, tiny_model, sft, grpo and ppo sections),
step by step through the pipeline's own functions. Columns:

- success rate / mean return: the classic agents' greedy policy over 100 episodes; the LM policies sampled
  as in training (temperature 1) on the config's held-out env seeds (`evaluation.num_prompts` episodes);
- env steps: the environment steps training consumed (for an LM agent: the random rollouts its SFT data
  came from plus its RL episodes; the SFT row: the rollouts alone);
- wall time: seconds of training on this machine (LM rows: rollouts + tiny model + SFT [+ RL]).

OUT gets table.md (the Markdown table), table.json (the same numbers), episodes.json (the first held-out
episodes of each LM policy as conversations, the same env seeds for all) and the LM steps' folders.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from classic_rl.safe_io import dumps_strict

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ENV, ENV_KWARGS = "FrozenLake-v1", {"is_slippery": False}
CLASSIC = {  # algorithm -> (training steps, config overrides)
    "q_learning": (5_000, {"gamma": 0.95}),  # gamma < 1: with gamma 1 every safe state is worth 1 and greedy loops
    "ppo": (20_000, {"gamma": 0.95}),
}


def classic_row(algo: str, seed: int) -> dict[str, Any]:
    import classic_rl

    steps, overrides = CLASSIC[algo]
    start = time.perf_counter()
    agent = classic_rl.make(algo, env=ENV, env_kwargs=ENV_KWARGS, seed=seed, **overrides)
    agent.learn(total_steps=steps, progress=False)
    wall = time.perf_counter() - start
    from classic_rl.evaluation import evaluate_episodes

    result = evaluate_episodes(agent, ENV, episodes=100, seed=10_000, env_kwargs=ENV_KWARGS)
    mean = sum(result.returns) / len(result.returns)
    return {"success_rate": mean, "return_mean": mean, "env_steps": agent.num_timesteps, "wall_s": wall}


def lm_rows(out: Path, seed: int, episodes_out: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    from rlhf.steps.pipeline import PipelineConfig, evaluate_policies, run_step

    cfg = PipelineConfig.from_yaml(ROOT / "configs" / "rlhf" / "agent_tiny.yaml")
    cfg.output_dir, cfg.seed = str(out / "lm"), seed
    cfg.steps = ["rollouts", "tiny_model", "sft", "grpo", "ppo"]
    cfg.validate()
    walls, summaries = {}, {}
    for step in cfg.steps:
        start = time.perf_counter()
        summaries[step] = run_step(cfg, step, overwrite=True)
        walls[step] = time.perf_counter() - start
    evaluation = evaluate_policies(cfg, samples_out=episodes_out)
    base_wall = walls["rollouts"] + walls["tiny_model"] + walls["sft"]
    base_steps = summaries["rollouts"]["env_steps"]
    rows = {"sft": {**_scores(evaluation["sft"]), "env_steps": base_steps, "wall_s": base_wall}}
    for rl in ("grpo", "ppo"):
        rows[rl] = {**_scores(evaluation[rl]), "env_steps": base_steps + summaries[rl]["env_steps"],
                    "wall_s": base_wall + walls[rl]}
    return rows


def _scores(evaluated: dict[str, Any]) -> dict[str, Any]:
    return {"success_rate": evaluated["success_rate"], "return_mean": evaluated["return_mean"]}


NAMES = {
    "q_learning": "tabular Q-learning (`classic-rl train q_learning`)",
    "ppo": "PPO, MLP on one-hot states (`classic-rl train ppo`)",
    "sft": "tiny LM (0.1M parameters): SFT on random transcripts",
    "grpo": "tiny LM: SFT + GRPO (`rlhf grpo --env`)",
    "lm_ppo": "tiny LM: SFT + PPO (`rlhf ppo --env`)",
}


def table(rows: dict[str, dict[str, Any]]) -> str:
    lines = ["| agent | success rate | mean return | env steps | wall time (s) |", "|---|---|---|---|---|"]
    for key, row in rows.items():
        lines.append(f"| {NAMES[key]} | {row['success_rate']:.2f} | {row['return_mean']:.2f} | {row['env_steps']:,} | "
                     f"{row['wall_s']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/agent_table")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from rlhf.common.distributed import keep_deepspeed_unloaded

    keep_deepspeed_unloaded()  # as the rlhf commands: no DeepSpeed import (and warning) just to save a model
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = {algo: classic_row(algo, args.seed) for algo in CLASSIC}
    episodes: list[dict[str, Any]] = []
    lm = lm_rows(out, args.seed, episodes)
    rows.update({"sft": lm["sft"], "grpo": lm["grpo"], "lm_ppo": lm["ppo"]})
    text = table(rows)
    from classic_rl.safe_io import atomic_write_text

    atomic_write_text(out / "table.md", text + "\n")
    atomic_write_text(out / "table.json", dumps_strict(rows, indent=2) + "\n")
    atomic_write_text(out / "episodes.json", dumps_strict(episodes, indent=2) + "\n")
    print("\n" + text)
    return rows


if __name__ == "__main__":
    main()
