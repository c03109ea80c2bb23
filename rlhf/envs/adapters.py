"""Text adapters: an env with Discrete actions (and a Discrete or Tuple-of-Discrete observation) as an env
whose observation and action spaces are ``gymnasium.spaces.Text``.

The observation is a sentence that describes the state and names the moves; the action is the policy's
reply, read as a move name (the first word, case and punctuation ignored). ``info["valid_actions"]``
lists the moves worth making (those that change the state, or the env's own ``action_mask``); any move
name is passed on to the wrapped env, which decides what it costs (a move into a wall is a no-op in the
grid worlds, a wrong pickup costs 10 in Taxi). A reply that names no move leaves the state as it is,
costs ``invalid_reward`` and is answered with the state again ("invalid move ..."): never a crash.
``info["success"]`` says whether the task is done (the goal reached, the passenger delivered, the
hand won): False until it is, so a truncated episode ends with False.

Shipped: FrozenLake, CliffWalking, Taxi, Blackjack and classic_rl's GridWorld (GridWorld4x3-v0 and
GridWorld-v0 layouts); :class:`DiscreteText` names the states and moves of any other Discrete env by
number. ``adapter_for(env)`` picks one by the env's class.
"""

from __future__ import annotations

import string
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = [
    "ADAPTERS",
    "BlackjackText",
    "CliffWalkingText",
    "DiscreteText",
    "FrozenLakeText",
    "GridWorldText",
    "TaxiText",
    "TextAdapter",
    "adapter_for",
]

CHARSET = string.printable  # letters, digits, punctuation and whitespace (newlines included)
MAX_OBSERVATION = 4096  # characters of one observation
MAX_REPLY = 256  # characters of a reply the adapters read (longer replies are cut before parsing)


def text_space(max_length: int) -> spaces.Text:
    return spaces.Text(max_length=max_length, min_length=0, charset=CHARSET)


class TextAdapter(gym.Env):
    """A Discrete-action env behind Text spaces (see the module docstring); subclasses write
    :meth:`intro`, :meth:`describe` and, where useful, :meth:`valid_moves` and :meth:`succeeded`."""

    metadata = {"render_modes": []}
    moves: tuple[str, ...] = ()  # the name of action i is moves[i]
    default_invalid_reward = 0.0

    def __init__(self, env: gym.Env, invalid_reward: float | None = None):
        if not isinstance(env.action_space, spaces.Discrete):
            raise TypeError(f"a text adapter needs Discrete actions, not {env.action_space}")
        self.env = env
        if not self.moves:
            self.moves = tuple(str(a) for a in range(int(env.action_space.n)))
        if len(self.moves) != int(env.action_space.n):
            raise TypeError(f"{type(self).__name__} names {len(self.moves)} moves, the env has {env.action_space.n}")
        self.invalid_reward = self.default_invalid_reward if invalid_reward is None else float(invalid_reward)
        self.observation_space = text_space(MAX_OBSERVATION)
        self.action_space = text_space(MAX_REPLY)
        self.spec = env.spec
        self.state: Any = None  # the wrapped env's observation (what a classic_rl agent acts on)
        self._info: dict[str, Any] = {}

    # ------------------------------------------------------------------ what a subclass writes
    def intro(self) -> str:
        """The rules, said once at the start of an episode."""
        return ""

    def describe(self, state: Any, info: dict[str, Any]) -> str:
        """The state in words."""
        return f"state {state}"

    def valid_moves(self, state: Any, info: dict[str, Any]) -> list[str]:
        """The moves worth making here (default: the env's action_mask if it gives one, else all)."""
        mask = info.get("action_mask")
        if mask is not None:
            return [m for m, ok in zip(self.moves, mask) if ok]
        return list(self.moves)

    def succeeded(self, reward: float, terminated: bool, info: dict[str, Any]) -> bool | None:
        """Whether the step that gave ``reward`` did the task (None: the env has no notion of success)."""
        return None

    # ------------------------------------------------------------------ the gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self.state, info = self.env.reset(seed=seed, options=options)
        self._info = dict(info)
        intro = self.intro()
        return (intro + "\n" if intro else "") + self._observation(), self._public_info(self._info)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        move = self.parse(action)
        if move is None:
            shown = " ".join("".join(c for c in str(action)[:MAX_REPLY] if c in CHARSET).split())[:40]  # stays in the charset
            info = {**self._public_info(self._info, self.invalid_reward, False), "invalid": True}
            return f"invalid move {shown!r}. " + self._observation(), self.invalid_reward, False, False, info
        self.state, reward, terminated, truncated, info = self.env.step(self.moves.index(move))
        self._info = dict(info)
        public = self._public_info(self._info, float(reward), bool(terminated))
        return self._observation(), float(reward), bool(terminated), bool(truncated), public

    def close(self) -> None:
        self.env.close()

    # ------------------------------------------------------------------ helpers
    def parse(self, reply: Any) -> str | None:
        """The move a reply names: its first word, lower case, punctuation stripped; None if it names none."""
        words = str(reply)[:MAX_REPLY].strip().lower().split()
        if not words:
            return None
        word = words[0].strip(string.punctuation)
        return word if word in self.moves else None

    def move_text(self, action: int) -> str:
        """The reply that makes action ``action`` (for policies that act on the wrapped env's states)."""
        return self.moves[int(action)]

    def _observation(self) -> str:
        moves = self.valid_moves(self.state, self._info)
        return f"{self.describe(self.state, self._info)}; moves: {', '.join(moves)}"

    def _public_info(self, info: dict[str, Any], reward: float = 0.0, terminated: bool = False) -> dict[str, Any]:
        """``valid_actions``, and ``success`` (so far: False until the task is done) where the env has one."""
        public: dict[str, Any] = {"valid_actions": self.valid_moves(self.state, info)}
        success = self.succeeded(reward, terminated, info)
        if success is not None:
            public["success"] = bool(success)
        return public


