"""A configurable stochastic grid world (the course's 4x3 world and any layout you draw).

The layout is a list of equal-length strings, one per row, top row first:

    '#' wall   'S' start   '.' free cell
    'G' terminal with reward +1, 'X' terminal with reward -1 (change them with ``terminal_rewards``)
    '0'..'9' terminal whose reward is that digit; any other character named in ``terminal_rewards``

Dynamics (Russell & Norvig's 4x3 world): the agent moves in the intended direction with
probability ``1 - 2 * slip`` and to EACH perpendicular side with probability ``slip`` (course
default 0.1, so 0.8 intended). A move into a wall or off the border leaves the agent where it is.
Every move costs ``step_reward``; entering a terminal adds that terminal's reward and ends the
episode. States number the non-wall cells row by row; ``cell_of`` / ``state_of`` convert.

The model is exposed as ``P[s][a] = [(prob, next_state, reward, terminated), ...]`` like
gymnasium's toy-text environments, so dynamic programming in ``classic_rl.tabular`` applies.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
from gymnasium import spaces

UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3
ACTION_NAMES = ("up", "right", "down", "left")
# (row, col) change of each action; clockwise order, so the perpendicular moves of a are a +- 1 mod 4.
ACTION_DELTAS = ((-1, 0), (0, 1), (1, 0), (0, -1))
WALL, START, FREE = "#", "S", "."
DEFAULT_TERMINAL_REWARDS: dict[str, float] = {"G": 1.0, "X": -1.0}

# Russell & Norvig's 4x3 world: +1 top right, -1 below it, wall at row 1 col 1, start bottom left.
GRIDWORLD_4X3 = ("...G", ".#.X", "S...")


@dataclass(frozen=True)
class Layout:
    """A parsed, validated layout: where walls, start and terminals are, and how states number cells."""

    rows: tuple[str, ...]
    cells: tuple[tuple[int, int], ...]  # state -> (row, col)
    start: int
    terminal_rewards: dict[int, float]  # terminal state -> reward on entering it
    index: dict[tuple[int, int], int] = field(init=False, repr=False, compare=False)  # (row, col) -> state

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {cell: s for s, cell in enumerate(self.cells)})

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), len(self.rows[0])

    @property
    def n_states(self) -> int:
        return len(self.cells)

    def is_wall(self, row: int, col: int) -> bool:
        return self.rows[row][col] == WALL

    def state_of(self, row: int, col: int) -> int:
        """The state index of cell (row, col); raises ValueError for walls and cells off the grid."""
        if (row, col) not in self.index:
            raise ValueError(f"cell ({row}, {col}) is a wall or outside the {self.shape} grid")
        return self.index[(row, col)]


def parse_layout(layout: Sequence[str] | str, terminal_rewards: Mapping[str, float] | None = None) -> Layout:
    """Validate ``layout`` and number its cells. Raises ValueError naming the problem and the fix."""
    rows = tuple(layout.strip().splitlines()) if isinstance(layout, str) else tuple(layout)
    if not rows or not all(isinstance(r, str) for r in rows) or not rows[0]:
        raise ValueError(
            "layout must be a non-empty list of strings, one per row, e.g. ['...G', '.#.X', 'S...']"
        )
    for i, row in enumerate(rows):
        if len(row) != len(rows[0]):
            raise ValueError(
                f"layout rows must all have the same length: row 0 has {len(rows[0])} characters, "
                f"row {i} ({row!r}) has {len(row)}"
            )
    rewards = dict(DEFAULT_TERMINAL_REWARDS if terminal_rewards is None else terminal_rewards)
    for key in rewards:
        if len(key) != 1 or key in (WALL, START, FREE):
            raise ValueError(
                f"terminal_rewards keys must be single layout characters other than '#', 'S', '.'; got {key!r}"
            )

    cells, start_cells, terminals = [], [], {}
    for r, row in enumerate(rows):
        for c, ch in enumerate(row):
            if ch == WALL:
                continue
            if ch not in (START, FREE) and ch not in rewards and not ch.isdigit():
                valid = sorted({WALL, START, FREE, *rewards}) + ["0-9"]
                raise ValueError(f"layout cell ({r}, {c}) is {ch!r}; valid characters are {valid}")
            state = len(cells)
            cells.append((r, c))
            if ch == START:
                start_cells.append(state)
            elif ch != FREE:
                terminals[state] = float(rewards[ch]) if ch in rewards else float(ch)
    if len(start_cells) != 1:
        raise ValueError(f"layout needs exactly one start cell 'S', found {len(start_cells)}")
    if not terminals:
        raise ValueError(
            "layout has no terminal cell: add 'G' (+1), 'X' (-1), a digit, or a character named in terminal_rewards"
        )
    return Layout(rows=rows, cells=tuple(cells), start=start_cells[0], terminal_rewards=terminals)


def neighbour_table(layout: Layout) -> list[tuple[int, int, int, int]]:
    """For every state, the state reached by each action (up, right, down, left) without slipping.

    A move into a wall or off the border leaves the agent where it is ("bounces back").
    """
    n_rows, n_cols = layout.shape
    table = []
    for s, (r, c) in enumerate(layout.cells):
        moves = []
        for dr, dc in ACTION_DELTAS:
            nr, nc = r + dr, c + dc
            inside = 0 <= nr < n_rows and 0 <= nc < n_cols and layout.rows[nr][nc] != WALL
            moves.append(layout.index[(nr, nc)] if inside else s)
        table.append(tuple(moves))
    return table


def build_model(layout: Layout, slip: float, step_reward: float) -> dict[int, dict[int, list]]:
    """The toy-text model P[s][a] = [(prob, next_state, reward, terminated), ...] of the grid world.

    Action a goes to its intended neighbour with probability 1 - 2 slip and to each perpendicular
    neighbour, (a - 1) mod 4 and (a + 1) mod 4, with probability slip. Outcomes landing in the same
    cell (e.g. two bounces in a corner) are merged into one. Terminal states are absorbing with
    reward 0, as in gymnasium's FrozenLake.
    """
    terminals = layout.terminal_rewards
    P: dict[int, dict[int, list]] = {}
    for s, moves in enumerate(neighbour_table(layout)):
        if s in terminals:
            P[s] = {a: [(1.0, s, 0.0, True)] for a in range(4)}
            continue
        P[s] = {}
        for a in range(4):
            merged: dict[int, float] = {}
            for direction, prob in ((a, 1.0 - 2.0 * slip), ((a - 1) % 4, slip), ((a + 1) % 4, slip)):
                if prob > 0:
                    merged[moves[direction]] = merged.get(moves[direction], 0.0) + prob
            P[s][a] = [
                (prob, nxt, step_reward + terminals.get(nxt, 0.0), nxt in terminals)
                for nxt, prob in merged.items()
            ]
    return P


def _check_reachable(layout: Layout, P: Mapping) -> None:
    """Every terminal must be reachable from the start, else the layout is almost surely a typo."""
    seen = {layout.start}
    queue = deque([layout.start])
    while queue:
        s = queue.popleft()
        if s in layout.terminal_rewards:
            continue
        for outcomes in P[s].values():
            for _, nxt, _, _ in outcomes:
                if nxt not in seen:
                    seen.add(nxt)
                    queue.append(nxt)
    unreachable = [layout.cells[t] for t in layout.terminal_rewards if t not in seen]
    if unreachable:
        raise ValueError(
            f"terminal cell(s) {unreachable} (row, col) cannot be reached from the start {layout.cells[layout.start]}: "
            "remove the walls around them or remove them from the layout"
        )


class GridWorldEnv(gym.Env):
    """Stochastic grid world with walls, terminals and a per-step reward (see the module docstring).

    Args:
        layout: rows of the grid, top row first (default: Russell & Norvig's 4x3 world).
        slip: probability of moving to EACH side perpendicular to the intended direction, in [0, 0.5].
        step_reward: reward of every move (e.g. -0.04 in the 4x3 world).
        terminal_rewards: layout character -> reward on entering it (default {'G': 1, 'X': -1}).
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        layout: Sequence[str] | str = GRIDWORLD_4X3,
        slip: float = 0.1,
        step_reward: float = -0.04,
        terminal_rewards: Mapping[str, float] | None = None,
        render_mode: str | None = None,
    ):
        if not 0.0 <= slip <= 0.5:
            raise ValueError(f"slip must be in [0, 0.5] (probability of each perpendicular move), got {slip}")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.grid = parse_layout(layout, terminal_rewards)
        self.slip = float(slip)
        self.step_reward = float(step_reward)
        self.render_mode = render_mode
        self.P = build_model(self.grid, self.slip, self.step_reward)
        _check_reachable(self.grid, self.P)
        self.observation_space = spaces.Discrete(self.grid.n_states)
        self.action_space = spaces.Discrete(4)
        self.initial_state_distrib = np.zeros(self.grid.n_states)
        self.initial_state_distrib[self.grid.start] = 1.0
        self.s = self.grid.start

    @property
    def layout(self) -> tuple[str, ...]:
        return self.grid.rows

    @property
    def terminal_states(self) -> list[int]:
        return sorted(self.grid.terminal_rewards)

    def cell_of(self, state: int) -> tuple[int, int]:
        """(row, col) of ``state``."""
        return self.grid.cells[state]

    def state_of(self, row: int, col: int) -> int:
        """State index of cell (row, col)."""
        return self.grid.state_of(row, col)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[int, dict]:
        super().reset(seed=seed)
        self.s = self.grid.start
        return int(self.s), {"prob": 1.0}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
        outcomes = self.P[self.s][int(action)]
        i = int(self.np_random.choice(len(outcomes), p=[o[0] for o in outcomes])) if len(outcomes) > 1 else 0
        prob, nxt, reward, terminated = outcomes[i]
        self.s = nxt
        return int(nxt), float(reward), bool(terminated), False, {"prob": prob}

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        rows = [list(r) for r in self.grid.rows]
        r, c = self.grid.cells[self.s]
        rows[r][c] = "A"
        return "\n".join("".join(r) for r in rows) + "\n"


def gridworld_4x3(slip: float = 0.1, step_reward: float = -0.04) -> GridWorldEnv:
    """The course's (Russell & Norvig's) 4x3 world: +1 and -1 terminals, one wall, 0.8/0.1/0.1 moves."""
    return GridWorldEnv(GRIDWORLD_4X3, slip=slip, step_reward=step_reward)
