"""EnvPool (C++ batched environments, ``pip install "rl-course-toolkit[envpool]"``) as the on-policy
collector's vector env: ``vec_env=envpool`` beside gymnasium's ``sync`` and ``async``.

The collector's contract is gymnasium's ``SAME_STEP`` autoreset (see :mod:`classic_rl.collectors`):
the step that ends an episode returns the next episode's first observation, the finished episode's
last one is in ``info["final_obs"]``, so every step is a real transition and a truncated episode is
bootstrapped from its final observation. EnvPool resets one step later instead (gymnasium's
``NEXT_STEP``: the step after the end ignores its action and returns the first observation with
reward 0), which would put a fake transition into every rollout. :class:`EnvPoolVectorEnv` therefore
resets the finished copies right away (``reset`` with their ids) and returns what ``SAME_STEP``
returns; termination and truncation keep EnvPool's own flags (its ``max_episode_steps`` is the
gymnasium id's time limit, or ``env_kwargs["max_episode_steps"]``). One difference remains: an
episode that terminates on the last step of its time limit is only *truncated* in EnvPool (its
gymnasium API reports ``terminated = done and not truncated``; gymnasium reports both), so that one
step is bootstrapped where the gymnasium path would not bootstrap it.

What differs from the gymnasium path: EnvPool seeds its copies when it is built (copy ``i`` from
``seed + i``, its own generator, so not gymnasium's episodes), so a seeded ``reset`` rebuilds the
pool with that seed; and its state lives in C++, so a checkpoint cannot rebuild the running
episodes: a resumed run continues on fresh ones (the collector warns). ``env_kwargs`` go to
``envpool.make`` (EnvPool's own option names, e.g. ``max_episode_steps``).
"""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np

from classic_rl.env_utils import EpisodesNotReplayable
from classic_rl.safe_io import UserError

__all__ = ["EnvPoolVectorEnv", "check_envpool", "check_same_spaces"]

INSTALL_HINT = 'pip install "rl-course-toolkit[envpool]"'


def _import_envpool() -> Any:
    try:
        import envpool
    except ImportError:
        raise UserError(f"vec_env=envpool needs EnvPool: {INSTALL_HINT} (or use vec_env=sync)") from None
    return envpool


def check_envpool(env: Any) -> None:
    """Raise a one-line :class:`UserError` unless EnvPool is installed and has ``env`` (an id)."""
    if not isinstance(env, str):
        raise UserError("vec_env=envpool builds its environments from an id; pass an env id, not an instance")
    envpool = _import_envpool()
    if env not in envpool.list_all_envs():
        raise UserError(f"EnvPool has no environment {env!r}; use vec_env=sync or vec_env=async for it")


def _space_form(space: gym.Space) -> tuple:
    if isinstance(space, gym.spaces.Discrete):
        return ("Discrete", int(space.n), int(space.start))
    return (type(space).__name__, tuple(space.shape))


def check_same_spaces(vec: gym.vector.VectorEnv, env: gym.Env, env_id: str) -> None:
    """The policy is built from gymnasium's ``env``: EnvPool's copies must have its spaces' form."""
    for what, ours, theirs in (("observation", vec.single_observation_space, env.observation_space),
                               ("action", vec.single_action_space, env.action_space)):
        if _space_form(ours) != _space_form(theirs):
            raise UserError(f"EnvPool's {env_id} has the {what} space {ours}, gymnasium's {theirs}; "
                            "use vec_env=sync for it")


class EnvPoolVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` copies of ``env_id`` in one EnvPool, with gymnasium's ``SAME_STEP`` autoreset.

    Rows are in env order (EnvPool's ``info["env_id"]`` puts them there). ``call("episode_record")``
    answers an empty record per copy and ``call("restore_planned")`` raises
    :class:`~classic_rl.env_utils.EpisodesNotReplayable`, so a restored collector warns and starts
    fresh episodes.
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def __init__(self, env_id: str, num_envs: int, env_kwargs: dict[str, Any] | None = None, seed: int = 0) -> None:
        check_envpool(env_id)
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs or {})
        self.num_envs = int(num_envs)
        self._pool = self._make(seed)
        self.single_observation_space = self._pool.observation_space
        self.single_action_space = self._pool.action_space
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self._action_dtype = self.single_action_space.dtype
        self._all = np.arange(self.num_envs)

    def _make(self, seed: int) -> Any:
        envpool = _import_envpool()
        try:
            with warnings.catch_warnings():  # gymnasium's note that EnvPool's float64 bounds become float32
                warnings.simplefilter("ignore", UserWarning)
                pool = envpool.make(self.env_id, env_type="gymnasium", num_envs=self.num_envs,
                                    batch_size=self.num_envs, seed=int(seed), **self.env_kwargs)
                pool.observation_space, pool.action_space  # noqa: B018  (built, and cached, here)
        except TypeError as err:  # an option EnvPool does not know
            raise UserError(f"--env-kwargs for EnvPool's {self.env_id}: {err}") from None
        return pool

    def _in_env_order(self, rows: Any, env_ids: np.ndarray) -> Any:
        return rows if np.array_equal(env_ids, self._all[: len(env_ids)]) else rows[np.argsort(env_ids)]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Reset every copy; a ``seed`` rebuilds the pool from it (EnvPool seeds only when built)."""
        if options:
            raise ValueError(f"EnvPoolVectorEnv.reset takes no options, got {sorted(options)}")
        if seed is not None:
            if not isinstance(seed, (int, np.integer)):
                raise TypeError(f"EnvPool takes one integer seed (copy i gets seed + i), got {seed!r}")
            self._pool.close()
            self._pool = self._make(int(seed))
        obs, info = self._pool.reset()
        return self._in_env_order(obs, info["env_id"]), {}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        obs, rewards, terminated, truncated, info = self._pool.step(np.asarray(actions, dtype=self._action_dtype))
        ids = info["env_id"]
        obs, rewards = self._in_env_order(obs, ids), self._in_env_order(rewards, ids)
        terminated, truncated = self._in_env_order(terminated, ids), self._in_env_order(truncated, ids)
        ended = terminated | truncated
        out_info: dict[str, Any] = {}
        if ended.any():
            # SAME_STEP: keep the final observations, start the next episodes now (not on the next step)
            final_obs = np.empty(self.num_envs, dtype=object)
            obs = np.array(obs)
            for i in np.flatnonzero(ended):
                final_obs[i] = obs[i].copy()
            first, first_info = self._pool.reset(np.flatnonzero(ended).astype(np.int32))
            obs[np.sort(first_info["env_id"])] = self._in_env_order(first, first_info["env_id"])
            out_info = {"final_obs": final_obs, "_final_obs": ended}
        return obs, rewards, terminated, truncated, out_info

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        if name == "episode_record":
            return tuple((None, None, []) for _ in range(self.num_envs))
        if name == "restore_planned":
            raise EpisodesNotReplayable("EnvPool's environments cannot replay an episode: their state lives in C++")
        raise AttributeError(f"EnvPoolVectorEnv has no method {name!r} to call")

    def set_attr(self, name: str, values: Any) -> None:
        """Accepted and ignored: the copies are C++ objects without Python attributes."""

    def close(self, **kwargs: Any) -> None:
        self._pool.close()
