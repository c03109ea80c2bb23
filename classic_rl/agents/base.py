"""The base agent: the SB3-like surface every algorithm shares.

``learn / act / save / load / evaluate`` live here once; an algorithm subclass supplies its
``Config`` dataclass, builds its parts in :meth:`Agent.setup`, runs its training loop in
:meth:`Agent._learn` and answers :meth:`Agent.act`. Saving writes a directory::

    config.yaml            algo, env, seed, env_kwargs and every resolved setting
    model.safetensors      weights (networks, or tables for tabular agents)
    training_state.pt      optimizer states, RNG states (loaded with weights_only=True)
    state.json             counters (steps, episodes) and other small JSON state (strict JSON)

The four files are written as one atomic checkpoint (``classic_rl.checkpoint``): a kill at any
instant leaves the previous set or the new one, never a mix.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from classic_rl.checkpoint import (
    STOP,
    TrainingDiverged,
    checkpoint_file,
    first_non_finite,
    save_safetensors,
    save_torch,
    write_checkpoint,
)
from classic_rl.config import resolve_config, to_dict
from classic_rl.env_utils import env_label, make_env
from classic_rl.logger import RunLogger
from classic_rl.safe_io import UserError, dumps_strict
from classic_rl.seeding import seed_everything

REGISTRY: dict[str, type[Agent]] = {}


def register(cls: type[Agent]) -> type[Agent]:
    """Class decorator: make an agent reachable by its ``algo`` name."""
    if not getattr(cls, "algo", None):
        raise TypeError(f"{cls.__name__} needs a class attribute 'algo'")
    REGISTRY[cls.algo] = cls
    return cls


def global_rng_states() -> dict[str, Any]:
    """The states of python's ``random``, numpy's global generator and torch's CPU generator."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = torch.from_numpy(np_state["state"]["key"].astype(np.int64))
    return {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state()}


def set_global_rng_states(state: dict[str, Any]) -> None:
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        np_state = dict(state["numpy"])
        np_state["state"] = dict(np_state["state"], key=np_state["state"]["key"].numpy().astype(np.uint32))
        np.random.set_state(np_state)
    if "torch" in state:
        torch.set_rng_state(state["torch"])


LOSS_WORDS = ("loss", "grad_norm")
"""Training statistics whose non-finite value means the run diverged (others, such as an
explained variance of a constant batch, may legitimately be NaN)."""


def space_kind(space: gym.Space) -> str:
    if isinstance(space, gym.spaces.Discrete):
        return "discrete"
    if isinstance(space, gym.spaces.Box):
        return "continuous"
    return type(space).__name__


