"""One training entry point for every algorithm: builds the agent, trains, writes the run directory.

A run directory holds ``config.yaml`` (every resolved setting), ``episodes.csv``,
``summary.json``, the saved agent (``model.safetensors`` ...) and TensorBoard files in ``tb/``.

Everything is validated before the directory is created. During training the whole training
state is checkpointed atomically every ``save_freq`` environment steps (``classic_rl.checkpoint``);
``state.json``'s ``run`` record says how far the last complete checkpoint got (``num_timesteps``)
and whether training finished (``status``: ``running``, ``interrupted`` or ``complete``). A run
killed at any instant continues with ``resume=RUN_DIR`` from its last checkpoint, and for every
synchronous algorithm ends with the numbers of the uninterrupted run (see docs/reliability.md).
Signal handling lives here, not in the agents: during a run Ctrl-C and SIGTERM stop training at
the next whole step or update (the agents' safe points), write a checkpoint and mark the summary
``interrupted``. A diverging run (non-finite loss or weights) stops without saving the
bad state, leaving the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
from pathlib import Path
from typing import Any

from classic_rl.agents.base import Agent
from classic_rl.checkpoint import StopRequested, TrainingDiverged, checkpoint_sizes, stop_signals
from classic_rl.config import resolve_config
from classic_rl.env_utils import env_label
from classic_rl.evaluation import RUN_EVAL_SEED
from classic_rl.logger import RunLogger
from classic_rl.registry import get_algorithm
from classic_rl.safe_io import (
    LOCK_FILE,
    RunDirLocked,
    UserError,
    atomic_write_json,
    has_run_files,
    lock_holder,
    lock_run_dir,
)
from classic_rl.threads import configure_threads, local_processes
from classic_rl.workers import local_worker_count

CHECKPOINTS_PER_RUN = 10
"""Default ``save_freq``: a tenth of a step budget (so a kill loses at most ~10% of the run)."""
EPISODE_BUDGET_SAVE_FREQ = 10_000
"""Default ``save_freq`` (steps) when the budget is counted in episodes."""


def default_run_dir(algo: str, env_id: str, seed: int) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{algo}-{env_id.replace('/', '_')}-s{seed}-{stamp}"


def default_save_freq(steps: int | None) -> int:
    """Steps between checkpoints when ``--save-freq`` is not given."""
    if steps is None:
        return EPISODE_BUDGET_SAVE_FREQ
    return max(1, -(-int(steps) // CHECKPOINTS_PER_RUN))


def _budget(agent: Agent, steps: int | None, episodes: int | None) -> tuple[int | None, int | None]:
    if steps is None and episodes is None:
        if agent.budget_unit == "episode":
            episodes = agent.default_budget()
        else:
            steps = agent.default_budget()
    return steps, episodes


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (disk full, permissions); the previous one is intact."""


