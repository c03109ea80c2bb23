"""classic_rl: the course's reinforcement-learning algorithms, tabular to deep, on gymnasium.

Python API (the README's "Quick start" shows it with the command line)::

    import classic_rl
    agent = classic_rl.make("ppo", env="CartPole-v1", seed=0)
    agent.learn(total_steps=50_000)
    mean, std = classic_rl.evaluate(agent, "CartPole-v1", episodes=10)

Importing the package registers the course's environments with gymnasium (``GridWorld-v0``,
``GridWorld4x3-v0``, ``RandomWalk-v0``, ``RandomWalk19-v0``; see :mod:`classic_rl.envs`), as
``import ale_py`` does for Atari -- at the moment gymnasium itself is imported, so a program that
never uses gymnasium never loads it. Heavy imports (torch, the agents) happen on first use, so
``classic_rl.tabular`` stays light.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any


class _RegisterEnvsAfterGymnasium(importlib.abc.MetaPathFinder):
    """Registers the course's environments the moment gymnasium is imported, so ``import classic_rl``
    keeps its promise without importing gymnasium itself (``rlhf``, which imports ``classic_rl.safe_io``,
    and ``classic_rl.tabular`` stay light)."""

    def find_spec(self, name, path=None, target=None):
        if name != "gymnasium":
            return None
        sys.meta_path.remove(self)  # one shot; the real finders locate gymnasium
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_then_register(module):
            load(module)
            importlib.import_module("classic_rl.envs")

        spec.loader.exec_module = exec_then_register
        return spec


if "gymnasium" in sys.modules:
    import classic_rl.envs  # noqa: F401  (registers the environments with gymnasium)
elif not any(isinstance(f, _RegisterEnvsAfterGymnasium) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterEnvsAfterGymnasium())

__version__ = "0.1.0"
__all__ = ["ALGORITHMS", "make", "load", "evaluate", "train"]


def make(algo: str, env: Any = "CartPole-v1", seed: int = 0, **overrides: Any):
    """Build agent ``algo`` for ``env``; ``overrides`` are fields of the algorithm's config."""
    from classic_rl.registry import get_algorithm

    env_kwargs = overrides.pop("env_kwargs", None)
    config_file = overrides.pop("config_file", None)
    return get_algorithm(algo)(env, seed=seed, env_kwargs=env_kwargs, config_file=config_file, **overrides)


def load(path: Any, env: Any = None):
    """Load an agent saved with ``agent.save(path)`` or written by ``classic-rl train``."""
    from classic_rl.agents.base import Agent

    return Agent.load(path, env=env)


def evaluate(agent: Any, env: Any = None, episodes: int = 10, seed: int = 123, **kwargs: Any) -> tuple[float, float]:
    """Mean and std of greedy returns over ``episodes`` seeded episodes."""
    if env is None and not kwargs:
        return agent.evaluate(episodes=episodes, seed=seed)  # the agent's own env, multi-agent ones included
    from classic_rl.evaluation import evaluate as _evaluate

    return _evaluate(agent, env if env is not None else agent.env_id, episodes=episodes, seed=seed, **kwargs)


def train(*args: Any, **kwargs: Any):
    """See :func:`classic_rl.train.train_run`."""
    from classic_rl.train import train_run

    return train_run(*args, **kwargs)


def __getattr__(name: str):
    if name == "ALGORITHMS":
        from classic_rl.registry import algorithms

        return algorithms()
    raise AttributeError(f"module 'classic_rl' has no attribute {name!r}")
