"""``classic-rl``: list, train, eval, plot, tune and benchmark from the command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from classic_rl.safe_io import DEBUG_ENV, UserError, debug_enabled, exit_status, one_line

EPILOG = """examples:
  classic-rl list
  classic-rl train q_learning CliffWalking-v1 --episodes 500 --set epsilon=0.1 alpha=0.5
  classic-rl train ppo CartPole-v1 --steps 50000 --seed 1 --out runs/ppo-cp
  classic-rl train ppo CartPole-v1 --steps 50000 --resume runs/ppo-cp   # after a kill or Ctrl-C
  classic-rl eval runs/ppo-cp --episodes 20
  classic-rl eval runs/ppo-cp --video ppo-cp.gif      # watch it: greedy episodes to a GIF (or .mp4)
  classic-rl plot runs/ppo-cp runs/dqn-cp --out curves.png
  classic-rl tune ppo CartPole-v1 --trials 20 --steps 20000 --out runs/tune-ppo   # rerun to continue
  classic-rl benchmark ppo a2c --env CartPole-v1 --seeds 5 --steps 50000 --out runs/bench

errors in your input exit with status 2 and one line; --debug (or RL_TOOLKIT_DEBUG=1) shows tracebacks.
"""

TRAIN_EPILOG = """checkpoints and resuming:
  The whole training state (weights, optimizers, replay buffer, normaliser statistics, random
  generators, environments' current episodes, episode-log position) is saved atomically every
  --save-freq environment steps (default: a tenth of --steps; 10000 with --episodes), at the end,
  and on Ctrl-C/SIGTERM, which stop at the next whole step and exit with status 130/143. A run
  killed at any moment continues from its last checkpoint with
      classic-rl train ALGO ENV --steps TOTAL --resume RUN_DIR
  and, for every synchronous algorithm, ends with the numbers of an uninterrupted run (a3c, d4pg
  with actors and maddpg lose no progress but may differ: see docs/reliability.md).
  A loss or weight that becomes NaN/inf stops the run (exit 3); the last good checkpoint stays.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="classic-rl", description="Train and evaluate the course's RL algorithms on gymnasium environments.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks (sets RL_TOOLKIT_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="list algorithms (with family and action spaces)")

    train = sub.add_parser("train", help="train ALGO on ENV and write a run directory", epilog=TRAIN_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("algo")
    train.add_argument("env")
    budget = train.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="environment steps (total when resuming)")
    budget.add_argument("--episodes", type=int, help="training episodes")
    train.add_argument("--seed", type=int, default=None, help="random seed (default 0; a resumed run keeps its own)")
    train.add_argument("--config", help="YAML file of settings (layered over the tuned defaults)")
    train.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                       help="override settings, e.g. --set learning_rate=1e-3 gamma=0.99")
    train.add_argument("--env-kwargs", default=None, help='JSON passed to gym.make, e.g. \'{"is_slippery": false}\'')
    train.add_argument("--out", help="run directory (default runs/ALGO-ENV-sSEED-TIME)")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue RUN_DIR from its last checkpoint up to --steps in total (default: its own budget); "
                            "ALGO and ENV must be the run's")
    train.add_argument("--save-freq", type=int, default=None, metavar="N",
                       help="checkpoint every N environment steps (default: a tenth of --steps; 0: only at the end "
                            "and on Ctrl-C/SIGTERM)")
    train.add_argument("--eval-episodes", type=int, default=10)
    train.add_argument("--quiet", action="store_true", help="no progress bar and no threads line")
    _add_num_threads(train)
    train.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show full tracebacks (sets RL_TOOLKIT_DEBUG=1)")

    ev = sub.add_parser("eval", help="evaluate a saved run greedily")
    ev.add_argument("run_dir")
    ev.add_argument("--episodes", type=int, default=None,
                    help="episodes (default: as many as the run's own final evaluation, else 10)")
    ev.add_argument("--seed", type=int, default=None,
                    help="seed of the first episode, then +1 each (default: the run's own evaluation seed, "
                         "10000, so the result equals summary.json's eval_return_mean)")
    ev.add_argument("--allow-partial", action="store_true",
                    help="evaluate a run whose training did not finish (its last checkpoint)")
    ev.add_argument("--video", metavar="OUT.gif|OUT.mp4",
                    help="also render greedy episodes (the evaluation's first --video-episodes) to a GIF or "
                         "an MP4 (MP4 needs the video extra)")
    ev.add_argument("--video-episodes", type=int, default=1, metavar="N",
                    help="episodes in the --video clip (default 1)")
    _add_num_threads(ev)

    plot = sub.add_parser("plot", help="learning curves (and grid-world values) to PNG")
    plot.add_argument("run_dirs", nargs="+")
    plot.add_argument("--out", default=None, help="PNG path (default: curves.png in the first run dir)")

    add_tune_parser(sub)
    add_benchmark_parser(sub)
    return parser


