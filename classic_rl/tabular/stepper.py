"""Fast, seeded stepping of tabular environments for the model-free methods.

Gymnasium's ``env.step`` goes through its wrappers (order enforcing, checker, time limit), which
cost more than a tabular learner's own update. For toy-text style
environments, which expose the model ``P`` and ``initial_state_distrib``, :class:`ModelStepper`
samples transitions straight from ``P`` with the learner's seeded generator: the same
distribution of trajectories as ``env.step``, in less time (measured by ``scripts/bench_tabular.py``). It is used only when the env
is unwrapped or wrapped solely by gymnasium's standard TimeLimit / OrderEnforcing /
PassiveEnvChecker, so that a reward- or observation-changing wrapper is never bypassed; otherwise
:class:`EnvStepper` calls ``env.step``. Both honour the env's TimeLimit and an optional
``max_steps`` as truncation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker, TimeLimit

_TRANSPARENT_WRAPPERS = (TimeLimit, OrderEnforcing, PassiveEnvChecker)


class UniformStream:
    """Uniform [0, 1) floats drawn from a numpy Generator in blocks (one Python float per call).

    :meth:`state_dict` / :meth:`load_state_dict` capture the generator and the unread part of the
    block, so a restored stream continues with exactly the numbers the original would have given.
    """

    def __init__(self, rng: np.random.Generator, block: int = 4096):
        self.rng = rng
        self.block = block
        self._buffer: list[float] = []
        self._i = 0

    def __call__(self) -> float:
        if self._i == len(self._buffer):
            self._buffer = self.rng.random(self.block).tolist()
            self._i = 0
        u = self._buffer[self._i]
        self._i += 1
        return u

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "buffer": list(self._buffer), "i": self._i}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self._buffer = [float(u) for u in state["buffer"]]
        self._i = int(state["i"])


def resolve_env(env: gym.Env | str) -> gym.Env:
    """Accept an env or a registered id; check it has discrete observations and actions."""
    if isinstance(env, str):
        import classic_rl.envs  # noqa: F401  (registers our ids)

        env = gym.make(env)
    if not isinstance(env.observation_space, gym.spaces.Discrete) or not isinstance(
        env.action_space, gym.spaces.Discrete
    ):
        raise ValueError(
            "tabular methods need Discrete observation and action spaces, got "
            f"{env.observation_space} and {env.action_space}: use a toy-text env such as CliffWalking-v1"
        )
    return env


def _time_limit(env: gym.Env) -> int | None:
    e = env
    while isinstance(e, gym.Wrapper):
        if isinstance(e, TimeLimit):
            return int(e._max_episode_steps)
        e = e.env
    return None


def _model_of(env: gym.Env) -> tuple[Mapping | Sequence, np.ndarray] | None:
    """``(P, initial_state_distrib)`` if ``env`` can be simulated from its model without changing it."""
    e = env
    while isinstance(e, gym.Wrapper):
        if type(e) not in _TRANSPARENT_WRAPPERS:
            return None
        e = e.env
    P = getattr(e, "P", None)
    initial = getattr(e, "initial_state_distrib", None)
    if P is None or initial is None:
        return None
    return P, np.asarray(initial, dtype=np.float64)


def _min_limit(a: int | None, b: int | None) -> int | None:
    limits = [x for x in (a, b) if x is not None]
    return min(limits) if limits else None


class ModelStepper:
    """Samples episodes from the model ``P`` with a seeded uniform stream."""

    def __init__(
        self, P: Mapping | Sequence, initial: np.ndarray, uniform: UniformStream, max_steps: int | None
    ):
        # Per (s, a): cumulative probabilities, next states, rewards, terminated flags as tuples.
        self.table = []
        for s in range(len(P)):
            row = []
            for a in range(len(P[s])):
                outcomes = P[s][a]
                cum = np.cumsum([o[0] for o in outcomes]).tolist()
                row.append(
                    (
                        cum,
                        [int(o[1]) for o in outcomes],
                        [float(o[2]) for o in outcomes],
                        [bool(o[3]) for o in outcomes],
                    )
                )
            self.table.append(row)
        self.initial_cum = np.cumsum(initial).tolist()
        self.uniform = uniform
        self.max_steps = max_steps
        self.s = 0
        self.t = 0

    @staticmethod
    def _pick(cum: list[float], u: float) -> int:
        i, last = 0, len(cum) - 1
        while i < last and u >= cum[i]:
            i += 1
        return i

    def reset(self) -> int:
        self.s = self._pick(self.initial_cum, self.uniform()) if len(self.initial_cum) > 1 else 0
        self.t = 0
        return self.s

    def step(self, action: int) -> tuple[int, float, bool, bool]:
        cum, nxt, rew, term = self.table[self.s][action]
        i = 0 if len(cum) == 1 else self._pick(cum, self.uniform())
        self.s = nxt[i]
        self.t += 1
        truncated = not term[i] and self.max_steps is not None and self.t >= self.max_steps
        return self.s, rew[i], term[i], truncated


class EnvStepper:
    """Calls ``env.step``; the first reset is seeded so runs repeat exactly."""

    def __init__(self, env: gym.Env, seed: int | None, max_steps: int | None):
        self.env = env
        self.seed: int | None = seed
        self.max_steps = max_steps
        self.t = 0

    def reset(self) -> int:
        obs, _ = self.env.reset(seed=self.seed)
        self.seed = None
        self.t = 0
        return int(obs)

    def step(self, action: int) -> tuple[int, float, bool, bool]:
        obs, reward, terminated, truncated, _ = self.env.step(action)
        self.t += 1
        if self.max_steps is not None and self.t >= self.max_steps:
            truncated = True
        return int(obs), float(reward), bool(terminated), bool(truncated and not terminated)


def make_stepper(
    env: gym.Env,
    uniform: UniformStream,
    seed: int | None,
    max_steps: int | None = None,
    use_model: bool | None = None,
) -> ModelStepper | EnvStepper:
    """Pick the model stepper when it is exact (see module docstring), unless ``use_model`` says otherwise.

    ``max_steps`` truncates episodes in addition to any TimeLimit on ``env``.
    """
    if max_steps is not None and max_steps <= 0:
        raise ValueError(f"max_steps must be a positive number of steps per episode or None, got {max_steps}")
    model = _model_of(env)
    if use_model and model is None:
        raise ValueError(
            "use_model=True needs an env exposing P and initial_state_distrib (toy-text style), wrapped at most "
            "by TimeLimit / OrderEnforcing / PassiveEnvChecker; pass use_model=None or False to call env.step"
        )
    if model is not None and use_model is not False:
        return ModelStepper(model[0], model[1], uniform, _min_limit(max_steps, _time_limit(env)))
    return EnvStepper(env, seed, max_steps)
