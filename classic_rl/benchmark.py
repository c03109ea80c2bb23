"""``classic-rl benchmark``: every (algorithm, env, seed) trained as a normal run, in parallel, then
aggregated (:mod:`classic_rl.aggregate`).

Run ``k`` of ``algo`` on ``env`` is ``OUT/runs/ALGO-ENV-seedK``, a run directory of ``classic-rl
train`` (``--seed K``, the given ``--steps``). The runs go through a worker pool of
:mod:`classic_rl.workers` (local processes, or Ray actors with ``backend="ray"``; on a Ray cluster
OUT must be on a file system every node sees), ``workers`` runs at a time, in rounds: each worker
takes one run per round. A rerun of the same command skips finished runs and continues unfinished
ones from their last checkpoint, as ``classic-rl train --resume`` does; a larger ``--steps``
continues finished runs to the new budget. Ctrl-C stops every run at its next safe point with a
checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from classic_rl.safe_io import UserError, atomic_write_json

RUN_TIMEOUT_S = 7 * 24 * 3600.0
"""How long one round of runs may take before a worker counts as hung (runs can take days)."""
EVAL_SEED = 10_000
"""The final evaluation's first episode seed (``classic-rl train``'s)."""


@dataclass
class BenchmarkSettings:
    algos: list[str]
    envs: list[str]
    seeds: int
    steps: int
    out: Path
    workers: int | None = None
    """Runs at a time (default: one per CPU, at most one per run); 0 runs them in this process."""
    backend: str = "process"
    eval_episodes: int = 10
    score_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    reps: int = 2000
    seed: int = 0
    """Seed of the bootstrap."""

    def validate(self) -> None:
        for flag, value in (("--seeds", self.seeds), ("--steps", self.steps), ("--eval-episodes", self.eval_episodes),
                            ("--reps", self.reps)):
            if int(value) < 1:
                raise UserError(f"{flag} must be a positive integer, got {value}")
        if self.workers is not None and self.workers < 0:
            raise UserError(f"--workers must be >= 0 (0: in this process), got {self.workers}")
        if not self.algos or not self.envs:
            raise UserError("give at least one ALGO and one --env (or --from RUN_DIR to aggregate existing runs)")


@dataclass(frozen=True)
class Job:
    algo: str
    env: str
    seed: int
    run_dir: str


def jobs_of(s: BenchmarkSettings) -> list[Job]:
    return [Job(algo, env, seed, str(Path(s.out) / "runs" / f"{algo}-{env.replace('/', '_')}-seed{seed}"))
            for algo in s.algos for env in s.envs for seed in range(s.seeds)]


# ----------------------------------------------------------------------------- one run
def job_state(job: Job, steps: int) -> str:
    """``new``, ``resume`` (unfinished, or finished with a smaller budget), ``evaluate`` (trained,
    killed during its final evaluation) or ``done``."""
    from classic_rl.agents.base import Agent
    from classic_rl.aggregate import is_run_dir

    run_dir = Path(job.run_dir)
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return "new"
    if not is_run_dir(run_dir):
        return "new"  # killed before its first checkpoint (step 0): nothing to keep
    meta = Agent.read_meta(run_dir)
    if meta["algo"] != job.algo or meta["env"] != job.env or int(meta.get("seed", 0)) != job.seed:
        raise UserError(f"{run_dir} holds a {meta['algo']} run on {meta['env']} with seed {meta.get('seed', 0)}, "
                        f"not {job.algo} on {job.env} with seed {job.seed}; move it away or pick another --out")
    state = Agent.read_state(run_dir)
    run = state.get("run") or {}
    if run.get("status") != "complete" or int(state.get("num_timesteps", 0)) < steps:
        return "resume"
    summary = run_dir / "summary.json"
    if not summary.is_file():
        return "evaluate"
    finished = json.loads(summary.read_text())
    return "evaluate" if finished.get("interrupted") or finished.get("eval_return_mean") is None else "done"


class BenchmarkWorker:
    """What each pool worker holds: nothing but one torch thread; it trains the runs it is sent."""

    def __init__(self) -> None:
        import torch

        torch.set_num_threads(1)  # the runs share the machine's cores

    def run(self, job: dict[str, Any] | None, steps: int, eval_episodes: int) -> dict[str, Any] | None:
        if job is None:  # an idle worker in the last round
            return None
        return run_job(Job(**job), steps, eval_episodes)


def run_job(job: Job, steps: int, eval_episodes: int) -> dict[str, Any]:
    """Train, resume or finish one run; a failure is returned (one line), not raised, so the others go on."""
    from classic_rl.train import train_run

    started = time.monotonic()
    result: dict[str, Any] = {"job": asdict(job)}
    try:
        state = job_state(job, steps)
        result["how"] = state
        if state == "done":
            return {**result, "status": "done"}
        if state == "evaluate":
            return {**result, "status": "complete", "score": evaluate_finished(job, eval_episodes)}
        if state == "new":
            shutil.rmtree(job.run_dir, ignore_errors=True)
            agent, summary = train_run(job.algo, job.env, steps=steps, seed=job.seed, out=job.run_dir, quiet=True,
                                       eval_episodes=eval_episodes)
        else:
            agent, summary = train_run(job.algo, job.env, steps=steps, resume=job.run_dir, quiet=True,
                                       eval_episodes=eval_episodes)
        agent.close()
        status = "interrupted" if summary["interrupted"] else "complete"
        return {**result, "status": status, "score": summary["eval_return_mean"],
                "wall_s": round(time.monotonic() - started, 1)}
    except KeyboardInterrupt:
        return {**result, "status": "interrupted"}
    except Exception as err:
        return {**result, "status": "failed", "error": " ".join(str(err).split()) or type(err).__name__}


def evaluate_finished(job: Job, eval_episodes: int) -> float:
    """The final evaluation of a run that finished training but not its evaluation (summary.json)."""
    import classic_rl
    from classic_rl.agents.base import Agent

    agent = classic_rl.load(job.run_dir)
    try:
        mean, std = agent.evaluate(episodes=eval_episodes, seed=EVAL_SEED)
    finally:
        agent.close()
    state = Agent.read_state(job.run_dir)
    atomic_write_json(Path(job.run_dir) / "summary.json", {
        "algo": job.algo, "env": job.env, "seed": job.seed, "steps": state.get("num_timesteps"),
        "episodes": state.get("num_episodes"), "eval_episodes": eval_episodes, "eval_return_mean": mean,
        "eval_return_std": std, "interrupted": False,
    })
    return mean


# ----------------------------------------------------------------------------- all runs
def check_pairs(s: BenchmarkSettings) -> None:
    """Every algorithm exists, every env exists and suits every algorithm (before any run starts)."""
    from classic_rl.registry import get_algorithm

    classes = {algo: get_algorithm(algo) for algo in s.algos}
    for env in s.envs:
        for agent_cls in classes.values():
            agent_cls(env, seed=0).close()


def run_jobs(jobs: list[Job], s: BenchmarkSettings) -> list[dict[str, Any]]:
    """Run every job that is not done, ``workers`` at a time; returns their results."""
    from classic_rl.workers import make_pool, validate_worker_settings

    todo = []
    for job in jobs:
        if job_state(job, s.steps) == "done":
            print(f"skip {Path(job.run_dir).name}: finished")
        else:
            todo.append(job)
    if not todo:
        return []
    workers = min(len(todo), s.workers if s.workers is not None else (os.cpu_count() or 1))
    print(f"{len(todo)} runs to do of {len(jobs)}, {workers or 'in this process, one'} at a time", flush=True)
    results: list[dict[str, Any]] = []
    if workers == 0:
        for job in todo:
            results.append(run_job(job, s.steps, s.eval_episodes))
            report(results[-1], len(results), len(todo))
        return results
    validate_worker_settings("benchmark", workers, s.backend, RUN_TIMEOUT_S, min_workers=1)
    pool = make_pool(BenchmarkWorker, [()] * workers, backend=s.backend, name="benchmark", timeout_s=RUN_TIMEOUT_S)
    try:
        for start in range(0, len(todo), workers):
            batch = [asdict(j) for j in todo[start:start + workers]]
            batch += [None] * (workers - len(batch))
            for answer in pool.call("run", [(job, s.steps, s.eval_episodes) for job in batch]):
                if answer is not None:
                    results.append(answer)
                    report(answer, len(results), len(todo))
            if any(r["status"] == "interrupted" for r in results):
                break  # Ctrl-C reached the workers too: they saved and stopped
    finally:
        pool.close()
    return results


def report(result: dict[str, Any], done: int, total: int) -> None:
    job = result["job"]
    name = f"[{done}/{total}] {job['algo']} on {job['env']} seed {job['seed']}"
    if result["status"] == "complete":
        how = {"new": "new run", "resume": "resumed", "evaluate": "evaluated"}.get(result.get("how"), "")
        wall = f", {result['wall_s']:.1f} s" if "wall_s" in result else ""
        print(f"{name}: eval return {result['score']:.2f} ({how}{wall})", flush=True)
    elif result["status"] == "failed":
        print(f"{name}: FAILED: {result['error']}", flush=True)
    else:
        print(f"{name}: {result['status']}", flush=True)


def run_benchmark(s: BenchmarkSettings) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Train what is missing, then aggregate; returns (results or None, the runs that failed or stopped)."""
    from classic_rl.aggregate import import_rliable_metrics, read_run, write_results

    s.validate()
    s.algos, s.envs = list(dict.fromkeys(s.algos)), list(dict.fromkeys(s.envs))
    import_rliable_metrics()  # before hours of training, not after
    check_pairs(s)
    jobs = jobs_of(s)
    unfinished = [r for r in run_jobs(jobs, s) if r["status"] not in ("complete", "done")]
    if unfinished:
        return None, unfinished
    runs = [read_run(job.run_dir) for job in jobs]
    return write_results(runs, s.out, s.score_ranges, s.reps, s.seed), []


def aggregate_existing(paths: list[str], out: str | Path, score_ranges: dict[str, tuple[float, float]],
                       reps: int, seed: int) -> dict[str, Any]:
    """``--from``: aggregate run directories (or folders of them) without training."""
    from classic_rl.aggregate import find_run_dirs, import_rliable_metrics, read_run, write_results

    import_rliable_metrics()
    runs = [read_run(path) for path in find_run_dirs(paths)]
    return write_results(runs, out, score_ranges, reps, seed)