TUNE_EPILOG = """the study:
  Trials are kept in an Optuna database (default sqlite:///OUT/study.db; any Optuna RDB URL with
  --storage). Rerunning the same command continues the study: --trials is the total of finished
  (COMPLETE or PRUNED) trials, so only the missing ones run. A trial left RUNNING by a killed
  process is marked FAIL and its settings are run again. Watch it with
      optuna-dashboard sqlite:///OUT/study.db     (pip install optuna-dashboard)
search space file (--space), one entry per setting:
  learning_rate: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
  n_epochs: {type: int, low: 1, high: 20}
  batch_size: {type: categorical, choices: [32, 64, 128]}
  one_minus_gamma: {type: float, low: 1.0e-4, high: 0.03, log: true}   # gamma = 1 - value
  num_envs: 4                                                          # fixed for every trial
needs Optuna: pip install -e ".[tune]"
"""


def add_tune_parser(sub: argparse._SubParsersAction) -> None:
    tune = sub.add_parser("tune", help="search hyperparameters with Optuna (TPE + median pruning); resumable",
                          epilog=TUNE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    tune.add_argument("algo")
    tune.add_argument("env")
    tune.add_argument("--trials", type=int, required=True, help="finished trials the study should have in total")
    tune.add_argument("--steps", type=int, required=True, help="environment steps per trial")
    tune.add_argument("--out", required=True, help="folder for study.db, best.yaml and the plots")
    tune.add_argument("--storage", default=None, help="Optuna RDB URL (default sqlite:///OUT/study.db)")
    tune.add_argument("--study", default=None, help="study name (default ALGO-ENV)")
    tune.add_argument("--seed", type=int, default=0, help="training seed of every trial and the sampler's seed")
    tune.add_argument("--space", default=None, metavar="FILE.yaml", help="search space (default: the built-in one)")
    tune.add_argument("--evaluations", type=int, default=5,
                      help="greedy evaluations per trial, every steps/N steps; each is reported for pruning")
    tune.add_argument("--eval-episodes", type=int, default=5, help="episodes per evaluation")
    tune.add_argument("--startup-trials", type=int, default=None, metavar="N",
                      help="random trials before TPE, and complete trials before pruning starts "
                           "(default: 10 as the zoo, at most a fifth of --trials)")


def _add_num_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num_threads", "--num-threads", type=int, default=None, metavar="N",
                        help="torch CPU threads per process (default: OMP_NUM_THREADS if set, else 1 per "
                             "process: small networks run fastest on one)")


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
            raise UserError(f"--env-kwargs is not valid JSON ({err}); example: '{{\"is_slippery\": false}}'") from None
        if not isinstance(env_kwargs, dict):
            raise UserError("--env-kwargs must be a JSON object, e.g. '{\"is_slippery\": false}'")
    agent, summary = train_run(
        args.algo, args.env, steps=args.steps, episodes=args.episodes, seed=args.seed,
        config_file=args.config, overrides=parse_set_args(args.set), env_kwargs=env_kwargs, out=args.out,
        quiet=args.quiet, resume=args.resume, eval_episodes=args.eval_episodes, save_freq=args.save_freq,
        num_threads=args.num_threads,
    )
    agent.close()  # environments and worker processes (vec_env async, A3C/D4PG actors) end here, not at exit
    out = Path(args.resume or args.out or "")
    if summary["interrupted"]:
        print(f"classic-rl train: stopped by {summary['stopped_by']} at step {summary['steps']}; checkpoint saved. "
              f"Resume with: {summary['resume_command']}", file=sys.stderr)
        return 143 if summary["stopped_by"] == "SIGTERM" else 130
    print(f"{summary['algo']} on {summary['env']} (seed {summary['seed']}): {_work_done(summary)}; {_eval_text(summary)}")
    if args.out or args.resume:
        print(f"run directory: {out}")
    print(_checkpoint_text(agent, summary))
    return 0