def _grid_moves(row: int, col: int, n_rows: int, n_cols: int, moves: dict[str, tuple[int, int]],
                blocked=lambda r, c: False) -> list[str]:
    """The moves that stay on the grid and off walls."""
    return [name for name, (dr, dc) in moves.items()
            if 0 <= row + dr < n_rows and 0 <= col + dc < n_cols and not blocked(row + dr, col + dc)]


class GridText(TextAdapter):
    """A grid whose state is ``row * n_cols + col`` (FrozenLake, CliffWalking): the cell in words, and the
    moves that stay on the grid. Subclasses set ``moves``, ``DELTAS``, ``n_rows`` and ``n_cols``."""

    DELTAS: dict[str, tuple[int, int]] = {}
    n_rows = n_cols = 0

    def describe(self, state, info) -> str:
        row, col = divmod(int(state), self.n_cols)
        return f"row {row} col {col}"

    def valid_moves(self, state, info) -> list[str]:
        row, col = divmod(int(state), self.n_cols)
        return [m for m in self.moves if m in _grid_moves(row, col, self.n_rows, self.n_cols, self.DELTAS)]


class FrozenLakeText(GridText):
    """gymnasium's FrozenLake: reach G over the ice without falling into a hole (reward 1 at G)."""

    moves = ("left", "down", "right", "up")  # FrozenLake's actions 0..3
    DELTAS = {"left": (0, -1), "down": (1, 0), "right": (0, 1), "up": (-1, 0)}

    def __init__(self, env: gym.Env, invalid_reward: float | None = None):
        super().__init__(env, invalid_reward)
        lake = env.unwrapped
        self.rows = ["".join(c.decode() for c in row) for row in lake.desc]
        self.n_rows, self.n_cols = lake.nrow, lake.ncol

    def intro(self) -> str:
        return (f"Frozen lake {self.n_rows}x{self.n_cols} (S start, F ice, H hole, G goal); reach G, avoid holes.\n"
                + "\n".join(self.rows))

    def succeeded(self, reward, terminated, info) -> bool:
        return terminated and reward > 0


class CliffWalkingText(GridText):
    """gymnasium's CliffWalking: from the bottom-left corner to the bottom-right one, each move -1, the
    cliff between them -100 and back to the start."""

    moves = ("up", "right", "down", "left")  # CliffWalking's actions 0..3
    DELTAS = {"up": (-1, 0), "right": (0, 1), "down": (1, 0), "left": (0, -1)}
    default_invalid_reward = -1.0  # as a move: a reply that names no move still costs the time

    def __init__(self, env: gym.Env, invalid_reward: float | None = None):
        super().__init__(env, invalid_reward)
        self.n_rows, self.n_cols = env.unwrapped.shape

    def intro(self) -> str:
        last = self.n_rows - 1
        return (f"Cliff walk {self.n_rows}x{self.n_cols}: go from row {last} col 0 to row {last} col {self.n_cols - 1}; "
                f"row {last} cols 1-{self.n_cols - 2} is a cliff (-100, back to the start); each move costs 1.")

    def succeeded(self, reward, terminated, info) -> bool:
        return terminated  # the goal is the only terminal state