class Agent:
    """Base of every agent. Subclasses set ``algo``, ``Config`` and ``action_kinds``."""

    algo: ClassVar[str] = ""
    Config: ClassVar[type]
    family: ClassVar[str] = ""
    action_kinds: ClassVar[tuple[str, ...]] = ("discrete", "continuous")
    alternatives: ClassVar[dict[str, str]] = {}
    """Per unsupported action kind, the algorithm to name instead in the wrong-space error."""
    budget_unit: ClassVar[str] = "step"
    """What ``learn``'s budget counts by default: environment steps or episodes."""
    default_steps: ClassVar[int] = 50_000
    default_episodes: ClassVar[int] = 500

    def __init__(
        self,
        env: str | gym.Env = "CartPole-v1",
        config: Any = None,
        seed: int = 0,
        env_kwargs: dict[str, Any] | None = None,
        config_file: str | Path | None = None,
        **overrides: Any,
    ) -> None:
        self.env_id = env_label(env)
        self.env_kwargs = dict(env_kwargs or {})
        self.seed = int(seed)
        if config is None:
            config = resolve_config(self.Config, self.algo, self.env_id, config_file, overrides)
        elif overrides:
            from classic_rl.config import apply_overrides

            config = apply_overrides(config, overrides, "keyword overrides")
        self.config = config
        self._env_arg = env
        self.env = make_env(env, self.env_kwargs)
        self.check_env(self.env)
        seed_everything(self.seed)
        self.rng = np.random.default_rng(self.seed)
        self.num_timesteps = 0
        self.num_episodes = 0
        self.learn_origin = (0, 0)
        """(steps, episodes) when the current ``learn`` budget began (schedules measure progress from it)."""
        self.run_hooks: Any = None
        """Set by ``classic-rl train``: called at every safe point (periodic checkpoints)."""
        self.setup()

    # ------------------------------------------------------------------ for subclasses
    def check_env(self, env: gym.Env) -> None:
        """Reject environments this algorithm cannot handle, with a message that says why."""
        kind = space_kind(env.action_space)
        if kind not in self.action_kinds:
            need = " or ".join(self.action_kinds)
            hint = (f"For {kind} actions use {self.alternatives[kind]}." if kind in self.alternatives
                    else f"Pick an algorithm for {kind} actions (classic-rl list).")
            raise ValueError(
                f"{self.algo} needs a {need} action space, but {self.env_id} has a {kind} one "
                f"({env.action_space}). {hint}"
            )

    def default_budget(self) -> int:
        """Budget of ``classic-rl train`` when neither --steps nor --episodes is given."""
        return self.default_episodes if self.budget_unit == "episode" else self.default_steps

    def setup(self) -> None:
        """Build networks, optimizers, buffers."""

    def _learn(self, total_steps: int | None, episodes: int | None, logger: RunLogger) -> None:
        raise NotImplementedError

    def act(self, obs: Any, deterministic: bool = True) -> Any:
        raise NotImplementedError

    def networks(self) -> dict[str, torch.nn.Module]:
        return {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything ``model.safetensors`` holds; default: the networks' state dicts."""
        tensors = {}
        for name, net in self.networks().items():
            for key, value in net.state_dict().items():
                tensors[f"{name}.{key}"] = value.detach().cpu().contiguous()
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, net in self.networks().items():
            prefix = f"{name}."
            net.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})

    def extra_state(self) -> dict[str, Any]:
        """Small JSON state saved beside the weights (counters; subclasses add theirs)."""
        return {"num_timesteps": self.num_timesteps, "num_episodes": self.num_episodes,
                "learn_origin": list(self.learn_origin)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.num_timesteps = int(state.get("num_timesteps", 0))
        self.num_episodes = int(state.get("num_episodes", 0))
        self.learn_origin = tuple(state.get("learn_origin", (0, 0)))

    def training_state(self) -> dict[str, Any]:
        """Optimizer and RNG state for resuming; only tensors and plain containers."""
        return {
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers().items()},
            "torch_rng": torch.get_rng_state(),
            "global_rng": global_rng_states(),
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        for name, opt in self.optimizers().items():
            if name in state.get("optimizers", {}):
                opt.load_state_dict(state["optimizers"][name])
        if "global_rng" in state:
            set_global_rng_states(state["global_rng"])
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])

    # ------------------------------------------------------------------ safe points
    def check_stats(self, stats: dict[str, Any], update: int | None = None) -> None:
        """Raise :class:`~classic_rl.checkpoint.TrainingDiverged` when a loss or gradient norm in
        ``stats`` (floats or tensors) is NaN or infinite."""
        bad = first_non_finite({k: v for k, v in stats.items() if any(w in k for w in LOSS_WORDS)})
        if bad is not None:
            where = f"update {update}" if update is not None else "an update"
            raise TrainingDiverged(f"training diverged at {where} (step {self.num_timesteps}): {bad[0]} is {bad[1]}")

    def _safe_point(self, stats: dict[str, Any] | None = None, update: int | None = None) -> None:
        """Called by training loops between whole steps/updates, where the state is consistent.

        Stops the run when a loss or gradient norm in ``stats`` is not finite (before anything is
        saved), lets ``classic-rl train`` write its periodic checkpoint, and turns a pending
        Ctrl-C/SIGTERM into :class:`~classic_rl.checkpoint.StopRequested`.
        """
        if stats:
            self.check_stats(stats, update)
        STOP.check()
        if self.run_hooks is not None:
            self.run_hooks.at_safe_point(self)

    # ------------------------------------------------------------------ public surface
    def learn(
        self,
        total_steps: int | None = None,
        episodes: int | None = None,
        progress: bool = True,
        logger: RunLogger | None = None,
        *,
        continue_run: bool = False,
    ) -> Agent:
        """Train for ``total_steps`` environment steps or ``episodes`` episodes; returns self.

        ``learn`` leaves the process's signal handlers alone (a library should not take over
        Ctrl-C in a notebook or a host program): Ctrl-C interrupts it as any Python code. To stop
        at the next whole step or update instead, with the agent in a state that can be saved and
        resumed, run it inside ``with classic_rl.checkpoint.stop_signals():`` (``classic-rl
        train`` does): Ctrl-C/SIGTERM then raise ``KeyboardInterrupt``
        (:class:`~classic_rl.checkpoint.StopRequested`) at the next safe point. ``continue_run=True`` (used by ``--resume``) keeps the
        budget origin of the interrupted call, so learning-rate and exploration schedules continue
        where they were instead of starting over.
        """
        if total_steps is None and episodes is None:
            raise ValueError("learn() needs total_steps or episodes")
        for name, value in (("total_steps", total_steps), ("episodes", episodes)):
            if value is not None and int(value) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        own_logger = logger is None
        if logger is None:
            unit = "episode" if total_steps is None else "step"
            logger = RunLogger(None, total=total_steps if unit == "step" else episodes, unit=unit, progress=progress)
        if not continue_run:
            self.learn_origin = (self.num_timesteps, self.num_episodes)
        try:
            self._learn(total_steps, episodes, logger)
        finally:
            if own_logger:
                logger.close()
        return self

    def predict(self, obs: Any, deterministic: bool = True) -> Any:
        """Alias of :meth:`act` for SB3 users."""
        return self.act(obs, deterministic=deterministic)

    def evaluate(self, episodes: int = 10, seed: int = 123, env: str | gym.Env | None = None) -> tuple[float, float]:
        from classic_rl.evaluation import evaluate

        return evaluate(self, env or self._env_arg, episodes=episodes, seed=seed)

    def describe(self) -> dict[str, Any]:
        return {
            "algo": self.algo,
            "env": self.env_id,
            "seed": self.seed,
            "env_kwargs": self.env_kwargs,
            "config": to_dict(self.config),
        }

    def close(self) -> None:
        """Release what the agent holds open (its environments, worker processes); it cannot train
        after this. Agents that hold nothing beyond Python objects have nothing to release."""

    def non_finite_weight(self) -> tuple[str, float] | None:
        """(name, value) of the first saved tensor that is NaN or infinite, else None."""
        return first_non_finite(self.state_tensors())

    def save(self, path: str | Path, run_state: dict[str, Any] | None = None) -> Path:
        """Write the agent to directory ``path`` (created if needed) as one atomic checkpoint; returns it.

        ``run_state`` (``classic-rl train``'s bookkeeping: status, budget, episode-log position)
        goes into ``state.json`` under ``"run"``.
        """
        extra = self.extra_state()
        if run_state is not None:
            extra["run"] = run_state
        tensors = self.state_tensors()
        training = self.training_state()
        write_checkpoint(path, {
            "config.yaml": lambda p: p.write_text(yaml.safe_dump(self.describe(), sort_keys=False)),
            "model.safetensors": lambda p: save_safetensors(tensors, p),
            "training_state.pt": lambda p: save_torch(training, p),
            "state.json": lambda p: p.write_text(dumps_strict(extra, indent=2) + "\n"),
        })
        return Path(path)

    @staticmethod
    def read_meta(path: str | Path) -> dict[str, Any]:
        """``config.yaml`` of a saved agent (algo, env, seed, env_kwargs, config), checked."""
        path = Path(path)
        file = checkpoint_file(path, "config.yaml")
        if not file.is_file():
            raise FileNotFoundError(f"{str(path)!r} is not a saved agent: it has no config.yaml")
        from classic_rl.config import ConfigError, read_yaml

        try:
            meta = read_yaml(file)
        except ConfigError as err:
            raise UserError(f"{err}; the run directory is damaged{_truncation_hint(file)}") from None
        if not isinstance(meta, dict) or "algo" not in meta or "env" not in meta:
            raise UserError(f"{file}: not a classic-rl agent description (no algo/env){_truncation_hint(file)}")
        return meta

    @staticmethod
    def read_state(path: str | Path) -> dict[str, Any]:
        """``state.json`` of a saved agent (empty when there is none)."""
        file = checkpoint_file(path, "state.json")
        if not file.is_file():
            return {}
        try:
            return json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{file}: damaged or truncated ({_one_line(err)})") from None

    @classmethod
    def load(cls, path: str | Path, env: str | gym.Env | None = None) -> Agent:
        """Rebuild a saved agent (any algorithm when called as ``classic_rl.load``)."""
        path = Path(path)
        meta = cls.read_meta(path)
        from classic_rl.registry import get_algorithm

        agent_cls = get_algorithm(meta["algo"])
        if cls is not Agent and not issubclass(agent_cls, cls):
            raise TypeError(f"{str(path)!r} holds a {meta['algo']} agent, not {cls.__name__}")
        config = _saved_config(agent_cls.Config, meta.get("config"), checkpoint_file(path, "config.yaml"))
        agent = agent_cls(env or meta["env"], config=config, seed=meta.get("seed", 0), env_kwargs=meta.get("env_kwargs"))
        weights = checkpoint_file(path, "model.safetensors")
        try:
            tensors = load_file(str(weights))
        except FileNotFoundError:
            raise UserError(f"{weights}: missing; the run directory holds no saved weights") from None
        except Exception as err:  # safetensors raises its own error type for damaged headers
            raise UserError(f"{weights}: damaged or truncated, cannot load the weights ({_one_line(err)})") from None
        agent.load_state_tensors(tensors)
        training = checkpoint_file(path, "training_state.pt")
        if training.is_file():
            try:
                state = torch.load(training, weights_only=True)
            except Exception as err:  # EOFError, RuntimeError, UnpicklingError for truncated files
                raise UserError(f"{training}: damaged or truncated, cannot load it ({_one_line(err)})") from None
            agent.load_training_state(state)
        agent.load_extra_state(cls.read_state(path))
        return agent