BIG_BUFFER_BYTES = 100 * 2**20
"""A training_state.pt this large gets the hint that leaving the replay buffer out shrinks it."""


def _human_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _checkpoint_text(agent, summary: dict) -> str:
    """One line: the checkpoint's size and its largest files, and how to shrink a big replay buffer."""
    sizes = summary.get("checkpoint_bytes") or {}
    files = ", ".join(f"{name} {_human_bytes(size)}" for name, size in sorted(sizes.items(), key=lambda kv: -kv[1]))
    text = f"checkpoint: {_human_bytes(sum(sizes.values()))} ({files})"
    config = agent.config
    if getattr(config, "checkpoint_buffer", False) and sizes.get("training_state.pt", 0) > BIG_BUFFER_BYTES:
        text += ("; most of it is the replay buffer: --set checkpoint_buffer=false leaves it out "
                 "(a resume then refills it and is not exact)")
    elif getattr(config, "checkpoint_buffer", True) is False:
        text += "; without the replay buffer (checkpoint_buffer=false): a resume refills it and is not exact"
    return text


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
    from classic_rl.agents.base import Agent
    from classic_rl.safe_io import dumps_strict

    if args.episodes is not None and args.episodes < 1:
        raise UserError(f"--episodes must be a positive integer, got {args.episodes}")
    if args.video is not None:  # before the agent loads: a bad name or a missing encoder costs nothing
        from classic_rl.video import check_video_path

        check_video_path(args.video)
        if args.video_episodes < 1:
            raise UserError(f"--video-episodes must be a positive integer, got {args.video_episodes}")
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    episodes, seed = _eval_defaults(run_dir, args.episodes, args.seed)
    run = Agent.read_state(run_dir).get("run")
    partial = isinstance(run, dict) and run.get("status") != "complete"
    if partial:
        step = Agent.read_state(run_dir).get("num_timesteps", 0)
        meta = Agent.read_meta(run_dir)
        target = run.get("target_steps") or run.get("target_episodes")
        unit = "steps" if run.get("target_steps") else "episodes"
        if not args.allow_partial:
            raise UserError(
                f"{run_dir} holds a partial checkpoint at step {step} (training to {target} {unit} did not finish); "
                f"resume it with `classic-rl train {meta['algo']} {meta['env']} --resume {run_dir}`, "
                "or pass --allow-partial to evaluate it anyway"
            )
        print(f"classic-rl eval: warning: {run_dir} is a partial checkpoint at step {step}, not a finished run",
              file=sys.stderr)
    from classic_rl.threads import configure_threads

    threads = configure_threads(args.num_threads)  # before the agent is built (see train._set_threads)
    agent = classic_rl.load(run_dir)
    mean, std = agent.evaluate(episodes=episodes, seed=seed)  # agents own their env (mpe2:...)
    result = {"algo": agent.algo, "env": agent.env_id, "episodes": episodes, "seed": seed,
              "eval_return_mean": mean, "eval_return_std": std}
    if partial:
        result.update(partial=True, checkpoint_step=agent.num_timesteps)
    if args.video is not None:
        from classic_rl.video import record_video

        video = record_video(agent, args.video, episodes=args.video_episodes, seed=seed)
        result.update(video=str(video.path), video_frames=video.frames, video_episode_lengths=video.lengths,
                      video_episode_returns=video.returns)
    print(threads, file=sys.stderr)  # at the end, so that a damaged run or a bad --video is still one line
    print(dumps_strict(result))
    return 0