class TaxiText(TextAdapter):
    """gymnasium's Taxi: pick the passenger up at one stand and drop them at another (+20; each move -1,
    a wrong pickup or dropoff -10). The valid moves are the env's ``action_mask``."""

    moves = ("south", "north", "east", "west", "pickup", "dropoff")  # Taxi's actions 0..5
    STANDS = "RGYB"
    default_invalid_reward = -1.0

    def intro(self) -> str:
        stands = ", ".join(f"{name} at row {r} col {c}" for name, (r, c) in zip(self.STANDS, self.env.unwrapped.locs))
        return f"Taxi 5x5: pick up the passenger, drop them at the destination; stands {stands}."

    def describe(self, state, info) -> str:
        row, col, passenger, destination = self.env.unwrapped.decode(int(state))
        where = "in the taxi" if passenger == 4 else f"at {self.STANDS[passenger]}"
        return f"taxi at row {row} col {col}; passenger {where}; destination {self.STANDS[destination]}"

    def succeeded(self, reward, terminated, info) -> bool:
        return terminated  # only a right dropoff ends the episode


class BlackjackText(TextAdapter):
    """gymnasium's Blackjack: hit or stick against the dealer (+1 win, -1 loss, 0 draw)."""

    moves = ("stick", "hit")  # Blackjack's actions 0, 1

    def intro(self) -> str:
        return "Blackjack: hit to take a card, stick to stop; beat the dealer without going over 21."

    def describe(self, state, info) -> str:
        total, dealer, usable_ace = (int(x) for x in state)
        return f"your sum {total}{' (usable ace)' if usable_ace else ''}, dealer shows {dealer}"

    def succeeded(self, reward, terminated, info) -> bool:
        return reward > 0


class GridWorldText(TextAdapter):
    """classic_rl's GridWorld (GridWorld4x3-v0 and any layout): moves may slip sideways."""

    moves = ("up", "right", "down", "left")  # GridWorldEnv's actions 0..3
    DELTAS = {"up": (-1, 0), "right": (0, 1), "down": (1, 0), "left": (0, -1)}

    def __init__(self, env: gym.Env, invalid_reward: float | None = None):
        grid = env.unwrapped
        step_reward = float(getattr(grid, "step_reward", 0.0))
        super().__init__(env, step_reward if invalid_reward is None else invalid_reward)
        self.layout, self.slip, self.step_reward = grid.grid, float(grid.slip), step_reward  # the parsed Layout

    def intro(self) -> str:
        rewards = ", ".join(f"{ch} {v:+g}" for ch, v in sorted(self._terminal_chars().items()))
        slip = f"a move slips to each side with probability {self.slip:g}; " if self.slip else ""
        return (f"Grid world (S start, # wall, terminals {rewards}); {slip}each move costs {-self.step_reward:g}.\n"
                + "\n".join(self.layout.rows))

    def _terminal_chars(self) -> dict[str, float]:
        return {self.layout.rows[r][c]: v for s, v in self.layout.terminal_rewards.items()
                for r, c in [self.layout.cells[s]]}

    def describe(self, state, info) -> str:
        row, col = self.layout.cells[int(state)]
        return f"row {row} col {col}"

    def valid_moves(self, state, info) -> list[str]:
        row, col = self.layout.cells[int(state)]
        n_rows, n_cols = self.layout.shape
        return _grid_moves(row, col, n_rows, n_cols, self.DELTAS, self.layout.is_wall)

    def succeeded(self, reward, terminated, info) -> bool:
        return terminated and reward > 0


class DiscreteText(TextAdapter):
    """Any other env with Discrete actions and a Discrete (or Tuple of Discrete) observation: states and
    moves by number ("state 3; moves: 0, 1, 2, 3")."""

    def describe(self, state, info) -> str:
        shown = ", ".join(str(int(x)) for x in state) if isinstance(state, (tuple, list, np.ndarray)) else str(int(state))
        return f"state {shown}"


# the env's class name (env.unwrapped) -> its adapter
ADAPTERS: dict[str, type[TextAdapter]] = {
    "FrozenLakeEnv": FrozenLakeText,
    "CliffWalkingEnv": CliffWalkingText,
    "TaxiEnv": TaxiText,
    "BlackjackEnv": BlackjackText,
    "GridWorldEnv": GridWorldText,
}


def _discrete_like(space: spaces.Space) -> bool:
    if isinstance(space, spaces.Discrete):
        return True
    return isinstance(space, spaces.Tuple) and all(isinstance(s, spaces.Discrete) for s in space.spaces)


def adapter_for(env: gym.Env) -> type[TextAdapter] | None:
    """The adapter class for ``env``, or None if it has no Discrete actions or observations to describe."""
    if not isinstance(env.action_space, spaces.Discrete) or not _discrete_like(env.observation_space):
        return None
    return ADAPTERS.get(type(env.unwrapped).__name__, DiscreteText)
