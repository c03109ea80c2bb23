"""Search spaces of ``classic-rl tune``: the built-in ones per algorithm and the ``--space`` file.

A space maps setting names (the fields of the algorithm's config, as ``--set`` takes them) to
what the sampler may pick. A ``--space FILE.yaml`` holds one entry per setting::

    learning_rate: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
    n_epochs: {type: int, low: 1, high: 20}             # optional: step (default 1), log
    batch_size: {type: categorical, choices: [32, 64, 128]}
    hidden: {type: categorical, choices: [[64], [64, 64]]}
    one_minus_gamma: {type: float, low: 1.0e-4, high: 0.03, log: true}   # sets gamma = 1 - value
    num_envs: 4                                         # a plain value: fixed for every trial

``one_minus_NAME`` samples ``1 - NAME`` (rl-baselines3-zoo's way of searching a discount close to
1 on a log scale). A file replaces the built-in space of the algorithm; the tuned defaults of
``configs/classic/ALGO.yaml`` stay underneath, as for ``classic-rl train``.

The built-in spaces follow rl-baselines3-zoo's ``hyperparams_opt.py`` samplers, with our field
names (``net_arch`` -> ``hidden``, ``activation_fn`` -> ``activation``). Step-like choices that
cannot fit the budget are dropped, so every trial learns between two evaluations: rollouts
(``num_envs * n_steps``) larger than the interval between evaluations, and ``learning_starts`` or
``target_update_interval`` beyond half the budget.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from classic_rl.config import ConfigError, field_names, load_yaml

KINDS = ("float", "int", "categorical")
SPEC_KEYS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
             "categorical": {"type", "choices"}}
ONE_MINUS = "one_minus_"


@dataclass(frozen=True)
class Param:
    """One searched setting: ``float``/``int`` in [low, high] (optionally log-scaled or stepped) or
    one of ``choices``."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        # Optuna stores only None/bool/int/float/str choices: lists (layer sizes) go in as their YAML text.
        picked = trial.suggest_categorical(self.name, [encode_choice(c) for c in self.choices])
        return self.decode(picked)

    def decode(self, stored: Any) -> Any:
        """The choice whose stored form is ``stored`` (what ``trial.params`` holds)."""
        for choice in self.choices:
            if encode_choice(choice) == stored:
                return choice
        return stored


def encode_choice(choice: Any) -> Any:
    if choice is None or isinstance(choice, (bool, int, float, str)):
        return choice
    return yaml.safe_dump(choice, default_flow_style=True).strip()


