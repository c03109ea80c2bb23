"""Making gymnasium environments by id, with errors that list the valid ids.

Atari ids (``ALE/Pong-v5``, ``PongNoFrameskip-v4``; they need ``pip install ale-py``) come with
the Nature-DQN preprocessing (Mnih et al. 2015), so image agents see what that paper's did:
up to 30 no-op actions at reset, each action repeated for 4 frames with the max over the last
two, 84x84 grayscale, and the last 4 frames stacked into a ``(4, 84, 84)`` uint8 observation
(networks scale it by 1/255 themselves; replay keeps it uint8). The repeat is the wrapper's
alone: the ALE's own frameskip (4 in the v5 ids) is set to 1 unless ``env_kwargs`` names one,
in which case that one is used and the wrapper does not repeat again. Rewards are the game's
(not clipped), so logged returns are game scores.
"""

from __future__ import annotations

import difflib
import sys
from typing import Any

import gymnasium as gym

ATARI_FRAME_SKIP = 4
ATARI_FRAME_STACK = 4
ATARI_SCREEN = 84


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


def check_env_id(env_id: str) -> None:
    """Raise a ValueError naming close matches when ``env_id`` is not registered."""
    if not isinstance(env_id, str):
        return
    ids = registered_env_ids()
    if env_id in ids:
        return
    if register_atari():  # imported only for ids not found otherwise (it prints a banner)
        ids = registered_env_ids()
        if env_id in ids:
            return
    close = difflib.get_close_matches(env_id, ids, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    if (env_id.startswith("ALE/") or "NoFrameskip" in env_id) and "ale_py" not in sys.modules:
        hint = " Atari games need the Arcade Learning Environment: pip install ale-py." + hint
    raise ValueError(
        f"Unknown environment {env_id!r}.{hint} Registered ids include: "
        f"{', '.join(i for i in ids if '/' not in i and not is_atari_id(i))}"
    )


def make_env(env_id: str | gym.Env, env_kwargs: dict[str, Any] | None = None, **make_kwargs: Any) -> gym.Env:
    """``gym.make`` with id validation; an Env instance passes through unchanged."""
    if isinstance(env_id, gym.Env):
        return env_id
    check_env_id(env_id)
    if is_atari_id(env_id):
        return make_atari_env(env_id, env_kwargs, **make_kwargs)
    return gym.make(env_id, **(env_kwargs or {}), **make_kwargs)


def env_label(env: str | gym.Env) -> str:
    if isinstance(env, str):
        return env
    spec = getattr(env, "spec", None)
    return spec.id if spec is not None else type(env.unwrapped).__name__
