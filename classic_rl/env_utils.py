"""Making gymnasium environments by id, with errors that list the valid ids.

Atari ids (``ALE/Pong-v5``, ``PongNoFrameskip-v4``; they need ``pip install ale-py``) come with
the Nature-DQN preprocessing (Mnih et al. 2015), so image agents see what that paper's did:
up to 30 no-op actions at reset, each action repeated for 4 frames with the max over the last
two, 84x84 grayscale, and the last 4 frames stacked into a ``(4, 84, 84)`` uint8 observation
(networks scale it by 1/255 themselves; replay keeps it uint8). The repeat is the wrapper's
alone: the ALE's own frameskip (4 in the v5 ids) is set to 1 unless ``env_kwargs`` names one,
in which case that one is used and the wrapper does not repeat again. Rewards are the game's
(not clipped), so logged returns are game scores.

:func:`make_vector_env` runs ``n`` copies as a gymnasium vector env (``sync``: one process;
``async``: a process per copy; for the on-policy collector also ``envpool``, EnvPool's C++ pool); :class:`EpisodeReplay` lets such copies rebuild an episode from
its reset seed and actions inside their own process (exact resume of the off-policy agents);
:class:`EpisodeRecorder` does the same for copies that reset themselves (the on-policy collector's
autoreset), recording each episode's start -- its reset seed, or the env's generator state just
before an unseeded reset -- and its actions, without pickling the environment.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

ATARI_FRAME_SKIP = 4
ATARI_FRAME_STACK = 4
ATARI_SCREEN = 84
VEC_ENV_KINDS = ("sync", "async")
ON_POLICY_VEC_ENV_KINDS = (*VEC_ENV_KINDS, "envpool")
"""The on-policy collector also steps EnvPool (same-step autoreset only: :mod:`classic_rl.envpool_vec`)."""


def register_atari() -> bool:
    """Register ale-py's Atari ids with gymnasium; False when ale-py is not installed."""
    try:
        import ale_py
    except ImportError:
        return False
    gym.register_envs(ale_py)
    return True


def is_atari_id(env_id: str) -> bool:
    """Whether ``env_id`` is a registered Arcade Learning Environment game (ale-py's entry point)."""
    spec = gym.envs.registry.get(env_id) if isinstance(env_id, str) else None
    return spec is not None and str(spec.entry_point).startswith("ale_py")


def make_atari_env(env_id: str, env_kwargs: dict[str, Any] | None = None, **make_kwargs: Any) -> gym.Env:
    """An Atari game with the Nature-DQN preprocessing and a ``(4, 84, 84)`` uint8 frame stack."""
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    kwargs = {**(env_kwargs or {}), **make_kwargs}
    frame_skip = 1 if "frameskip" in kwargs else ATARI_FRAME_SKIP  # one repeat, not two stacked
    kwargs.setdefault("frameskip", 1)
    env = gym.make(env_id, **kwargs)
    env = AtariPreprocessing(env, noop_max=30, frame_skip=frame_skip, screen_size=ATARI_SCREEN,
                             terminal_on_life_loss=False, grayscale_obs=True)
    return FrameStackObservation(env, ATARI_FRAME_STACK)


def registered_env_ids() -> list[str]:
    import classic_rl.envs  # noqa: F401  (registers the course's environments)

    return sorted(gym.envs.registry.keys())


def import_env_module(env_id: str) -> str:
    """For an id ``MODULE:NAME``, import ``MODULE`` and return ``NAME``; other ids come back as they are.

    The one rule for every algorithm, gymnasium's (``gymnasium.make("MODULE:NAME")``): the part
    before the colon is a Python module that is imported, so its code runs (a gymnasium package
    registers its environments on import; for maddpg, ``MODULE.NAME`` is the PettingZoo env).
    Only use modules you trust, including in run folders from others (their config.yaml names
    the env id). A module that cannot be imported is a ValueError naming it.
    """
    module, sep, name = env_id.partition(":")
    if not sep:
        return env_id
    if not module or not name:
        raise ValueError(f"Environment id {env_id!r} must be MODULE:NAME, e.g. 'mypackage:MyEnv-v0'")
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise ValueError(
            f"Environment id {env_id!r}: cannot import module {module!r} ({err}); install it or put its folder "
            "on PYTHONPATH"
        ) from None
    return name