def _eval_defaults(run_dir: Path, episodes: int | None, seed: int | None) -> tuple[int, int]:
    """--episodes and --seed, defaulting to those of the run's final evaluation (summary.json), so
    that `classic-rl eval RUN` repeats the number training reported."""
    from classic_rl.evaluation import RUN_EVAL_SEED

    summary: dict = {}
    path = run_dir / "summary.json"
    if path.is_file():
        try:
            summary = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            summary = {}  # only the defaults come from it; the run itself is checked on loading
    if not isinstance(summary, dict):
        summary = {}
    if episodes is None:
        episodes = summary.get("eval_episodes") or 10
    if seed is None:
        seed = summary.get("eval_seed", RUN_EVAL_SEED)
    return int(episodes), int(seed)


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


BENCHMARK_EPILOG = """runs and resuming:
  Run K of ALGO on ENV is OUT/runs/ALGO-ENV-seedK, a normal run directory (--seed K). Rerunning the
  same command skips finished runs and resumes unfinished ones from their last checkpoint.
scores:
  A run's score is its final greedy evaluation (summary.json eval_return_mean), normalised per env
  by --score-range ENV=MIN:MAX (built in: CartPole-v1=0:500, Acrobot-v1=-500:0, Pendulum-v1=-1600:0,
  MountainCar-v0=-200:0, LunarLander-v3=-200:300; otherwise the min and max over the runs, with a
  note). OUT/results.json holds per algorithm the IQM, mean, median and optimality gap with
  stratified-bootstrap 95% intervals, the performance profile and the probabilities of improvement;
  OUT/aggregate_intervals.png and OUT/performance_profile.png draw them.
  classic-rl benchmark --from OUT/runs --out OUT2   aggregates existing runs without training.
needs rliable: pip install -e ".[benchmark]"
"""


def add_benchmark_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("benchmark", help="train algorithms x envs x seeds in parallel and compare them (rliable)",
                           epilog=BENCHMARK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("algos", nargs="*", metavar="ALGO")
    bench.add_argument("--env", action="append", default=[], dest="envs", help="environment id (repeat for several)")
    bench.add_argument("--seeds", type=int, help="runs per (algorithm, env): seeds 0..N-1")
    bench.add_argument("--steps", type=int, help="environment steps per run")
    bench.add_argument("--out", required=True, help="folder for runs/, results.json and the plots")
    bench.add_argument("--workers", type=int, default=None,
                       help="runs at a time (default: one per CPU); 0: one after another in this process")
    bench.add_argument("--backend", choices=("process", "ray"), default="process",
                       help="worker pool: local processes, or Ray actors (RAY_ADDRESS joins a cluster)")
    bench.add_argument("--eval-episodes", type=int, default=10, help="episodes of each run's final evaluation")
    bench.add_argument("--score-range", action="append", default=[], metavar="ENV=MIN:MAX",
                       help="normalise ENV's scores as (score - MIN) / (MAX - MIN); repeat per env")
    bench.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    bench.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    bench.add_argument("--from", dest="from_dirs", nargs="+", metavar="RUN_DIR",
                       help="aggregate these run directories (or folders of them) instead of training")


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from classic_rl.aggregate import parse_score_ranges
    from classic_rl.benchmark import BenchmarkSettings, aggregate_existing, run_benchmark

    ranges = parse_score_ranges(args.score_range)
    if args.from_dirs:
        given = [flag for flag, value in (("ALGO", args.algos), ("--env", args.envs), ("--seeds", args.seeds),
                                          ("--steps", args.steps)) if value not in (None, [])]
        if given:
            raise UserError(f"--from aggregates existing runs: drop {', '.join(given)}")
        results = aggregate_existing(args.from_dirs, args.out, ranges, args.reps, args.seed)
    else:
        missing = [flag for flag, value in (("ALGO", args.algos), ("--env", args.envs), ("--seeds", args.seeds),
                                            ("--steps", args.steps)) if value in (None, [])]
        if missing:
            raise UserError(f"benchmark needs {', '.join(missing)} (or --from RUN_DIR to aggregate existing runs)")
        results, unfinished = run_benchmark(BenchmarkSettings(
            algos=args.algos, envs=args.envs, seeds=args.seeds, steps=args.steps, out=Path(args.out),
            workers=args.workers, backend=args.backend, eval_episodes=args.eval_episodes, score_ranges=ranges,
            reps=args.reps, seed=args.seed,
        ))
        if results is None:
            stopped = [r for r in unfinished if r["status"] == "interrupted"]
            print(f"classic-rl benchmark: {len(unfinished)} runs did not finish"
                  f"{' (stopped)' if stopped else ''}; rerun the same command to resume them (no results.json)",
                  file=sys.stderr)
            return 130 if stopped else 1
    for algo, entry in results["algorithms"].items():
        low, high = entry["iqm_ci"]
        print(f"{algo}: IQM {entry['iqm']:.3f} [{low:.3f}, {high:.3f}], mean {entry['mean']:.3f}, "
              f"median {entry['median']:.3f}, optimality gap {entry['optimality_gap']:.3f} ({entry['runs']} runs)")
    for pair in results["probability_of_improvement"]:
        print(f"P({pair['x']} > {pair['y']}) = {pair['probability']:.3f} [{pair['ci'][0]:.3f}, {pair['ci'][1]:.3f}]")
    out = Path(args.out)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'aggregate_intervals.png'}, "
          f"{out / 'performance_profile.png'}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from classic_rl.tune import TuneSettings, run_tune

    run_tune(TuneSettings(
        algo=args.algo, env=args.env, trials=args.trials, steps=args.steps, out=Path(args.out),
        storage=args.storage, study=args.study, seed=args.seed, space=args.space, evaluations=args.evaluations,
        eval_episodes=args.eval_episodes, startup_trials=args.startup_trials,
    ))
    return 0


