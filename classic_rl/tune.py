"""``classic-rl tune``: hyperparameter search with Optuna, as rl-baselines3-zoo runs it.

Each trial trains ``algo`` on ``env`` for ``steps`` environment steps with settings sampled from
the search space (:mod:`classic_rl.search_spaces`), layered over the tuned defaults as ``classic-rl
train`` layers ``--set``. Every ``steps / evaluations`` steps the greedy policy plays
``eval_episodes`` seeded episodes; the mean return is reported to the trial, and the median pruner
stops trials that fall below the median of the finished ones at the same evaluation. The trial's
value is its last evaluation. Sampler and pruner are the zoo's: TPE (multivariate) after
``startup_trials`` random ones, and ``MedianPruner(n_startup_trials=startup_trials,
n_warmup_steps=evaluations // 3)``; the zoo's 10 startup trials are capped at a fifth of
``--trials`` so short studies still get to TPE.

The study lives in a database (default ``sqlite:///OUT/study.db``, or any Optuna RDB URL), so a
rerun of the same command continues it. ``--trials N`` is the study's total of finished (COMPLETE
or PRUNED) trials: a rerun runs only the missing ones. A trial left RUNNING by a process that
died is marked FAIL and its settings are queued to run again (once): at once when that process ran
on this machine and is gone, otherwise by Optuna's heartbeat after ``GRACE_PERIOD_S``. A FAIL
trial never counts towards ``N``.

Outputs in OUT: ``best.yaml`` (the best trial's settings, for ``classic-rl train ALGO ENV --config
OUT/best.yaml``), ``optimization_history.png`` and ``param_importances.png``.
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from classic_rl.safe_io import UserError, atomic_write_text, to_strict_json

INSTALL_HINT = 'pip install -e ".[tune]"'
HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 180
"""A RUNNING trial whose process (on another machine) sent no heartbeat for this long is FAIL."""
ZOO_STARTUP_TRIALS = 10
MAX_RETRIES = 1
"""How many times the settings of a killed trial are queued again."""
STUDY_ATTR = "classic_rl"
"""Study user attribute holding what its trials are comparable on (checked by every rerun)."""


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise UserError(f"classic-rl tune needs Optuna: {INSTALL_HINT} (or pip install optuna)") from None
    return optuna


@dataclass
class TuneSettings:
    algo: str
    env: str
    trials: int
    steps: int
    out: Path
    storage: str | None = None
    """Optuna RDB URL (default ``sqlite:///OUT/study.db``)."""
    study: str | None = None
    """Study name (default ``ALGO-ENV``)."""
    seed: int = 0
    """Training seed of every trial (they differ only by their settings) and the sampler's seed."""
    space: str | None = None
    """A ``--space`` YAML file (default: the algorithm's built-in space)."""
    evaluations: int = 5
    eval_episodes: int = 5
    eval_seed: int = 10_000
    startup_trials: int | None = None
    """Random trials before TPE, and complete trials before pruning (default: see the module docstring)."""

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(Path(self.out) / 'study.db').resolve()}"

    def study_name(self) -> str:
        return self.study or f"{self.algo}-{self.env.replace('/', '_')}"

    def n_startup(self) -> int:
        if self.startup_trials is not None:
            return self.startup_trials
        return min(ZOO_STARTUP_TRIALS, max(1, self.trials // 5))

    def validate(self) -> None:
        for flag, value, low in (("--trials", self.trials, 1), ("--steps", self.steps, 1),
                                 ("--evaluations", self.evaluations, 1), ("--eval-episodes", self.eval_episodes, 1),
                                 ("--startup-trials", self.startup_trials, 0)):
            if value is not None and int(value) < low:
                raise UserError(f"{flag} must be an integer >= {low}, got {value}")
        if self.evaluations > self.steps:
            raise UserError(f"--evaluations {self.evaluations} is more than --steps {self.steps}; "
                            "evaluate at most once per step")


# ----------------------------------------------------------------------------- one trial
class TrialEvaluator:
    """The agent's run hook during a trial (``Agent.run_hooks``, called at every safe point):
    evaluates at ``steps * k / evaluations`` for k = 1..evaluations, reports each mean return to
    the trial, and raises ``TrialPruned`` when the pruner says so."""

    def __init__(self, trial: Any, settings: TuneSettings) -> None:
        self.trial, self.s = trial, settings
        self.points = [settings.steps * k // settings.evaluations for k in range(1, settings.evaluations + 1)]
        self.reported = 0
        self.value: float | None = None

    def at_safe_point(self, agent: Any) -> None:
        if self.reported < len(self.points) and agent.num_timesteps >= self.points[self.reported]:
            self.evaluate(agent)

    def finish(self, agent: Any) -> float:
        """The trial's value: the last evaluation (one more if training stopped short of the last point)."""
        if self.reported < len(self.points):
            self.evaluate(agent, final=True)
        assert self.value is not None
        return self.value

    def evaluate(self, agent: Any, final: bool = False) -> None:
        optuna = import_optuna()
        mean, _ = agent.evaluate(episodes=self.s.eval_episodes, seed=self.s.eval_seed)
        self.value = mean
        # One rollout may cross several points: the same evaluation stands for each of them.
        while self.reported < len(self.points) and (final or agent.num_timesteps >= self.points[self.reported]):
            self.reported += 1
            self.trial.report(mean, step=self.reported)
        if not math.isfinite(mean) or (self.reported < len(self.points) and self.trial.should_prune()):
            self.trial.set_user_attr("pruned_at", {"evaluation": self.reported, "step": agent.num_timesteps,
                                                  "value": to_strict_json(mean)})
            raise optuna.TrialPruned(f"evaluation {self.reported} of {len(self.points)} "
                                     f"(step {agent.num_timesteps}): {mean:.2f}")


def make_objective(s: TuneSettings, space: Any, agent_cls: type) -> Any:
    """The function Optuna calls for each trial; returns the trial's last evaluation."""
    optuna = import_optuna()
    from classic_rl.checkpoint import TrainingDiverged

    def objective(trial: Any) -> float:
        settings = space.sample(trial)
        trial.set_user_attr("settings", to_strict_json(settings))
        trial.set_user_attr("worker", worker_identity(trial.number))
        print(f"trial {trial.number}: started: {format_settings(settings)}", flush=True)
        try:
            agent = agent_cls(s.env, seed=s.seed, **settings)
        except ValueError as err:  # a combination the config refuses: the zoo prunes those too
            trial.set_user_attr("note", f"invalid settings: {one_line(err)}")
            raise optuna.TrialPruned(f"invalid settings: {one_line(err)}") from None
        evaluator = TrialEvaluator(trial, s)
        agent.run_hooks = evaluator
        try:
            agent.learn(total_steps=s.steps, progress=False)
            return evaluator.finish(agent)
        except TrainingDiverged as err:  # the zoo prunes trials whose settings produce NaNs
            trial.set_user_attr("note", f"diverged: {one_line(err)}")
            raise optuna.TrialPruned(f"diverged: {one_line(err)}") from None
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        finally:
            agent.run_hooks = None
            agent.close()

    return objective


def format_settings(settings: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value).replace(" ", "")

    return " ".join(f"{k}={fmt(v)}" for k, v in settings.items())


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


# ----------------------------------------------------------------------------- trials of dead processes
def worker_identity(trial_number: int) -> dict[str, Any]:
    """Who runs this trial: host, pid and the process's start time (a pid can be reused)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid()),
            "trial": trial_number}


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), or None elsewhere."""
    fields = _proc_stat(pid)
    return fields[19] if fields else None


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def process_gone(owner: dict[str, Any]) -> bool:
    """Whether the process described by :func:`worker_identity` (on this host) no longer runs."""
    pid = int(owner["pid"])
    if Path("/proc/self/stat").exists():
        fields = _proc_stat(pid)
        if fields is None or fields[0] in ("Z", "X"):  # no such process, or dead and not yet reaped
            return True
        return owner.get("started") is not None and fields[19] != owner["started"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def fail_orphaned_trials(study: Any, retry: Any) -> list[int]:
    """Mark FAIL the RUNNING trials whose process ran on this machine and is gone, and queue their
    settings again; returns their numbers. Trials of live processes, or of other machines (the
    heartbeat's job), are left alone."""
    optuna = import_optuna()
    from optuna.trial import TrialState

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("worker")
        # A re-queued trial carries its predecessor's owner: only trust one written for this trial.
        if not isinstance(owner, dict) or owner.get("trial") != trial.number:
            continue
        if owner.get("host") != socket.gethostname() or not process_gone(owner):
            continue
        try:
            changed = study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # another process got there first
            continue
        if changed:
            retry(study, study._storage.get_trial(trial._trial_id))
            failed.append(trial.number)
    return failed


# ----------------------------------------------------------------------------- the study
def open_storage(url: str) -> Any:
    """The study database, with heartbeats so trials of dead processes elsewhere become FAIL."""
    import_optuna()
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    try:
        return RDBStorage(url, heartbeat_interval=HEARTBEAT_INTERVAL_S, grace_period=GRACE_PERIOD_S,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES))
    except Exception as err:  # SQLAlchemy's errors for a bad URL, a missing driver, no server
        raise UserError(f"--storage {url}: cannot open the study database ({one_line(err)}); give an Optuna "
                        "RDB URL such as sqlite:///DIR/study.db or postgresql://USER@HOST/DB") from None


def study_identity(s: TuneSettings, space_key: str) -> dict[str, Any]:
    return {"algo": s.algo, "env": s.env, "steps": s.steps, "evaluations": s.evaluations,
            "eval_episodes": s.eval_episodes, "seed": s.seed, "space": space_key}


FLAGS = {"algo": "ALGO", "env": "ENV", "steps": "--steps", "evaluations": "--evaluations",
         "eval_episodes": "--eval-episodes", "seed": "--seed", "space": "--space"}


def check_same_study(study: Any, identity: dict[str, Any], where: str) -> None:
    """A rerun must search what the study searched, or its trials would not be comparable."""
    stored = study.user_attrs.get(STUDY_ATTR)
    if stored is None:
        study.set_user_attr(STUDY_ATTR, identity)
        return
    for key, value in identity.items():
        if stored.get(key) != value:
            was = "a different search space" if key == "space" else f"{FLAGS[key]} {stored.get(key)}"
            raise UserError(f"{FLAGS[key]} differs from study {study.study_name!r} in {where}: it was made with {was}; "
                            "rerun with the study's settings, or pick another --study or --out")


@contextmanager
def _quiet_optuna(optuna: Any):
    """Our one progress line per trial instead of Optuna's log; its experimental-feature warnings
    (heartbeat, multivariate TPE) are known and not the user's concern."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            yield
        finally:
            optuna.logging.set_verbosity(verbosity)


def finished_trials(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def progress_callback(total: int, started: float) -> Any:
    """One line per finished trial: its state and value, the best so far, how many are finished."""
    from optuna.trial import TrialState

    def report(study: Any, trial: Any) -> None:
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        if trial.state == TrialState.COMPLETE:
            what = f"COMPLETE: {trial.value:.2f}"
        elif trial.state == TrialState.PRUNED:
            at = trial.user_attrs.get("pruned_at")
            what = (f"PRUNED at evaluation {at['evaluation']} (step {at['step']}): {at['value']:.2f}" if at
                    else f"PRUNED ({trial.user_attrs.get('note', 'no value')})")
        else:
            what = trial.state.name
        try:
            best = f"best {study.best_value:.2f} (trial {study.best_trial.number})"
        except ValueError:
            best = "no complete trial yet"
        print(f"trial {trial.number} {what} in {seconds:.1f} s; {best}; "
              f"{len(finished_trials(study))} of {total} finished ({time.monotonic() - started:.0f} s)", flush=True)

    return report


def run_tune(s: TuneSettings) -> dict[str, Any]:
    """Run (or continue) the study; write best.yaml and the plots; returns a summary."""
    optuna = import_optuna()
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from classic_rl.config import resolve_config
    from classic_rl.registry import get_algorithm
    from classic_rl.search_spaces import Budget, space_for, space_key

    s.validate()
    agent_cls = get_algorithm(s.algo)
    agent_cls(s.env, seed=s.seed).close()  # the env exists and suits the algorithm, before any database
    base = resolve_config(agent_cls.Config, s.algo, s.env)
    space = space_for(s.algo, Budget(s.steps, s.evaluations, base), s.space, agent_cls.Config)
    out = Path(s.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out}: cannot create it ({err.strerror or err})") from None
    url = s.storage_url()
    started = time.monotonic()
    with _quiet_optuna(optuna):
        storage = open_storage(url)
        sampler = optuna.samplers.TPESampler(n_startup_trials=s.n_startup(), seed=s.seed, multivariate=True)
        pruner = optuna.pruners.MedianPruner(n_startup_trials=s.n_startup(), n_warmup_steps=s.evaluations // 3)
        study = optuna.create_study(storage=storage, study_name=s.study_name(), direction="maximize",
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
        check_same_study(study, study_identity(s, space_key(space)), url)
        # A rerun's sampler starts from another seed, so its random startup trials repeat none of the first run's.
        study.sampler = optuna.samplers.TPESampler(n_startup_trials=s.n_startup(), seed=s.seed + len(study.trials),
                                                   multivariate=True)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
        for number in fail_orphaned_trials(study, retry):
            print(f"trial {number} was left RUNNING by a process that is gone: marked FAIL, its settings queued again")
        done = len(finished_trials(study))
        print(f"study {study.study_name!r} in {url}: {done} of {s.trials} trials finished"
              + (f"; running {s.trials - done} more ({s.algo} on {s.env}, {s.steps} steps each)" if done < s.trials else ""),
              flush=True)
        if done < s.trials:
            objective = make_objective(s, space, agent_cls)
            try:
                study.optimize(objective, callbacks=[
                    progress_callback(s.trials, started),
                    MaxTrialsCallback(s.trials, states=(TrialState.COMPLETE, TrialState.PRUNED)),
                ])
            except KeyboardInterrupt:
                _requeue_interrupted(study, retry)
                raise
        summary = write_results(study, space, s, url)
    return summary


def _requeue_interrupted(study: Any, retry: Any) -> None:
    """A trial stopped by Ctrl-C is FAIL (Optuna's doing); queue its settings like a killed one's."""
    from optuna.trial import TrialState

    me = (socket.gethostname(), os.getpid())
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        owner = trial.user_attrs.get("worker") or {}
        if trial.user_attrs.get("interrupted") and (owner.get("host"), owner.get("pid")) == me:
            retry(study, trial)
            print(f"trial {trial.number} was interrupted: marked FAIL, its settings queued for the next run", flush=True)


# ----------------------------------------------------------------------------- outputs
def write_results(study: Any, space: Any, s: TuneSettings, url: str) -> dict[str, Any]:
    from optuna.trial import TrialState

    from classic_rl.summary_plots import optimization_history_figure, param_importances_figure, save_figure

    out = Path(s.out)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    summary: dict[str, Any] = {"study": study.study_name, "storage": url, "finished": len(finished_trials(study)),
                               "complete": len(complete), "best_yaml": None, "plots": []}
    if complete:
        best = study.best_trial
        path = out / "best.yaml"
        write_best_yaml(path, best, space, s)
        summary.update(best_yaml=str(path), best_value=best.value, best_trial=best.number)
        print(f"best: trial {best.number} with {best.value:.2f}: {format_settings(best.user_attrs['settings'])}")
        print(f"wrote {path}; train with: classic-rl train {s.algo} {s.env} --config {path}")
    else:
        print("no trial completed (all pruned or failed): no best.yaml")
    trials = study.get_trials(deepcopy=False)
    summary["plots"].append(str(save_figure(optimization_history_figure(trials, study.study_name),
                                            out / "optimization_history.png")))
    importances = param_importances(study) if len(complete) >= 2 else None
    if importances:
        summary["plots"].append(str(save_figure(param_importances_figure(importances, study.study_name),
                                                out / "param_importances.png")))
    else:
        print(f"note: parameter importances need at least 2 complete trials with different settings "
              f"({len(complete)} complete so far); param_importances.png not drawn")
    for plot in summary["plots"]:
        print(f"wrote {plot}")
    print(f"browse the study: optuna-dashboard {url}")
    return summary


def write_best_yaml(path: Path, best: Any, space: Any, s: TuneSettings) -> None:
    """The best trial's settings as a ``classic-rl train --config`` file (a flat mapping of settings)."""
    settings = best.user_attrs.get("settings") or space.settings_of(best.params)
    header = (
        f"# classic-rl tune: trial {best.number} of study {s.study_name()!r}, the best so far: mean greedy return "
        f"{best.value:.2f}\n# ({s.algo} on {s.env}, {s.steps} steps, seed {s.seed}, {s.eval_episodes} evaluation "
        f"episodes). Over the tuned defaults of configs/classic/{s.algo}.yaml:\n"
        f"#   classic-rl train {s.algo} {s.env} --config {path}\n"
    )
    atomic_write_text(path, header + yaml.safe_dump(settings, sort_keys=False))


def param_importances(study: Any) -> dict[str, float] | None:
    """PED-ANOVA importance of each parameter over the complete trials (Optuna 5's default; named
    here because Optuna 4's default, fANOVA, needs scikit-learn), or None when it cannot tell
    (e.g. every complete trial has the same settings)."""
    import optuna

    try:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator)) or None
    except (RuntimeError, ValueError, ZeroDivisionError, ImportError):
        return None
