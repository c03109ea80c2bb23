"""``classic-rl``: list, train, eval and plot from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = """examples:
  classic-rl list
  classic-rl train q_learning CliffWalking-v1 --episodes 500 --set epsilon=0.1 alpha=0.5
  classic-rl train ppo CartPole-v1 --steps 50000 --seed 1 --out runs/ppo-cp
  classic-rl eval runs/ppo-cp --episodes 20
  classic-rl plot runs/ppo-cp runs/dqn-cp --out curves.png
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="classic-rl", description="Train and evaluate the course's RL algorithms on gymnasium environments.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="list algorithms (with family and action spaces)")

    train = sub.add_parser("train", help="train ALGO on ENV and write a run directory")
    train.add_argument("algo")
    train.add_argument("env")
    budget = train.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="environment steps (total when resuming)")
    budget.add_argument("--episodes", type=int, help="training episodes")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--config", help="YAML file of settings (layered over the tuned defaults)")
    train.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                       help="override settings, e.g. --set learning_rate=1e-3 gamma=0.99")
    train.add_argument("--env-kwargs", default=None, help='JSON passed to gym.make, e.g. \'{"is_slippery": false}\'')
    train.add_argument("--out", help="run directory (default runs/ALGO-ENV-sSEED-TIME)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a saved run up to --steps in total")
    train.add_argument("--eval-episodes", type=int, default=10)
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    ev = sub.add_parser("eval", help="evaluate a saved run greedily")
    ev.add_argument("run_dir")
    ev.add_argument("--episodes", type=int, default=10)
    ev.add_argument("--seed", type=int, default=123)

    plot = sub.add_parser("plot", help="learning curves (and grid-world values) to PNG")
    plot.add_argument("run_dirs", nargs="+")
    plot.add_argument("--out", default=None, help="PNG path (default: curves.png in the first run dir)")
    return parser


def _cmd_list() -> int:
    from classic_rl.registry import algorithms

    rows = [(name, cls.family, "/".join(cls.action_kinds)) for name, cls in algorithms().items()]
    width = max(len(r[0]) for r in rows) if rows else 10
    fam = max(len(r[1]) for r in rows) if rows else 10
    print(f"{'algorithm':<{width}}  {'family':<{fam}}  actions")
    for name, family, actions in rows:
        print(f"{name:<{width}}  {family:<{fam}}  {actions}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from classic_rl.config import parse_set_args
    from classic_rl.train import train_run

    env_kwargs = None
    if args.env_kwargs:
        try:
            env_kwargs = json.loads(args.env_kwargs)
        except json.JSONDecodeError as err:
            raise ValueError(f"--env-kwargs is not valid JSON ({err}); example: '{{\"is_slippery\": false}}'") from None
        if not isinstance(env_kwargs, dict):
            raise ValueError("--env-kwargs must be a JSON object, e.g. '{\"is_slippery\": false}'")
    agent, summary = train_run(
        args.algo, args.env, steps=args.steps, episodes=args.episodes, seed=args.seed,
        config_file=args.config, overrides=parse_set_args(args.set), env_kwargs=env_kwargs, out=args.out,
        quiet=args.quiet, resume=args.resume, eval_episodes=args.eval_episodes,
    )
    agent.close()  # environments and worker processes (vec_env async, A3C/D4PG actors) end here, not at exit
    out = Path(args.resume or args.out or "")
    print(f"{summary['algo']} on {summary['env']} (seed {summary['seed']}): {_work_done(summary)}; {_eval_text(summary)}")
    if args.out or args.resume:
        print(f"run directory: {out}")
    return 0


def _work_done(summary: dict) -> str:
    """'N steps, M episodes', or for dynamic programming what the solver did (it takes no steps)."""
    solve = summary.get("solve")
    if solve:
        name = summary["algo"].replace("_", " ")
        improvements = f", {solve['improvements']} policy improvements" if "improvements" in solve else ""
        return f"{name} converged in {solve['sweeps']} sweeps{improvements} ({summary['wall_s']:.1f}s)"
    return f"{summary['steps']} steps, {summary['episodes']} episodes in {summary['wall_s']:.1f}s"


def _eval_text(summary: dict) -> str:
    mean = summary.get("eval_return_mean")
    if not summary.get("eval_episodes") or mean is None:
        return "not evaluated (--eval-episodes 0)"
    return f"eval return {mean:.2f} +- {summary['eval_return_std']:.2f}"


def _cmd_eval(args: argparse.Namespace) -> int:
    import classic_rl

    agent = classic_rl.load(args.run_dir)
    mean, std = agent.evaluate(episodes=args.episodes, seed=args.seed)  # agents own their env (mpe2:...)
    print(json.dumps({"algo": agent.algo, "env": agent.env_id, "episodes": args.episodes,
                      "eval_return_mean": mean, "eval_return_std": std}))
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from classic_rl.plots import grid_view, plot_grid_values, plot_learning_curves

    with_episodes = [d for d in args.run_dirs if (Path(d) / "episodes.csv").is_file()
                     and (Path(d) / "episodes.csv").stat().st_size > 0]
    has_rows = [d for d in with_episodes if len((Path(d) / "episodes.csv").read_text().splitlines()) > 1]
    if has_rows:
        out = args.out or str(Path(args.run_dirs[0]) / "curves.png")
        print(f"wrote {plot_learning_curves(has_rows, out)}")
    # Grid worlds also get the course's picture: V as a heatmap with the greedy policy as arrows.
    for run_dir in args.run_dirs:
        if not (Path(run_dir) / "config.yaml").is_file():
            raise FileNotFoundError(f"{run_dir!r} is not a run directory: it has no config.yaml")
        agent = _load_tabular(run_dir)
        if agent is None:
            continue
        try:
            grid_view(agent.env)
        except ValueError:
            continue
        path = plot_grid_values(agent.v, agent.policy, agent.env, Path(run_dir) / "values.png",
                                title=f"{agent.algo} on {agent.env_id}")
        print(f"wrote {path}")
    return 0


def _load_tabular(run_dir: str):
    """The saved agent if it has a state-value table (tabular runs), else None."""
    import yaml

    meta = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    from classic_rl.registry import get_algorithm

    if not get_algorithm(meta["algo"]).family.startswith(("tabular", "dynamic")):
        return None
    import classic_rl

    return classic_rl.load(run_dir)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            return _cmd_list()
        if args.command == "train":
            return _cmd_train(args)
        if args.command == "eval":
            return _cmd_eval(args)
        if args.command == "plot":
            return _cmd_plot(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"classic-rl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
