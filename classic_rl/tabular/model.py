"""A known MDP model as padded numpy arrays, built once from the gymnasium toy-text ``P``.

Gymnasium's toy-text environments (FrozenLake, CliffWalking, Taxi) and ours expose the model as
``P[s][a] = [(prob, next_state, reward, terminated), ...]``. Dynamic programming sweeps over
lists of tuples in Python are slow, so :class:`TabularModel` converts ``P`` once into arrays of
shape ``(S, A, K)``, where ``K`` is the largest number of outcomes of any ``(s, a)``; missing
outcomes are padded with probability 0. A dense ``(S, A, S')`` tensor would need 3.2 GB for a
100x100 grid world, the padded form needs ``S * A * K`` entries.

The one-step Bellman backup of a value vector V is then a single vectorised expression:

    Q(s, a) = sum_k p_k * (r_k + gamma * (1 - terminated_k) * V(s'_k))
            = R(s, a) + gamma * sum_k c_k * V(s'_k),   with c_k = p_k * (1 - terminated_k),

so there is no bootstrap after a transition that terminates the episode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

PROB_TOLERANCE = 1e-6


def check_gamma(gamma: float) -> float:
    """Return ``gamma`` as a float, or raise ValueError naming it if it is outside [0, 1]."""
    try:
        value = float(gamma)
    except (TypeError, ValueError):
        raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"gamma must be in [0, 1] (the discount factor), got {gamma}")
    return value


def _outcomes(P: Mapping | Sequence, s: int, a: int) -> Sequence:
    try:
        return P[s][a]
    except (KeyError, IndexError):
        raise ValueError(
            f"P[{s}][{a}] is missing: P must hold every state 0..n_states-1 and, for each, "
            "every action 0..n_actions-1"
        ) from None


def outcome_expectation(weights: np.ndarray, next_states: np.ndarray, V: np.ndarray) -> np.ndarray:
    """sum_k weights[k] * V[next_states[k]] over the leading (outcome) axis."""
    total = weights[0] * V[next_states[0]]
    for k in range(1, len(weights)):
        total += weights[k] * V[next_states[k]]
    return total


@dataclass(frozen=True, eq=False)
class TabularModel:
    """A finite MDP with arrays indexed ``[state, action, outcome]``.

    Attributes:
        next_states: int array (S, A, K), the successor state of each outcome.
        probs: float array (S, A, K), outcome probabilities (0 for padding); sums to 1 over K.
        rewards: float array (S, A, K), the reward of each outcome.
        terminated: bool array (S, A, K), whether the outcome ends the episode.
    """

    next_states: np.ndarray
    probs: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    expected_reward: np.ndarray = field(init=False, repr=False)
    continue_probs: np.ndarray = field(init=False, repr=False)
    _c_by_k: np.ndarray = field(init=False, repr=False)
    _next_by_k: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # R(s, a) = sum_k p_k r_k and c_k = p_k (1 - terminated_k): computed once, used every sweep.
        object.__setattr__(self, "expected_reward", (self.probs * self.rewards).sum(axis=-1))
        object.__setattr__(self, "continue_probs", np.where(self.terminated, 0.0, self.probs))
        # Outcome-major copies (K, S, A): one contiguous slice per outcome makes each sweep faster
        # than gathering the whole (S, A, K) block at once (docs/benchmarks.md, "Measurements moved out of the code").
        object.__setattr__(self, "_c_by_k", np.ascontiguousarray(np.moveaxis(self.continue_probs, -1, 0)))
        object.__setattr__(self, "_next_by_k", np.ascontiguousarray(np.moveaxis(self.next_states, -1, 0)))

    @property
    def n_states(self) -> int:
        return int(self.next_states.shape[0])

    @property
    def n_actions(self) -> int:
        return int(self.next_states.shape[1])

    @classmethod
    def from_P(cls, P: Mapping | Sequence) -> TabularModel:
        """Validate the toy-text model ``P`` and convert it to arrays.

        Raises ValueError if a state or action is missing, an outcome is not a 4-tuple, a next
        state is out of range, a probability is negative, or the probabilities of some
        ``P[s][a]`` do not sum to 1.
        """
        if isinstance(P, TabularModel):
            return P
        n_states = len(P)
        if n_states == 0:
            raise ValueError("P is empty: expected P[s][a] = [(prob, next_state, reward, terminated), ...]")
        _outcomes(P, 0, 0)
        n_actions = len(P[0])
        counts = np.zeros((n_states, n_actions), dtype=np.int64)
        flat: list = []
        for s in range(n_states):
            row = P[s]
            if len(row) != n_actions:
                raise ValueError(
                    f"P[{s}] has {len(row)} actions but P[0] has {n_actions}: every state needs the same actions"
                )
            for a in range(n_actions):
                outcomes = _outcomes(P, s, a)
                if len(outcomes) == 0:
                    raise ValueError(f"P[{s}][{a}] has no outcomes: it needs at least one (1.0, s', r, done)")
                counts[s, a] = len(outcomes)
                flat.extend(outcomes)
        try:
            table = np.array(flat, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                "every outcome in P[s][a] must be a tuple (prob, next_state, reward, terminated)"
            ) from None
        if table.ndim != 2 or table.shape[1] != 4:
            raise ValueError(
                "every outcome in P[s][a] must be a tuple (prob, next_state, reward, terminated)"
            )

        k_max = int(counts.max())
        # Position of each flat outcome inside its (s, a) slot: 0, 1, ..., count-1.
        ends = np.cumsum(counts.ravel())
        starts = ends - counts.ravel()
        slot = np.arange(len(flat)) - np.repeat(starts, counts.ravel())
        sa = np.repeat(np.arange(n_states * n_actions), counts.ravel())
        s_idx, a_idx = np.divmod(sa, n_actions)

        probs = np.zeros((n_states, n_actions, k_max))
        next_states = np.zeros((n_states, n_actions, k_max), dtype=np.int64)
        rewards = np.zeros((n_states, n_actions, k_max))
        terminated = np.ones((n_states, n_actions, k_max), dtype=bool)
        # Padding points at the state itself with probability 0 and no bootstrap: harmless.
        next_states[:] = np.arange(n_states)[:, None, None]
        probs[s_idx, a_idx, slot] = table[:, 0]
        next_states[s_idx, a_idx, slot] = table[:, 1].astype(np.int64)
        rewards[s_idx, a_idx, slot] = table[:, 2]
        terminated[s_idx, a_idx, slot] = table[:, 3] != 0

        cls._validate(probs, table[:, 1], n_states, s_idx, a_idx)
        return cls(next_states=next_states, probs=probs, rewards=rewards, terminated=terminated)

    @staticmethod
    def _validate(
        probs: np.ndarray, raw_next: np.ndarray, n_states: int, s_idx: np.ndarray, a_idx: np.ndarray
    ) -> None:
        bad_next = (raw_next < 0) | (raw_next >= n_states) | (raw_next != np.round(raw_next))
        if bad_next.any():
            i = int(np.argmax(bad_next))
            raise ValueError(
                f"P[{s_idx[i]}][{a_idx[i]}] has next_state {raw_next[i]:g}, outside 0..{n_states - 1}"
            )
        if (probs < 0).any():
            s, a, _ = np.argwhere(probs < 0)[0]
            raise ValueError(f"P[{s}][{a}] has a negative probability: probabilities must be >= 0")
        sums = probs.sum(axis=-1)
        bad = np.abs(sums - 1.0) > PROB_TOLERANCE
        if bad.any():
            s, a = np.argwhere(bad)[0]
            raise ValueError(
                f"the probabilities of P[{s}][{a}] sum to {sums[s, a]:.6g}, expected 1: "
                f"fix the outcome probabilities of state {s}, action {a}"
            )

    def q_values(self, V: np.ndarray, gamma: float) -> np.ndarray:
        """The one-step backup Q(s, a) = R(s, a) + gamma * sum_k c_k V(s'_k), shape (S, A)."""
        return self.expected_reward + gamma * outcome_expectation(self._c_by_k, self._next_by_k, V)

    def policy_arrays(self, policy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Collapse the action dimension under ``policy`` (S, A) probabilities.

        Returns ``(r_pi (S,), c_pi (J, S), next_pi (J, S))`` such that the Bellman expectation
        backup is ``V <- r_pi + gamma * sum_j c_pi[j, s] V(next_pi[j, s])``. For a deterministic
        policy J = K (only the chosen action's outcomes), otherwise J <= A * K.
        """
        r_pi = (policy * self.expected_reward).sum(axis=1)
        if np.all((policy == 0) | (policy == 1)):
            states, actions = np.arange(self.n_states), policy.argmax(axis=1)
            c_pi, next_pi = self.continue_probs[states, actions], self.next_states[states, actions]
        else:
            c_pi = (policy[:, :, None] * self.continue_probs).reshape(self.n_states, -1)
            next_pi = self.next_states.reshape(self.n_states, -1)
            used = c_pi.any(axis=0)
            c_pi, next_pi = c_pi[:, used], next_pi[:, used]
        return r_pi, np.ascontiguousarray(c_pi.T), np.ascontiguousarray(next_pi.T)

    def states_that_can_terminate(self, policy: np.ndarray | None = None) -> np.ndarray:
        """Bool (S,): states from which termination has positive probability.

        Under ``policy`` (S, A) if given, otherwise under some sequence of actions.
        Backward breadth-first search over outcomes with positive probability.
        """
        allowed = np.ones((self.n_states, self.n_actions), bool) if policy is None else policy > 0
        positive = (self.probs > 0) & allowed[:, :, None]
        can = (positive & self.terminated).any(axis=(1, 2))
        while True:
            reach = (positive & ~self.terminated & can[self.next_states]).any(axis=(1, 2))
            new = can | reach
            if (new == can).all():
                return can
            can = new

    def proper_policy(self) -> np.ndarray:
        """A deterministic policy under which every state that can terminate does so w.p. 1.

        Level 0 holds states with an action that can terminate at once; a state at level k+1 has an
        action that reaches level <= k with positive probability. Following those actions, each
        step has positive probability of moving down a level, so the episode ends almost surely.
        Policy iteration with gamma = 1 needs such a start, else the first evaluation diverges.
        """
        positive = self.probs > 0
        action = np.zeros(self.n_states, dtype=np.int64)
        done = np.zeros(self.n_states, dtype=bool)
        frontier = (positive & self.terminated).any(axis=2)  # (S, A)
        while True:
            new_states = frontier.any(axis=1) & ~done
            if not new_states.any():
                return action
            action[new_states] = np.argmax(frontier[new_states], axis=1)
            done |= new_states
            frontier = (positive & ~self.terminated & done[self.next_states]).any(axis=2)
