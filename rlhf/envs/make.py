"""``--env ENV`` -> an environment with Text observation and action spaces, and the checks every call to
it goes through.

ENV is a gymnasium id (``import classic_rl`` registers the course's GridWorld and RandomWalk envs
first) or ``module:Class`` -- ``module`` is imported as code and ``Class(**env_kwargs)`` builds the env,
so only name modules you trust. An env whose spaces are ``gymnasium.spaces.Text`` is used as is; one
with Discrete spaces is wrapped in its text adapter (``rlhf.envs.adapters``; ``invalid_reward`` in
env_kwargs is the adapter's, every other key goes to the env). Anything else, an unknown id or a missing
class is a :class:`~classic_rl.safe_io.UserError`: one line, exit status 2.

:class:`CheckedEnv` wraps every reset and step: an env that raises, returns a non-string observation,
a reward that is not a finite number, or never ends becomes an :class:`EnvError` naming the env, the
episode's seed and the turn.
"""

from __future__ import annotations

import importlib
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
from gymnasium import spaces

from classic_rl.safe_io import UserError
from rlhf.envs.adapters import TextAdapter, adapter_for
from rlhf.envs.config import parse_env_kwargs

__all__ = ["CheckedEnv", "EnvError", "EnvSpec", "is_text_env", "make_text_env"]

ADAPTER_KWARGS = ("invalid_reward",)  # env_kwargs keys that belong to the text adapter, not the env


class EnvError(UserError):
    """An environment misbehaved (raised, returned something unusable, never ended); names the env and the turn."""


def is_text_env(env: gym.Env) -> bool:
    return isinstance(env.observation_space, spaces.Text) and isinstance(env.action_space, spaces.Text)


def _import_class(name: str):
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise UserError(f"--env {name!r}: expected a gymnasium id or module:Class")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or the module failing on import
        raise UserError(f"--env {name}: cannot import module '{module_name}' ({type(err).__name__}: {err}); "
                        "give an importable module (on PYTHONPATH) as module:Class") from err
    cls = getattr(module, attr, None)
    if cls is None or not callable(cls):
        raise UserError(f"--env {name}: module '{module_name}' has no class '{attr}'")
    return cls


def _build(name: str, kwargs: dict[str, Any]) -> gym.Env:
    if ":" in name:
        cls = _import_class(name)
        try:
            env = cls(**kwargs)
        except Exception as err:
            raise UserError(f"--env {name}: {name}(**{kwargs}) raised {type(err).__name__}: {err}") from err
        if not isinstance(env, gym.Env):
            raise UserError(f"--env {name}: built a {type(env).__name__}, not a gymnasium.Env")
        return env
    import classic_rl  # noqa: F401  (registers GridWorld and RandomWalk with gymnasium)

    try:
        return gym.make(name, **kwargs)
    except gym.error.Error as err:  # unknown id, namespace, version; deprecated version
        raise UserError(f"--env {name}: {' '.join(str(err).split())}") from err
    except TypeError as err:  # a keyword the env does not take
        raise UserError(f"--env {name} --env_kwargs {kwargs}: {err}") from err


def make_text_env(name: str, env_kwargs: str | dict[str, Any] | None = None) -> gym.Env:
    """The env ``name`` with Text spaces: as is, or through its text adapter (see the module docstring)."""
    kwargs = parse_env_kwargs(env_kwargs)
    adapter_kwargs = {k: kwargs.pop(k) for k in ADAPTER_KWARGS if k in kwargs}
    env = _build(name, kwargs)
    if is_text_env(env):
        if adapter_kwargs:
            raise UserError(f"--env {name} has Text spaces (no adapter): --env_kwargs {sorted(adapter_kwargs)} "
                            "belong to the text adapters of Discrete envs")
        return env
    adapter = adapter_for(env)
    if adapter is None:
        raise UserError(
            f"--env {name}: observation space {env.observation_space} and action space {env.action_space}; "
            "--env needs Text spaces (gymnasium.spaces.Text) or Discrete ones (a text adapter describes them)"
        )
    return adapter(env, **adapter_kwargs)


@dataclass(frozen=True)
class EnvSpec:
    """What builds the episodes' envs: the name given to --env and its keyword arguments."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_flags(cls, env: str, env_kwargs: str | dict[str, Any] | None) -> EnvSpec:
        return cls(env, parse_env_kwargs(env_kwargs))

    def make(self) -> CheckedEnv:
        return CheckedEnv(make_text_env(self.name, self.kwargs), self.name)


class CheckedEnv:
    """A text env whose every reset and step is checked; failures are :class:`EnvError` (one line)."""

    def __init__(self, env: gym.Env, name: str):
        self.env, self.name = env, name
        self.seed: int | None = None

    @property
    def adapter(self) -> TextAdapter | None:
        """The text adapter, for policies that act on the wrapped env's states (None: a Text env)."""
        return self.env if isinstance(self.env, TextAdapter) else None

    def _where(self, turn: int) -> str:
        return f"--env {self.name} (episode seed {self.seed}, turn {turn})"

    def reset(self, seed: int) -> tuple[str, dict[str, Any]]:
        self.seed = seed
        try:
            out = self.env.reset(seed=seed)
        except Exception as err:
            raise EnvError(f"{self._where(0)}: reset raised {type(err).__name__}: {err}") from err
        if not (isinstance(out, tuple) and len(out) == 2):
            raise EnvError(f"{self._where(0)}: reset must return (observation, info), got {_preview(out)}")
        observation, info = out
        self._check_observation(observation, 0, "reset")
        return observation, dict(info or {})

    def step(self, reply: str, turn: int) -> tuple[str, float, bool, bool, dict[str, Any]]:
        try:
            out = self.env.step(reply)
        except Exception as err:
            raise EnvError(f"{self._where(turn)}: step({str(reply)[:60]!r}) raised {type(err).__name__}: {err}") from err
        if not (isinstance(out, tuple) and len(out) == 5):
            raise EnvError(f"{self._where(turn)}: step must return (observation, reward, terminated, truncated, info), "
                           f"got {_preview(out)}")
        observation, reward, terminated, truncated, info = out
        self._check_observation(observation, turn, "step")
        if isinstance(reward, bool) or not isinstance(reward, numbers.Real) or not math.isfinite(float(reward)):
            raise EnvError(f"{self._where(turn)}: the reward must be a finite number, got {_preview(reward)}")
        return observation, float(reward), bool(terminated), bool(truncated), dict(info or {})

    def never_ends(self, turn: int) -> EnvError:
        return EnvError(f"{self._where(turn)}: the episode did not end after {turn} turns; set --max_turns")

    def _check_observation(self, observation: Any, turn: int, call: str) -> None:
        if not isinstance(observation, str):
            raise EnvError(f"{self._where(turn)}: {call} returned a non-string observation {_preview(observation)}; "
                           "a text env's observations are strings (the next user turn)")

    def close(self) -> None:
        self.env.close()


def _preview(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"