class RunCheckpointer:
    """Writes the run's checkpoints: every ``save_freq`` steps at a safe point, and on demand."""

    def __init__(self, out: Path, save_freq: int, logger: RunLogger, budget: dict[str, Any],
                 last_step: int | None = None) -> None:
        self.out, self.save_freq, self.logger, self.budget = out, int(save_freq), logger, budget
        self.last_step = last_step
        self.next_step = 0

    def _schedule_after(self, step: int) -> None:
        self.next_step = (step // self.save_freq + 1) * self.save_freq if self.save_freq else None

    def steps_to_next(self, agent: Agent) -> int:
        """Steps until the next checkpoint is due (agents that train in pieces size them by it)."""
        if not self.save_freq:
            return EPISODE_BUDGET_SAVE_FREQ  # still stop now and then, for Ctrl-C
        return max(1, self.next_step - agent.num_timesteps)

    def at_safe_point(self, agent: Agent) -> None:
        if self.save_freq and agent.num_timesteps >= self.next_step:
            self.save(agent, "running")

    def _failure(self, err: OSError, step: int) -> str:
        """One line: what could not be written where, and which checkpoint is still whole."""
        file = err.filename or self.out
        if err.errno == errno.ENOSPC:
            what = f"no space left on device writing {file}"
        elif err.errno == getattr(errno, "EDQUOT", None):
            what = f"disk quota exceeded writing {file}"
        else:
            what = f"could not write {file} ({err.strerror or err})"
        if self.last_step is None:
            return f"{what}; no checkpoint was written (the run is not resumable)"
        return (f"{what}; the last complete checkpoint is step {self.last_step} (the one at step {step} "
                f"was not written); make room, then continue with --resume {self.out}")

    def save(self, agent: Agent, status: str) -> None:
        bad = agent.non_finite_weight()
        if bad is not None:  # never save a NaN model over a good checkpoint
            raise TrainingDiverged(
                f"training diverged by step {agent.num_timesteps}: weight {bad[0]} is {bad[1]}"
            )
        try:
            self.logger.flush()  # episodes.csv: the checkpoint records how many rows it holds
            run_state = {"status": status, **self.budget, "save_freq": self.save_freq, "log": self.logger.position()}
            agent.save(self.out, run_state=run_state)
        except OSError as err:
            raise CheckpointWriteError(self._failure(err, agent.num_timesteps)) from err
        self.last_step = agent.num_timesteps
        self._schedule_after(agent.num_timesteps)


def resume_command(algo: str, env: str, out: Path, steps: int | None, episodes: int | None) -> str:
    budget = f"--steps {steps}" if steps is not None else f"--episodes {episodes}"
    return f"classic-rl train {algo} {env} {budget} --resume {out}"


def _check_new_out(out: Path, algo: str, env_id: str) -> None:
    """Refuse an --out that is a file, a folder another run holds, or a non-empty folder (nothing in
    it is touched)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory; pick another --out")
    holder = lock_holder(out)
    if holder is not None:
        raise RunDirLocked(f"--out {out} is in use by another run (PID {holder} holds {out / LOCK_FILE}); "
                           "pick another --out")
    if out.is_dir() and has_run_files(out):
        try:
            meta = Agent.read_meta(out)
        except (FileNotFoundError, UserError):
            meta = None
        if meta is not None and meta.get("algo") == algo and meta.get("env") == env_id:
            raise UserError(
                f"--out {out} is not empty: it holds a {algo} run on {env_id}; continue it with "
                f"`classic-rl train {algo} {env_id} --resume {out}` or pick another --out"
            )
        raise UserError(f"--out {out} exists and is not empty; pick another --out (nothing in it was changed)")


def _make_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out}: cannot create the run directory ({err.strerror or err})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: the directory is not writable; pick another --out")


def _open_resume(
    resume: Path, algo: str, env: str, seed: int | None, out: str | Path | None,
    overrides: dict[str, Any] | None, config_file: str | Path | None, env_kwargs: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check that ``--resume`` names a run of this algo/env and no flag contradicts it; returns
    (config.yaml, state.json's run record)."""
    if not resume.is_dir():
        raise UserError(f"--resume {resume}: no such run directory")
    meta = Agent.read_meta(resume)
    run = Agent.read_state(resume).get("run")
    if not isinstance(run, dict):
        raise UserError(f"--resume {resume}: not a run directory of `classic-rl train` (state.json has no run record)")
    if meta["algo"] != algo or meta["env"] != env:
        raise UserError(
            f"--resume {resume} holds a {meta['algo']} run on {meta['env']}, not {algo} on {env}; "
            f"resume it with `classic-rl train {meta['algo']} {meta['env']} --resume {resume}`"
        )
    if seed is not None and int(seed) != int(meta.get("seed", 0)):
        raise UserError(
            f"--seed {seed} differs from the resumed run's seed {meta.get('seed', 0)}; a resumed run keeps "
            f"its seed: drop --seed, or start a new run with another --out"
        )
    if out is not None and Path(out).resolve() != resume.resolve():
        raise UserError(f"--out {out} differs from --resume {resume}; a resumed run writes into its own directory: drop --out")
    for flag, value in (("--set", overrides), ("--config", config_file), ("--env-kwargs", env_kwargs)):
        if value:
            raise UserError(f"{flag} cannot change a resumed run (its settings are in {resume}/config.yaml); "
                            "start a new run instead")
    return meta, run


def _set_threads(num_threads: int | None, config: Any) -> str:
    """Set torch's thread count for the run before the agent is built (the count in force at the
    first linear-algebra call, the orthogonal initialisation, changes the numbers, so a run started
    with OMP_NUM_THREADS=1 and one given --num_threads 1 must set it equally early); returns the
    line to print once the agent is built (so that a bad setting is still a one-line error)."""
    return configure_threads(num_threads, local_processes(1 + local_worker_count(config)))


def train_run(
    algo: str,
    env: str,
    *,
    steps: int | None = None,
    episodes: int | None = None,
    seed: int | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    env_kwargs: dict[str, Any] | None = None,
    out: str | Path | None = None,
    quiet: bool = False,
    resume: str | Path | None = None,
    eval_episodes: int = 10,
    eval_seed: int = RUN_EVAL_SEED,
    save_freq: int | None = None,
    num_threads: int | None = None,
) -> tuple[Agent, dict[str, Any]]:
    """Train ``algo`` on ``env`` and write a run directory; returns (agent, summary).

    ``save_freq``: environment steps between checkpoints (None: a tenth of the budget; 0: only at
    the end and on Ctrl-C/SIGTERM). With ``resume=RUN_DIR`` the run continues from its last
    checkpoint until the *total* budget ``steps`` (default: the run's own) is reached, in the same
    directory. A stop by Ctrl-C/SIGTERM returns with ``summary["interrupted"]`` set.
    ``num_threads``: torch threads per process (None: ``OMP_NUM_THREADS``, else the default of
    ``classic_rl.threads``); unless ``quiet``, one line on stderr says what was chosen.
    """
    for name, value in (("steps", steps), ("episodes", episodes), ("eval_episodes", eval_episodes)):
        if value is not None and int(value) < (0 if name == "eval_episodes" else 1):
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if save_freq is not None and int(save_freq) < 0:
        raise UserError(f"--save-freq must be 0 (only at the end) or a positive number of steps, got {save_freq}")

    run: dict[str, Any] | None = None
    # The run folder's lock (safe_io.lock_run_dir), held until everything is written: a second
    # process on the same folder (the same --resume started twice) stops with one line instead of
    # interleaving its log and checkpoints with ours.
    with contextlib.ExitStack() as hold:
        if resume is not None:
            meta, run = _open_resume(Path(resume), algo, env, seed, out, overrides, config_file, env_kwargs)
            out = Path(resume)
            hold.enter_context(lock_run_dir(out))  # before loading: what we load must be what we continue
            threads = _set_threads(num_threads, meta.get("config") or {})
            agent = Agent.load(out)
            if steps is None and episodes is None:
                steps, episodes = run.get("target_steps"), run.get("target_episodes")
            reached = (steps is not None and steps <= agent.num_timesteps
                       or episodes is not None and episodes <= agent.num_episodes)
            # A run that reached its budget (rollouts may overshoot it) but missed its final save is
            # only finished; a finished one needs a larger budget to go on.
            if reached and run.get("status") == "complete":
                done = f"{agent.num_timesteps} steps" if steps is not None else f"{agent.num_episodes} episodes"
                raise UserError(f"--resume {out}: the run already reached {done}; ask for more with --steps/--episodes")
            if save_freq is None:
                save_freq = run.get("save_freq")
        else:
            agent_cls = get_algorithm(algo)
            seed = 0 if seed is None else int(seed)
            config = resolve_config(agent_cls.Config, algo, env_label(env), config_file, overrides)
            threads = _set_threads(num_threads, config)
            agent = agent_cls(env, config=config, seed=seed, env_kwargs=env_kwargs)
            out = Path(out) if out is not None else default_run_dir(algo, agent.env_id, seed)
            _check_new_out(out, algo, agent.env_id)
            steps, episodes = _budget(agent, steps, episodes)
        target = {"target_steps": steps, "target_episodes": episodes}
        if save_freq is None:
            save_freq = default_save_freq(steps)
        # learn() takes the budget left; the targets above are totals.
        left_steps = None if steps is None else steps - agent.num_timesteps
        left_episodes = None if episodes is None else episodes - agent.num_episodes

        if not quiet:
            print(threads, file=sys.stderr)
        if resume is None:
            _make_out(out)
            hold.enter_context(lock_run_dir(out))
            _check_new_out(out, algo, agent.env_id)  # again, under the lock: another run may have filled it
        # The bar shows the whole budget, and on resume starts at the checkpoint: 48128/50000.
        logger = RunLogger(
            out, total=steps if steps is not None else episodes, unit="step" if steps is not None else "episode",
            initial=agent.num_timesteps if steps is not None else agent.num_episodes, progress=not quiet,
            resume=run.get("log") if run else None, purge_step=agent.num_timesteps + 1 if run else None,
        )
        checkpointer = RunCheckpointer(out, save_freq, logger, target,
                                       last_step=agent.num_timesteps if run else None)
        checkpointer._schedule_after(agent.num_timesteps)
        stop: StopRequested | None = None
        try:
            # The run owns the process's Ctrl-C/SIGTERM (agents only check for a request at their safe
            # points): a request stops training at the next whole step or update, then the checkpoint
            # below is written; one that arrives while a checkpoint is being written lets it finish.
            with stop_signals():
                try:
                    if run is None:
                        checkpointer.save(agent, "running")  # step 0: the folder says what it is and can be resumed
                    agent.run_hooks = checkpointer
                    if (left_steps or 0) > 0 or (left_episodes or 0) > 0:  # else only the final save was missing
                        agent.learn(total_steps=left_steps, episodes=left_episodes, logger=logger,
                                    continue_run=run is not None)
                except StopRequested as request:  # raised at a safe point: the agent's state is whole
                    stop = request
                finally:
                    agent.run_hooks = None
                    logger.close()
                checkpointer.save(agent, "interrupted" if stop is not None else "complete")
        except TrainingDiverged as err:
            raise TrainingDiverged(
                f"{err}; nothing after it was saved: the last good checkpoint (step {checkpointer.last_step}) is in "
                f"{out}. Lower the learning rate or change the settings and start a new run"
            ) from None

        mean, std = None, None  # not evaluated: null in summary.json, never a bare NaN
        if eval_episodes > 0 and stop is None:
            mean, std = agent.evaluate(episodes=eval_episodes, seed=eval_seed)
        recent = logger.episode_returns[-10:]
        summary = {
            "algo": agent.algo,
            "env": agent.env_id,
            "seed": agent.seed,
            "steps": agent.num_timesteps,
            "episodes": agent.num_episodes,
            "wall_s": round(logger.wall_s, 3),
            "eval_episodes": eval_episodes,
            "eval_seed": eval_seed,  # `classic-rl eval` starts from it too, so both give the same number
            "eval_return_mean": mean,
            "eval_return_std": std,
            "train_return_last10": (sum(recent) / len(recent)) if recent else None,
            "interrupted": stop is not None,
            "checkpoint_bytes": checkpoint_sizes(out),
        }
        if getattr(agent, "solve_stats", None):  # dynamic programming: sweeps, not steps or episodes
            summary["solve"] = dict(agent.solve_stats)
        atomic_write_json(out / "summary.json", summary)
        if stop is not None:
            summary["stopped_by"] = stop.signal_name
            summary["resume_command"] = resume_command(algo, agent.env_id, out, steps, episodes)
        return agent, summary