def _truncation_hint(file: Path) -> str:
    """'; it looks truncated ...' when ``file`` does not end as classic-rl writes it (a newline)."""
    try:
        whole = file.read_bytes().endswith(b"\n")
    except OSError:
        return ""
    return "" if whole else "; it looks truncated (it does not end with a newline, as a saved file does)"


def _saved_config(config_cls: type, settings: Any, file: Path) -> Any:
    """The Config of a saved agent from its config.yaml's ``config`` section; every problem is a
    one-line UserError naming the file (a truncated file ends in a setting with no value)."""
    import typing

    from classic_rl.config import apply_overrides

    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise UserError(f"{file}: 'config' must be a mapping of settings{_truncation_hint(file)}")
    hints = typing.get_type_hints(config_cls)
    for key, value in settings.items():
        if value is None and key in hints and not _allows_none(hints[key]):
            last = " (the last one in the file)" if key == list(settings)[-1] else ""
            raise UserError(
                f"{file}: setting {key!r}{last} has no value; the file looks truncated or was edited: "
                "restore it from a copy of the run, or start a new run"
            )
    try:
        return apply_overrides(config_cls(), settings, str(file))
    except ValueError as err:  # range checks name the setting, not the file
        message = " ".join(str(err).split())
        raise UserError(f"{message if str(file) in message else f'{file}: {message}'}"
                        f"{_truncation_hint(file)}") from None


def _allows_none(annotation: Any) -> bool:
    import types
    import typing

    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(
        annotation)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
