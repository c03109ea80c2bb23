"""The base agent: the SB3-like surface every algorithm shares.

``learn / act / save / load / evaluate`` live here once; an algorithm subclass supplies its
``Config`` dataclass, builds its parts in :meth:`Agent.setup`, runs its training loop in
:meth:`Agent._learn` and answers :meth:`Agent.act`. Saving writes a directory::

    config.yaml            algo, env, seed, env_kwargs and every resolved setting
    model.safetensors      weights (networks, or tables for tabular agents)
    training_state.pt      optimizer states, RNG states (loaded with weights_only=True)
    state.json             counters (steps, episodes) and other small JSON state
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
from safetensors.torch import load_file, save_file

from classic_rl.config import resolve_config, to_dict
from classic_rl.env_utils import env_label, make_env
from classic_rl.logger import RunLogger

REGISTRY: dict[str, type[Agent]] = {}


def register(cls: type[Agent]) -> type[Agent]:
    """Class decorator: make an agent reachable by its ``algo`` name."""
    if not getattr(cls, "algo", None):
        raise TypeError(f"{cls.__name__} needs a class attribute 'algo'")
    REGISTRY[cls.algo] = cls
    return cls


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
        return {"num_timesteps": self.num_timesteps, "num_episodes": self.num_episodes}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.num_timesteps = int(state.get("num_timesteps", 0))
        self.num_episodes = int(state.get("num_episodes", 0))

    def training_state(self) -> dict[str, Any]:
        """Optimizer and RNG state for resuming; only tensors and plain containers."""
        return {
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers().items()},
            "torch_rng": torch.get_rng_state(),
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        for name, opt in self.optimizers().items():
            if name in state.get("optimizers", {}):
                opt.load_state_dict(state["optimizers"][name])
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])

    # ------------------------------------------------------------------ public surface
    def learn(
        self,
        total_steps: int | None = None,
        episodes: int | None = None,
        progress: bool = True,
        logger: RunLogger | None = None,
    ) -> Agent:
        """Train for ``total_steps`` environment steps or ``episodes`` episodes; returns self."""
        if total_steps is None and episodes is None:
            raise ValueError("learn() needs total_steps or episodes")
        for name, value in (("total_steps", total_steps), ("episodes", episodes)):
            if value is not None and int(value) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        own_logger = logger is None
        if logger is None:
            unit = "episode" if total_steps is None else "step"
            logger = RunLogger(None, total=total_steps if unit == "step" else episodes, unit=unit, progress=progress)
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

    def save(self, path: str | Path) -> Path:
        """Write the agent to directory ``path`` (created if needed); returns it."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with open(path / "config.yaml", "w") as fh:
            yaml.safe_dump(self.describe(), fh, sort_keys=False)
        save_file(self.state_tensors(), str(path / "model.safetensors"))
        torch.save(self.training_state(), path / "training_state.pt")
        (path / "state.json").write_text(json.dumps(self.extra_state(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, env: str | gym.Env | None = None) -> Agent:
        """Rebuild a saved agent (any algorithm when called as ``classic_rl.load``)."""
        path = Path(path)
        if not (path / "config.yaml").is_file():
            raise FileNotFoundError(f"{str(path)!r} is not a saved agent: it has no config.yaml")
        with open(path / "config.yaml") as fh:
            meta = yaml.safe_load(fh)
        from classic_rl.registry import get_algorithm

        agent_cls = get_algorithm(meta["algo"])
        if cls is not Agent and not issubclass(agent_cls, cls):
            raise TypeError(f"{str(path)!r} holds a {meta['algo']} agent, not {cls.__name__}")
        from classic_rl.config import apply_overrides

        config = apply_overrides(agent_cls.Config(), meta.get("config") or {}, f"{path}/config.yaml")
        agent = agent_cls(env or meta["env"], config=config, seed=meta.get("seed", 0), env_kwargs=meta.get("env_kwargs"))
        agent.load_state_tensors(load_file(str(path / "model.safetensors")))
        if (path / "training_state.pt").is_file():
            agent.load_training_state(torch.load(path / "training_state.pt", weights_only=True))
        if (path / "state.json").is_file():
            agent.load_extra_state(json.loads((path / "state.json").read_text()))
        return agent
