"""The end-to-end demo behind `make demo`: tabular RL, a deep agent, then the RLHF pipeline.

    python scripts/demo.py [--out runs/demo] [--skip-deep] [--skip-rlhf] [--skip-grpo] [--skip-agents]
                           [--seeds 10] [--episodes 500]

1. Value iteration on the course's 4x3 grid world (V with the greedy policy, as a table and a figure).
2. SARSA vs Q-learning on Cliff Walking (epsilon 0.1, alpha 0.5, several seeds): Sutton & Barto's
   Example 6.6 -- SARSA earns more online, Q-learning's greedy path is the 13-step edge.
3. PPO on CartPole-v1 (the agent's loop on the shared core; a short run), and a GIF of one greedy episode.
4. `rlhf pipeline --config configs/rlhf/tiny.yaml`: SFT, reward model, PPO on a tiny LM, then a
   few held-out prompts answered by the SFT and the PPO policy.
5. `rlhf pipeline --config configs/rlhf/grpo_tiny.yaml`: SFT then GRPO on a task with an exactly
   checkable answer (reverse three digits), scored on held-out prompts.
6. FrozenLake-v1 four ways (`scripts/agent_table.py`): tabular Q-learning, classic-rl PPO, and a tiny LM
   agent that reads and writes text (SFT on random transcripts, then GRPO and PPO with the lake's reward),
   with a few held-out episodes of the LM agent before and after RL as conversations.
Every step writes a run directory under --out; the printed tables summarise them. At the end the
same tables and figures go to OUT/results.md and OUT/index.html (one page, viewable offline), and
OUT/demo.json holds them for other tools (scripts/demo_report.py renders it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from demo_report import build_report, markdown_table  # noqa: E402

CLIFF_EXPLANATION = [
    "Online return: the mean return of each run's last 100 training episodes, earned while exploring "
    "(epsilon = 0.1). SARSA learns the values of the epsilon-greedy policy it follows, so it walks one "
    "or two rows above the cliff, where a random exploratory step does not fall off; Q-learning learns "
    "the values of the greedy policy, walks along the edge, and its exploratory steps sometimes drop it "
    "off the cliff (-100), so it earns less online (Sutton & Barto, Example 6.6 and Figure 6.4).",
    "Greedy return: one episode with exploration off (the environment and a greedy policy are "
    "deterministic, so one says all): -13 is the shortest path along the edge, -15 and -17 the paths "
    "one and two rows up.",
    "A greedy SARSA policy can fail to reach the goal. Its Q-values are estimated with a constant step "
    "size (alpha 0.5), so they keep jumping by about one reward per update, and away from the cliff "
    "bumping into a wall costs only one step (-1) more than moving on. For some seeds the greedy "
    "action in one state is then a move into the wall: the greedy policy stays there forever and the "
    "evaluation stops it at its step cap (marked 'capped'; its return is the -1 per step collected up "
    "to the cap). Q-learning's greedy path is what it learns the values of, so it does not loop.",
]


def _section(title: str, **parts: Any) -> dict[str, Any]:
    return {"title": title, "text": parts.get("text", []), "tables": parts.get("tables", []),
            "figures": parts.get("figures", []), "samples": parts.get("samples", []),
            **{key: parts[key] for key in ("samples_caption", "episodes", "episodes_caption") if key in parts}}


def _print_table(table: dict[str, Any]) -> None:
    print(markdown_table(table["header"], table["rows"]))


# ------------------------------------------------------------------------------------- 1. dynamic programming
def value_iteration_section(out: Path) -> dict[str, Any]:
    import classic_rl
    from classic_rl.cli import main as classic_rl_cli
    from classic_rl.plots import grid_view

    print("\n== 1. Value iteration on the 4x3 grid world (gamma 1, step reward -0.04, slip 0.1)", flush=True)
    run = out / "vi-4x3"
    classic_rl_cli(["train", "value_iteration", "GridWorld4x3-v0", "--set", "gamma=1.0", "--out", str(run),
                    "--quiet"])
    classic_rl_cli(["plot", str(run)])
    agent = classic_rl.load(run)
    view = grid_view(agent.env)
    arrows = {(-1, 0): "↑", (1, 0): "↓", (0, -1): "←", (0, 1): "→"}
    n_rows, n_cols = view.shape
    cells = [["#" for _ in range(n_cols)] for _ in range(n_rows)]
    for s, (r, c) in enumerate(view.cells):
        if s in view.labels:
            cells[r][c] = f"{view.labels[s]} (terminal)"
        else:
            cells[r][c] = f"{arrows[tuple(view.action_deltas[int(agent.policy[s])])]} {agent.v[s]:.3f}"
    table = {"caption": "V(s) and the greedy action per cell (# is the wall; the start is row 2, col 0)",
             "header": ["row"] + [f"col {c}" for c in range(n_cols)],
             "rows": [[str(r)] + cells[r] for r in range(n_rows)]}
    _print_table(table)
    sweeps = json.loads((run / "summary.json").read_text()).get("solve", {}).get("sweeps")
    text = [f"Value iteration converged in {sweeps} sweeps. The arrows are the greedy policy: from the "
            "start S (bottom left) up and along the top row to +1; from the bottom right the long way "
            "round, away from the -1 exit, because every move slips sideways with probability 0.1 each "
            "side. V(s) is the expected sum of rewards from s (-0.04 per step, +1 or -1 at the end)."]
    return _section("1. Value iteration on the 4x3 grid world", text=text, tables=[table],
                    figures=[{"path": str((run / "values.png").relative_to(out)),
                              "caption": "V(s) as colours, greedy action as arrows"}])


# ------------------------------------------------------------------------------------------- 2. TD control
def _greedy_text(returns: list[float], capped: list[bool], cap: int) -> str:
    counts = Counter((ret, cap_hit) for ret, cap_hit in zip(returns, capped))
    parts = [f"{ret:.0f}{f' (capped at {cap} steps)' if cap_hit else ''} x{n}"
             for (ret, cap_hit), n in sorted(counts.items(), key=lambda kv: -kv[0][0])]
    return ", ".join(parts)


def cliff_section(out: Path, seeds: int, episodes: int) -> dict[str, Any]:
    import classic_rl
    from classic_rl.cli import main as classic_rl_cli
    from classic_rl.evaluation import DEFAULT_MAX_STEPS, evaluate_episodes
    from classic_rl.plots import plot_learning_curves

    print(f"\n== 2. SARSA vs Q-learning on Cliff Walking (epsilon 0.1, alpha 0.5, {episodes} episodes, "
          f"{seeds} seeds)", flush=True)
    rows, runs = [], []
    for algo in ("sarsa", "q_learning"):
        online, greedy, capped = [], [], []
        for seed in range(seeds):
            run = out / f"{algo}-cliff-s{seed}"
            # The env and a greedy policy are deterministic: one evaluation episode says all.
            classic_rl_cli(["train", algo, "CliffWalking-v1", "--episodes", str(episodes), "--seed", str(seed),
                            "--set", "epsilon=0.1", "alpha=0.5", "--out", str(run), "--quiet",
                            "--eval-episodes", "1"])
            returns = np.loadtxt(run / "episodes.csv", delimiter=",", skiprows=1, usecols=2, ndmin=1)
            online.append(float(returns[-100:].mean()))
            result = evaluate_episodes(classic_rl.load(run), "CliffWalking-v1", episodes=1)
            greedy.append(result.returns[0])
            capped.append(result.capped > 0)
            runs.append(run)
        rows.append([algo, f"{np.mean(online):.1f}", _greedy_text(greedy, capped, DEFAULT_MAX_STEPS)])
    figure = out / "cliff-curves.png"
    plot_learning_curves(runs, figure, x="episodes", ylim=(-100, 0), smooth_window=10)
    print(f"wrote {figure}")
    table = {"caption": f"Cliff Walking, {seeds} seeds per algorithm",
             "header": ["algorithm", "online return (last 100 episodes, mean over seeds)",
                        "greedy return x number of seeds"],
             "rows": rows}
    _print_table(table)
    for paragraph in CLIFF_EXPLANATION:
        print("\n" + paragraph)
    return _section("2. SARSA vs Q-learning on Cliff Walking", text=CLIFF_EXPLANATION, tables=[table],
                    figures=[{"path": figure.name,
                              "caption": f"sum of rewards per episode, moving average over 10 episodes, mean "
                                         f"of {seeds} seeds (shaded: +- std); y from -100 to 0 as in "
                                         "Sutton & Barto's Figure 6.4"}])


# ---------------------------------------------------------------------------------------------- 3. deep RL
def ppo_section(out: Path, steps: int) -> dict[str, Any] | None:
    import classic_rl
    from classic_rl.cli import main as classic_rl_cli
    from classic_rl.video import record_video

    if "ppo" not in classic_rl.ALGORITHMS:
        print("\n(PPO agent not available; skipping the deep-RL step)")
        return None
    print(f"\n== 3. PPO on CartPole-v1 ({steps} steps, the shared PPO core)", flush=True)
    run = out / "ppo-cartpole"
    classic_rl_cli(["train", "ppo", "CartPole-v1", "--steps", str(steps), "--out", str(run), "--quiet"])
    classic_rl_cli(["plot", str(run)])
    summary = json.loads((run / "summary.json").read_text())
    # what `classic-rl eval RUN --video greedy.gif` writes: one greedy episode, seeded like the evaluation's first
    clip = record_video(classic_rl.load(run), run / "greedy.gif", episodes=1)
    print(f"wrote {clip.path} ({clip.frames} frames)")
    table = {"caption": "PPO on CartPole-v1 (the maximum return is 500)",
             "header": ["steps", "wall time (s)", "greedy return (10 episodes)", "last 10 training episodes"],
             "rows": [[str(summary["steps"]), f"{summary['wall_s']:.0f}",
                       f"{summary['eval_return_mean']:.1f} +- {summary['eval_return_std']:.1f}",
                       f"{summary['train_return_last10']:.1f}"]]}
    _print_table(table)
    return _section("3. PPO on CartPole-v1", tables=[table],
                    figures=[{"path": str((run / "curves.png").relative_to(out)),
                              "caption": "episode return while training (moving average)"},
                             {"path": str(clip.path.relative_to(out)),
                              "caption": f"the trained agent, greedy: one episode of {clip.lengths[0]} steps "
                                         f"(return {clip.returns[0]:g}; classic-rl eval RUN --video greedy.gif)"}])


# ------------------------------------------------------------------------------------------------- 4. RLHF
def read_markdown_table(path: Path) -> dict[str, Any]:
    """The first Markdown table of ``path`` as {"header", "rows"} (the pipeline's results.md)."""
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip().startswith("|")]
    lines = [line for line in lines if not re.fullmatch(r"[|\s:-]+", line)]  # the |---|---| rule
    # Cells are separated by " | ": a "||" inside a cell (KL(p || q)) is text, so is an escaped "\|".
    cells = [[cell.strip().replace("\\|", "|") for cell in re.split(r"(?<=\s)\|(?=\s)", line[1:-1])]
             for line in lines]
    return {"header": cells[0], "rows": cells[1:]}