def _load_tabular(run_dir: str):
    """The saved agent if it has a state-value table (tabular runs), else None."""
    from classic_rl.agents.base import Agent
    from classic_rl.registry import get_algorithm

    meta = Agent.read_meta(run_dir)  # a damaged or tagged config.yaml is a one-line error naming it

    if not get_algorithm(meta["algo"]).family.startswith(("tabular", "dynamic")):
        return None
    import classic_rl

    return classic_rl.load(run_dir)


@contextlib.contextmanager
def _notes_as_plain_lines(command: str) -> Iterator[None]:
    """Inside, the evaluation cap's warning prints as one ``classic-rl CMD: note: ...`` line and an
    inexact resume's as one ``warning:`` line (not Python's ``file:line: Category: ...`` form with a
    source line); other warnings are unchanged."""
    from classic_rl.checkpoint import InexactResumeWarning
    from classic_rl.evaluation import EvaluationCapWarning

    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, EvaluationCapWarning):
            print(f"classic-rl {command}: note: {message}", file=sys.stderr)
        elif issubclass(category, InexactResumeWarning):
            print(f"classic-rl {command}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.showwarning = showwarning
        yield


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "debug", False):
        os.environ[DEBUG_ENV] = "1"
    try:
        with _notes_as_plain_lines(args.command):
            return _run(args)
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        print(f"classic-rl {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug_enabled():
            raise
        from classic_rl.train import CheckpointWriteError

        status, message = exit_status(err), one_line(err)
        if status == 1 and not isinstance(err, CheckpointWriteError):  # not one of ours: say what it is
            message = f"{type(err).__name__}: {message} (run with --debug for the traceback)"
        print(f"classic-rl {args.command}: error: {message}", file=sys.stderr)
        return status


def _run(args: argparse.Namespace) -> int:
    if args.command == "list":
        return _cmd_list()
    if args.command == "train":
        return _cmd_train(args)
    if args.command == "eval":
        return _cmd_eval(args)
    if args.command == "plot":
        return _cmd_plot(args)
    if args.command == "tune":
        return _cmd_tune(args)
    if args.command == "benchmark":
        return _cmd_benchmark(args)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