def check_env_id(env_id: str) -> None:
    """Raise a ValueError naming close matches when ``env_id`` is not registered (``MODULE:NAME``
    first imports ``MODULE``, which registers ``NAME``: :func:`import_env_module`)."""
    if not isinstance(env_id, str):
        return
    module = env_id.partition(":")[0] if ":" in env_id else None
    env_id = import_env_module(env_id)
    ids = registered_env_ids()
    if env_id in ids:
        return
    if register_atari():  # imported only for ids not found otherwise (it prints a banner)
        ids = registered_env_ids()
        if env_id in ids:
            return
    close = difflib.get_close_matches(env_id, ids, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    if module is not None:
        raise ValueError(f"Module {module!r} was imported but registered no environment {env_id!r}.{hint} "
                         "It must call gymnasium.register(id=..., entry_point=...) when imported")
    if (env_id.startswith("ALE/") or "NoFrameskip" in env_id) and "ale_py" not in sys.modules:
        hint = " Atari games need the Arcade Learning Environment: pip install ale-py." + hint
    raise ValueError(
        f"Unknown environment {env_id!r}.{hint} Registered ids include: "
        f"{', '.join(i for i in ids if '/' not in i and not is_atari_id(i))}"
    )


def make_env(env_id: str | gym.Env, env_kwargs: dict[str, Any] | None = None, **make_kwargs: Any) -> gym.Env:
    """``gym.make`` with id validation; an Env instance passes through unchanged.

    Keyword arguments the environment does not take are a :class:`~classic_rl.safe_io.UserError`
    naming them and the ones it does take.
    """
    if isinstance(env_id, gym.Env):
        return env_id
    check_env_id(env_id)
    try:
        if is_atari_id(env_id):
            return make_atari_env(env_id, env_kwargs, **make_kwargs)
        return gym.make(env_id, **(env_kwargs or {}), **make_kwargs)
    except TypeError as err:
        if not env_kwargs or "argument" not in str(err):
            raise
        raise _env_kwargs_error(env_id, env_kwargs, err) from None


def _env_kwargs_error(env_id: str, env_kwargs: dict[str, Any], err: TypeError) -> Exception:
    """A one-line UserError for ``--env-kwargs`` the environment does not accept."""
    import inspect

    from classic_rl.safe_io import UserError

    valid: list[str] = []
    try:
        entry = gym.envs.registry[env_id.partition(":")[2] or env_id].entry_point
        cls = gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
        params = inspect.signature(cls).parameters.values()
        valid = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    except Exception:  # the list is a hint only
        valid = []
    unknown = [k for k in env_kwargs if valid and k not in valid]
    what = f"unknown key(s) {', '.join(map(repr, unknown))}" if unknown else str(err).strip().splitlines()[0]
    hint = f"; {env_id} accepts: {', '.join(valid)}" if valid else ""
    return UserError(f"--env-kwargs: {what} for {env_id}{hint}")


def env_label(env: str | gym.Env) -> str:
    if isinstance(env, str):
        return env
    spec = getattr(env, "spec", None)
    return spec.id if spec is not None else type(env.unwrapped).__name__


def make_vector_env(
    env: str | gym.Env,
    num_envs: int,
    env_kwargs: dict[str, Any] | None = None,
    kind: str = "sync",
    autoreset_mode: gym.vector.AutoresetMode = gym.vector.AutoresetMode.SAME_STEP,
    wrapper: Callable[[gym.Env], gym.Env] | None = None,
) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``env`` (made by :func:`make_env`) as a ``kind`` vector env.

    ``kind``: ``sync`` steps the copies one after another in this process (best for cheap envs),
    ``async`` runs one process per copy (for envs whose step costs more than the pipe round trip).
    ``envpool`` (:class:`~classic_rl.envpool_vec.EnvPoolVectorEnv`) takes an env id and only
    ``SAME_STEP``; its copies are C++ objects, so ``wrapper`` does not apply to them.
    ``autoreset_mode``: the on-policy collector uses ``SAME_STEP`` (the final observation in
    ``info["final_obs"]``); the off-policy runner uses ``DISABLED`` and resets finished copies
    itself. ``wrapper`` is applied to every copy (inside its worker process with ``async``).
    """
    if kind == "envpool" and autoreset_mode == gym.vector.AutoresetMode.SAME_STEP:
        from classic_rl.envpool_vec import EnvPoolVectorEnv

        return EnvPoolVectorEnv(env, num_envs, env_kwargs)
    if kind not in VEC_ENV_KINDS:
        raise ValueError(f"vec_env={kind!r} is not valid; use one of {', '.join(VEC_ENV_KINDS)}")
    wrap = wrapper or (lambda e: e)
    if isinstance(env, gym.Env):
        if num_envs != 1 or kind != "sync":
            raise ValueError(
                f"An environment instance runs only as one copy with vec_env='sync' (asked for {num_envs} "
                f"with vec_env={kind!r}); pass an env id so that copies can be made"
            )
        return gym.vector.SyncVectorEnv([lambda: wrap(env)], autoreset_mode=autoreset_mode, copy=False)
    # The passive env checker only inspects the first step but costs a wrapper call on every one.
    fns = [lambda: wrap(make_env(env, env_kwargs, disable_env_checker=True)) for _ in range(num_envs)]
    if kind == "async":
        return gym.vector.AsyncVectorEnv(fns, autoreset_mode=autoreset_mode, copy=False)
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=autoreset_mode, copy=False)


class EpisodesNotReplayable(RuntimeError):
    """Raised by a vector env whose copies cannot rebuild an episode at all (EnvPool's C++ state);
    its message says why, and the on-policy collector passes it on in its warning."""


def replay_episode(env: gym.Env, seed: int, actions: Sequence[Any]) -> tuple[Any, float, int]:
    """Reset ``env`` with ``seed`` and take ``actions``; returns (last observation, return, length).

    Given its seed, a deterministic environment reaches the same state again, which is how a
    saved agent restores the episodes that were running. Raises RuntimeError when the episode
    ends before the actions do (the environment is not deterministic given its seed).
    """
    obs, _ = env.reset(seed=int(seed))
    episode_return, length = 0.0, 0
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        episode_return += float(reward)
        length += 1
        if terminated or truncated:
            raise RuntimeError(
                f"Cannot restore the environment: replaying the saved episode ended early after "
                f"{length} steps. The environment is not deterministic given its seed."
            )
    return obs, episode_return, length


class EpisodeReplay(gym.Wrapper):
    """Lets a vector env's copy replay an episode in its own process (async workers included).

    A vector env can send each copy its own value (``set_attr(name, [v_0, ..., v_n-1])``) but
    calls a method with the same arguments everywhere (``call(name, ...)``), so restoring takes
    two messages: ``set_attr("replay_plan", [(seed_i, actions_i), ...])``, then
    ``call("replay_planned")``, which answers (obs, return, length) per copy.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.replay_plan: tuple[int, Sequence[Any]] | None = None

    def replay_planned(self) -> tuple[Any, float, int]:
        if self.replay_plan is None:
            raise RuntimeError("set replay_plan (seed, actions) before calling replay_planned")
        seed, actions = self.replay_plan
        self.replay_plan = None
        return replay_episode(self, seed, actions)


class EpisodeRecorder(gym.Wrapper):
    """Records how the current episode began and its actions, so it can be rebuilt elsewhere.

    The record is ``(seed, rng_state, actions)``: the seed of a seeded reset, or else the state of
    the env's ``np_random`` just before the (unseeded) reset, and the actions taken since. Setting
    that generator state and resetting, or resetting with the seed, then taking the actions gives
    the same environment state and generator state again for every environment whose randomness
    comes from its ``np_random`` (all of gymnasium's). Like :class:`EpisodeReplay`, it talks through
    ``set_attr``/``call`` so it also reaches async worker processes: ``call("episode_record")``,
    then ``set_attr("restore_plan", [...])`` and ``call("restore_planned")`` (answering the last
    observation per copy).
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._record: tuple[int | None, dict | None, list[Any]] = (None, None, [])
        self.restore_plan: tuple[int | None, dict | None, Sequence[Any]] | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        rng_state = None
        if seed is None:
            rng_state = self.env.unwrapped.np_random.bit_generator.state  # before the reset draws
        self._record = (None if seed is None else int(seed), rng_state, [])
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any):
        # a copy: vector envs hand each copy a view into the batch's action array
        self._record[2].append(np.array(action) if isinstance(action, np.ndarray) else action)
        return self.env.step(action)

    def episode_record(self) -> tuple[int | None, dict | None, list[Any]]:
        seed, rng_state, actions = self._record
        return seed, rng_state, list(actions)

    def restore_planned(self) -> Any:
        if self.restore_plan is None:
            raise RuntimeError("set restore_plan (seed, rng_state, actions) before calling restore_planned")
        seed, rng_state, actions = self.restore_plan
        self.restore_plan = None
        if seed is None and rng_state is not None:
            self.env.unwrapped.np_random.bit_generator.state = rng_state
        obs, _ = self.reset(seed=seed)
        if seed is None:
            self._record = (None, rng_state, [])
        for action in actions:
            obs, _, terminated, truncated, _ = self.step(action)
            if terminated or truncated:
                raise RuntimeError(
                    "Cannot restore the environment: replaying the saved episode ended early; "
                    "the environment is not deterministic given its random generator."
                )
        return obs