def rlhf_samples(pipeline_dir: Path, n: int = 6) -> list[dict[str, Any]]:
    """The first held-out prompts answered by the SFT and the RL policy, with their gold scores: the samples
    the pipeline itself scored for its table (its summary.json keeps them), not a second draw."""
    summary = json.loads((pipeline_dir / "summary.json").read_text())
    return [{"prompt": sample["prompt"],
             "answers": [{"policy": a["policy"].upper(), "text": a["text"],
                          **({"gold": round(float(a["gold"]), 3)} if "gold" in a else {})} for a in sample["answers"]]}
            for sample in summary.get("samples", [])[:n]]


def print_samples(samples: list[dict[str, Any]], policy: str) -> None:
    print(f"\nHeld-out prompts answered by the SFT and the {policy} policy (sampled, gold score in brackets):")
    for sample in samples[:3]:
        print(f"\n  {sample['prompt']}")
        for answer in sample["answers"]:
            print(f"    {answer['policy']:<4} [{answer.get('gold', float('nan')):+.2f}] {answer['text'].strip()}")


def rlhf_section(out: Path, config_path: Path) -> dict[str, Any]:

    print("\n== 4. RLHF pipeline on the shipped task: tiny model -> SFT -> reward model -> PPO", flush=True)
    rlhf_dir = out / "rlhf"
    cmd = [sys.executable, "-m", "rlhf", "pipeline", "--config", str(config_path), "--output_dir", str(rlhf_dir)]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    table = read_markdown_table(rlhf_dir / "results.md")
    table["caption"] = "the pipeline's results.md (held-out prompts; gold = the task's programmatic scorer)"
    samples = rlhf_samples(rlhf_dir)
    print_samples(samples, "PPO")
    text = ["Gold score: the task's programmatic scorer (rlhf/tasks/reviews.py), which the reward model only sees "
            "through noisy rankings. Learned reward: the reward model's score (0 = the mean of SFT "
            "samples). KL: how far PPO moved the policy from the SFT model it started from."]
    figures = [{"path": "rlhf/ppo_curves.png", "caption": "reward and KL over PPO training"}]
    return _section("4. RLHF: SFT, reward model, PPO on a tiny language model", text=text, tables=[table],
                    figures=[f for f in figures if (out / f["path"]).exists()], samples=samples,
                    samples_caption="held-out prompts answered before (SFT) and after PPO, sampled; gold = the task's scorer")


