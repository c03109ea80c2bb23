"""The n-state random walk of Sutton & Barto (Example 6.2, Figure 7.2): a test bed for prediction.

States 1..n lie in a row between two terminals, 0 on the left and n+1 on the right. Each episode
starts in the middle state (n+1)//2; action 0 moves left, action 1 moves right. Entering the left
terminal gives ``left_reward`` (-1 in Figure 7.2), the right one ``right_reward`` (+1), every
other transition 0. Under the uniform random policy with gamma = 1 the true values are linear:

    V(i) = left_reward + (right_reward - left_reward) * i / (n + 1),   i = 1..n

(for n = 19: -0.9, -0.8, ..., 0.9). ``true_values(gamma)`` solves the Bellman equation exactly
for any gamma.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

LEFT, RIGHT = 0, 1


class RandomWalkEnv(gym.Env):
    """n non-terminal states in a row, terminals at both ends (observation 0 and n+1)."""

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        n_states: int = 19,
        left_reward: float = -1.0,
        right_reward: float = 1.0,
        render_mode: str | None = None,
    ):
        if int(n_states) != n_states or n_states < 1:
            raise ValueError(f"n_states must be a positive integer (non-terminal states), got {n_states}")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.n = int(n_states)
        self.left_reward = float(left_reward)
        self.right_reward = float(right_reward)
        self.render_mode = render_mode
        self.start_state = (self.n + 1) // 2
        self.observation_space = spaces.Discrete(self.n + 2)
        self.action_space = spaces.Discrete(2)
        self.P = self._build_model()
        self.initial_state_distrib = np.zeros(self.n + 2)
        self.initial_state_distrib[self.start_state] = 1.0
        self.s = self.start_state

    @property
    def terminal_states(self) -> list[int]:
        return [0, self.n + 1]

    @property
    def nonterminal_states(self) -> np.ndarray:
        """Indices 1..n: the states over which the book's RMS error is averaged."""
        return np.arange(1, self.n + 1)

    def _build_model(self) -> dict[int, dict[int, list]]:
        P: dict[int, dict[int, list]] = {}
        for s in range(self.n + 2):
            if s in (0, self.n + 1):
                P[s] = {a: [(1.0, s, 0.0, True)] for a in (LEFT, RIGHT)}
                continue
            P[s] = {}
            for a, nxt in ((LEFT, s - 1), (RIGHT, s + 1)):
                reward = self.left_reward if nxt == 0 else self.right_reward if nxt == self.n + 1 else 0.0
                P[s][a] = [(1.0, nxt, reward, nxt in (0, self.n + 1))]
        return P

    def random_policy(self) -> np.ndarray:
        """The uniform random policy as probabilities, shape (n+2, 2)."""
        return np.full((self.n + 2, 2), 0.5)

    def true_values(self, gamma: float = 1.0) -> np.ndarray:
        """Exact V of the uniform random policy, shape (n+2,), 0 at the terminals.

        Solves V(i) = 0.5 (r_left(i) + gamma V(i-1)) + 0.5 (r_right(i) + gamma V(i+1)) with V = 0
        at the terminals, as a linear system over the n inner states.
        """
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        n = self.n
        A = np.eye(n)
        b = np.zeros(n)
        for i in range(n):
            if i > 0:
                A[i, i - 1] -= 0.5 * gamma
            if i < n - 1:
                A[i, i + 1] -= 0.5 * gamma
        b[0] += 0.5 * self.left_reward
        b[-1] += 0.5 * self.right_reward
        V = np.zeros(n + 2)
        V[1:-1] = np.linalg.solve(A, b)
        return V

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[int, dict]:
        super().reset(seed=seed)
        self.s = self.start_state
        return self.s, {"prob": 1.0}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
        prob, nxt, reward, terminated = self.P[self.s][int(action)][0]
        self.s = nxt
        return int(nxt), float(reward), bool(terminated), False, {"prob": prob}

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        cells = ["T"] + ["."] * self.n + ["T"]
        cells[self.s] = "A"
        return "".join(cells) + "\n"