@dataclass
class SearchSpace:
    """What one trial samples (``params``), the settings every trial gets (``fixed``), and for a
    built-in space the rule that ties settings together (``derive``, e.g. gradient_steps = train_freq)."""

    params: list[Param]
    fixed: dict[str, Any] = field(default_factory=dict)
    derive: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    source: str = "built-in"

    def sample(self, trial: Any) -> dict[str, Any]:
        """The trial's settings, in the config's names."""
        return self.to_settings({p.name: p.suggest(trial) for p in self.params})

    def settings_of(self, stored_params: dict[str, Any]) -> dict[str, Any]:
        """The settings of a finished trial from its ``trial.params``."""
        by_name = {p.name: p for p in self.params}
        return self.to_settings({k: by_name[k].decode(v) if k in by_name else v for k, v in stored_params.items()})

    def to_settings(self, values: dict[str, Any]) -> dict[str, Any]:
        settings = dict(self.fixed)
        for name, value in values.items():
            if name.startswith(ONE_MINUS):
                settings[name[len(ONE_MINUS):]] = 1.0 - float(value)
            else:
                settings[name] = value
        return self.derive(settings) if self.derive is not None else settings

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (stored with the study, so a rerun can check it searches the same space)."""
        params = [{k: v for k, v in dataclasses.asdict(p).items() if v is not None and v != ()} for p in self.params]
        return {"source": self.source, "fixed": self.fixed, "params": params}


# ----------------------------------------------------------------------------- --space FILE
def load_space(path: str | Path, config_cls: type) -> SearchSpace:
    """Read a ``--space`` file (see the module docstring); mistakes are one line naming the file and key."""
    data = load_yaml(path)  # a missing file or bad YAML is already a one-line ConfigError naming it
    if not data:
        raise ConfigError(f"--space {path}: the file names no setting; example: "
                          "learning_rate: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}")
    valid = field_names(config_cls)
    params, fixed = [], {}
    for name, spec in data.items():
        name = str(name)
        target = name[len(ONE_MINUS):] if name.startswith(ONE_MINUS) else name
        if target not in valid:
            raise ConfigError(f"--space {path}: {name!r} is not a setting of this algorithm; valid: {', '.join(sorted(valid))}")
        if isinstance(spec, dict):
            params.append(_param(path, name, spec))
        else:
            fixed[name] = spec
    if not params:
        raise ConfigError(f"--space {path}: nothing to search (every entry is a fixed value); give at least one "
                          "entry as {type: float|int|categorical, ...}")
    fixed = {k[len(ONE_MINUS):] if k.startswith(ONE_MINUS) else k: (1.0 - float(v) if k.startswith(ONE_MINUS) else v)
             for k, v in fixed.items()}
    return SearchSpace(params, fixed=fixed, source=str(path))


def _param(path: str | Path, name: str, spec: dict[str, Any]) -> Param:
    where = f"--space {path}: {name}"
    kind = spec.get("type")
    if kind not in KINDS:
        raise ConfigError(f"{where}: type must be one of {', '.join(KINDS)}, got {kind!r}")
    unknown = set(spec) - SPEC_KEYS[kind]
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} for type {kind}; "
                          f"allowed: {', '.join(sorted(SPEC_KEYS[kind]))}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: categorical needs a non-empty list 'choices', e.g. choices: [32, 64]")
        return Param(name, kind, choices=tuple(choices))
    bounds = []
    for key in ("low", "high"):
        value = spec.get(key)
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: {key} must be a number, got {spec.get(key)!r}")
        if kind == "int" and not float(value).is_integer():
            raise ConfigError(f"{where}: {key} must be an integer for type int, got {value!r}")
        bounds.append(value)
    low, high = bounds
    if not low < high:
        raise ConfigError(f"{where}: low must be below high, got low={low} high={high}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: log: true needs low > 0, got low={low}")
    step = spec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise ConfigError(f"{where}: step must be a positive number, got {step!r}")
    if step is not None and log:
        raise ConfigError(f"{where}: give either log or step, not both")
    return Param(name, kind, low=low, high=high, log=log, step=step)


# ----------------------------------------------------------------------------- built-in spaces
@dataclass
class Budget:
    """What a built-in space may depend on: the trial budget and the resolved default config."""

    steps: int
    evaluations: int
    config: Any

    def rollouts_that_fit(self, choices: list[int]) -> tuple[int, ...]:
        """``n_steps`` choices whose rollout (``num_envs * n_steps``) fits between two evaluations."""
        room = self.steps // self.evaluations
        num_envs = int(getattr(self.config, "num_envs", 1))
        return tuple(c for c in choices if c * num_envs <= room) or (min(choices),)

    def within_half(self, choices: list[int]) -> tuple[int, ...]:
        """Step counts (learning_starts, target_update_interval) no larger than half the budget."""
        return tuple(c for c in choices if c <= self.steps // 2) or (min(choices),)


def cat(name: str, choices: Any) -> Param:
    return Param(name, "categorical", choices=tuple(choices))


def real(name: str, low: float, high: float, log: bool = False) -> Param:
    return Param(name, "float", low=low, high=high, log=log)


GAMMAS = [0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999]
TAUS = [0.001, 0.005, 0.01, 0.02, 0.05, 0.08]
TRAIN_FREQS = [1, 4, 8, 16, 32, 64, 128, 256, 512]
NETS_SMALL_TO_MEDIUM = [[64], [64, 64], [256, 256]]  # zoo's tiny, small, medium
NETS_CONTINUOUS = [[64, 64], [256, 256], [400, 300]]  # zoo's small, medium, big


def ppo_space(budget: Budget) -> SearchSpace:
    num_envs = int(budget.config.num_envs)

    def derive(s: dict[str, Any]) -> dict[str, Any]:
        # A minibatch cannot exceed the rollout (the zoo leaves this to SB3, which then uses the rollout).
        return {**s, "batch_size": min(int(s["batch_size"]), num_envs * int(s["n_steps"]))}

    return SearchSpace([
        cat("batch_size", [32, 64, 128, 256, 512]),
        cat("n_steps", budget.rollouts_that_fit([32, 64, 128, 256, 512, 1024, 2048])),
        real("one_minus_gamma", 1e-4, 0.03, log=True),
        real("one_minus_gae_lambda", 1e-4, 0.1, log=True),
        real("learning_rate", 1e-5, 2e-3, log=True),
        real("ent_coef", 1e-8, 0.1, log=True),
        cat("clip_range", [0.1, 0.2, 0.3, 0.4]),
        cat("n_epochs", [1, 5, 10, 20]),
        real("max_grad_norm", 0.3, 2.0),
        cat("hidden", NETS_SMALL_TO_MEDIUM),
        cat("activation", ["tanh", "relu"]),
    ], derive=derive)


def a2c_space(budget: Budget) -> SearchSpace:
    return SearchSpace([
        cat("n_steps", budget.rollouts_that_fit([8, 16, 32, 64, 128, 256, 512, 1024, 2048])),
        real("one_minus_gamma", 1e-4, 0.03, log=True),
        real("one_minus_gae_lambda", 1e-4, 0.1, log=True),
        real("learning_rate", 1e-5, 2e-3, log=True),
        real("max_grad_norm", 0.3, 2.0),
        real("ent_coef", 1e-8, 0.1, log=True),
        cat("hidden", [[64, 64], [256, 256]]),
        cat("activation", ["tanh", "relu"]),
    ])


def dqn_space(budget: Budget) -> SearchSpace:
    def derive(s: dict[str, Any]) -> dict[str, Any]:
        # The zoo samples how many env steps share one gradient step, not gradient_steps itself.
        s = dict(s)
        s["gradient_steps"] = max(int(s["train_freq"]) // int(s.pop("subsample_steps")), 1)
        return s

    return SearchSpace([
        cat("gamma", GAMMAS),
        real("learning_rate", 1e-5, 1.0, log=True),
        cat("batch_size", [16, 32, 64, 100, 128, 256, 512]),
        cat("buffer_size", [10_000, 50_000, 100_000, 1_000_000]),
        real("exploration_final_eps", 0.0, 0.2),
        real("exploration_fraction", 0.0, 0.5),
        cat("target_update_interval", budget.within_half([1, 1000, 5000, 10_000, 15_000, 20_000])),
        cat("learning_starts", budget.within_half([0, 1000, 5000, 10_000, 20_000])),
        cat("train_freq", [1, 4, 8, 16, 128, 256, 1000]),
        cat("subsample_steps", [1, 2, 4, 8]),
        cat("hidden", NETS_SMALL_TO_MEDIUM),
    ], derive=derive)


def _gradient_steps_per_train_freq(s: dict[str, Any]) -> dict[str, Any]:
    # As the zoo: one gradient step per collected step (its comment: sampling it "takes too much time").
    return {**s, "gradient_steps": int(s["train_freq"])}


def sac_space(budget: Budget) -> SearchSpace:
    # The zoo also samples log_std_init, which only exists with gSDE; our SAC has no such setting.
    return SearchSpace([
        cat("gamma", GAMMAS),
        real("learning_rate", 1e-5, 1.0, log=True),
        cat("batch_size", [16, 32, 64, 128, 256, 512, 1024, 2048]),
        cat("buffer_size", [10_000, 100_000, 1_000_000]),
        cat("learning_starts", budget.within_half([0, 1000, 10_000, 20_000])),
        cat("train_freq", TRAIN_FREQS),
        cat("tau", TAUS),
        cat("hidden", NETS_CONTINUOUS),
    ], derive=_gradient_steps_per_train_freq)


def td3_space(budget: Budget) -> SearchSpace:
    """TD3 and DDPG (the same sampler in the zoo)."""
    return SearchSpace([
        cat("gamma", GAMMAS),
        real("learning_rate", 1e-5, 1.0, log=True),
        cat("batch_size", [16, 32, 64, 100, 128, 256, 512, 1024, 2048]),
        cat("buffer_size", [10_000, 100_000, 1_000_000]),
        cat("tau", TAUS),
        cat("train_freq", TRAIN_FREQS),
        cat("noise_type", ["ornstein-uhlenbeck", "normal", "none"]),
        real("noise_std", 0.0, 1.0),
        cat("hidden", NETS_CONTINUOUS),
    ], derive=_gradient_steps_per_train_freq)


BUILT_IN: dict[str, Callable[[Budget], SearchSpace]] = {
    "ppo": ppo_space,
    "a2c": a2c_space,
    "dqn": dqn_space,
    "double_dqn": dqn_space,
    "dueling_dqn": dqn_space,
    "per_dqn": dqn_space,
    "sac": sac_space,
    "td3": td3_space,
    "ddpg": td3_space,
}


def space_for(algo: str, budget: Budget, space_file: str | Path | None, config_cls: type) -> SearchSpace:
    """The ``--space`` file's space, else the built-in one of ``algo``."""
    if space_file is not None:
        return load_space(space_file, config_cls)
    if algo not in BUILT_IN:
        raise ConfigError(f"{algo} has no built-in search space (built in: {', '.join(sorted(BUILT_IN))}); "
                          "give one with --space FILE.yaml")
    return BUILT_IN[algo](budget)


def space_key(space: SearchSpace) -> str:
    """A canonical text of the space, to tell whether a rerun searches the same one."""
    described = {k: v for k, v in space.describe().items() if k != "source"}  # the same file may move
    return json.dumps(described, sort_keys=True, default=str)