def grpo_section(out: Path, config_path: Path) -> dict[str, Any]:
    import yaml

    print("\n== 5. GRPO with a verifiable reward: a tiny model learns to reverse three digits", flush=True)
    grpo_dir = out / "rlhf-grpo"
    cmd = [sys.executable, "-m", "rlhf", "pipeline", "--config", str(config_path), "--output_dir", str(grpo_dir)]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    config = yaml.safe_load(config_path.read_text())
    table = read_markdown_table(grpo_dir / "results.md")
    # The pipeline's table is laid out for PPO: name the RL step, and drop the reward-model rows (no reward
    # model here, so they read n/a).
    table["rows"] = [[cell.replace("PPO", "GRPO") for cell in row] for row in table["rows"]
                     if set(re.split(r"\s*->\s*", row[1])) != {"n/a"}]
    num_prompts = config.get("evaluation", {}).get("num_prompts")
    table["caption"] = (f"the pipeline's results.md ({num_prompts} held-out digit triples; gold = reward 1 for an "
                        "exactly reversed answer)")
    generations = config.get("grpo", {}).get("num_generations", 8)
    text = ["The prompt is 'reverse 381:' and the answer is checked exactly (rlhf/tasks/verifiable.py), so the "
            "reward cannot be gamed. SFT on noisy demonstrations (half of them wrong) gives a policy that "
            f"is right part of the time; GRPO samples {generations} answers per prompt, rewards the right ones "
            "relative to their group, and makes the policy right far more often on triples it never trained on."]
    samples = rlhf_samples(grpo_dir)
    print_samples(samples, "GRPO")
    figures = [{"path": "rlhf-grpo/grpo_curves.png", "caption": "reward and KL over GRPO training"}]
    return _section("5. GRPO: critic-free RL from a checkable reward", text=text, tables=[table],
                    figures=[f for f in figures if (out / f["path"]).exists()], samples=samples,
                    samples_caption="held-out prompts answered before (SFT) and after GRPO, sampled; gold 1 = right")


# ----------------------------------------------------------------------------------------- 6. LM agents
EPISODES_SHOWN = 3


def print_episode(episode: dict[str, Any]) -> None:
    print(f"\nHeld-out episode (env seed {episode['env_seed']}), the LM agent before and after RL:")
    for answer in episode["answers"]:
        moves = [m["content"].strip() for m in answer["messages"] if m["role"] == "assistant"]
        result = "reached the goal" if answer.get("success") else "failed"
        print(f"  {answer['policy'].upper():<4} {result} after {answer['turns']} turns: {' -> '.join(moves)}")


def agents_section(out: Path) -> dict[str, Any]:
    print("\n== 6. FrozenLake four ways: tabular Q-learning, classic PPO, a tiny LM agent (SFT, then GRPO / PPO)",
          flush=True)
    agents_dir = out / "agents"
    cmd = [sys.executable, str(ROOT / "scripts" / "agent_table.py"), "--out", str(agents_dir)]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    table = read_markdown_table(agents_dir / "table.md")
    table["caption"] = ("FrozenLake-v1 4x4, not slippery: success rate and mean return (classic agents greedy over "
                        "100 episodes, LM policies sampled on held-out env seeds), environment steps and wall time "
                        "of training")
    episodes = json.loads((agents_dir / "episodes.json").read_text())[:EPISODES_SHOWN]
    for episode in episodes[:1]:
        print_episode(episode)
    text = ["The same gymnasium environment, solved by a 16-entry Q-table, by PPO on an MLP, and by a language "
            "model that reads the state as text and answers with a move. The LM's first policy is cloned from "
            "random play (rlhf rollouts --policy random), so it wanders and rarely reaches the goal; GRPO (groups "
            "of episodes from one env seed) and PPO (a critic and GAE across the turns) on the lake's reward "
            "make it walk to the goal. The environment's turns are context only: the loss covers the model's "
            "own tokens."]
    return _section("6. LM agents: FrozenLake by Q-learning, classic PPO and a tiny LM", text=text, tables=[table],
                    episodes=episodes, episodes_caption="held-out episode of the LM agent, before (SFT) and after RL")


# ---------------------------------------------------------------------------------------------------- main
def write_results(out: Path, sections: list[dict[str, Any]], seconds: float) -> None:
    from classic_rl.safe_io import atomic_write_json, atomic_write_text

    manifest = {"title": "rl-course-toolkit demo", "seconds": round(seconds, 1), "sections": sections}
    atomic_write_json(out / "demo.json", manifest)
    lines = ["# Results of `make demo`", ""]
    for section in sections:
        lines += [f"## {section['title']}", ""]
        for table in section["tables"]:
            lines += [f"{table.get('caption', '')}:", "", markdown_table(table["header"], table["rows"]), ""]
    atomic_write_text(out / "results.md", "\n".join(lines))
    build_report(out)


def _show_notes(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (e.g. an evaluation stopped at its step cap) as one 'note:' line, not a code excerpt."""
    print(f"note: {message}", file=sys.stderr if file is None else file, flush=True)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_notes
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="output folder (a timestamped sibling if it is not empty)")
    parser.add_argument("--skip-deep", action="store_true", help="skip PPO on CartPole")
    parser.add_argument("--skip-rlhf", action="store_true", help="skip the RLHF pipeline")
    parser.add_argument("--seeds", type=int, default=10, help="Cliff Walking seeds per algorithm")
    parser.add_argument("--episodes", type=int, default=500, help="Cliff Walking training episodes")
    parser.add_argument("--ppo-steps", type=int, default=30_000, help="PPO on CartPole environment steps")
    parser.add_argument("--rlhf-config", type=lambda p: Path(p).resolve(), default=ROOT / "configs/rlhf/tiny.yaml")
    parser.add_argument("--skip-grpo", action="store_true", help="skip GRPO on the verifiable task")
    parser.add_argument("--grpo-config", type=lambda p: Path(p).resolve(), default=ROOT / "configs/rlhf/grpo_tiny.yaml")
    parser.add_argument("--skip-agents", action="store_true", help="skip FrozenLake: classic and LM agents")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()  # the rlhf steps run from the repository root and write here too
    if out.exists() and any(out.iterdir()):
        out = out.with_name(f"{out.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True)
    start = time.perf_counter()
    sections = [value_iteration_section(out), cliff_section(out, args.seeds, args.episodes)]
    if not args.skip_deep:
        sections.append(ppo_section(out, args.ppo_steps))
    if not args.skip_rlhf:
        sections.append(rlhf_section(out, Path(args.rlhf_config)))
    if not args.skip_grpo:
        sections.append(grpo_section(out, Path(args.grpo_config)))
    if not args.skip_agents:
        sections.append(agents_section(out))
    seconds = time.perf_counter() - start
    write_results(out, [s for s in sections if s], seconds)
    if not (args.skip_deep or args.skip_rlhf or args.skip_grpo or args.skip_agents):  # the README's are the whole demo's
        import readme_tables

        readme_tables.main([str(out)])
    print(f"\nDemo finished in {seconds:.0f}s; everything is under {out}/")
    print(f"All tables and figures on one page: {out / 'index.html'} (tables also in {out / 'results.md'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
