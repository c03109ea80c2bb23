"""Dynamic programming with a known model: policy evaluation, policy iteration, value iteration.

All three repeat a Bellman backup over every state at once (synchronous, numpy-vectorised sweeps):

    policy evaluation:  V(s) <- sum_a pi(a|s) [ R(s,a) + gamma sum_s' P(s'|s,a) V(s') ]
    value iteration:    V(s) <- max_a      [ R(s,a) + gamma sum_s' P(s'|s,a) V(s') ]
    policy iteration:   evaluate pi, then pi(s) <- argmax_a Q(s, a), until pi is stable

where P(s'|s,a) counts only transitions that do not terminate the episode (no bootstrap after
``terminated``). Sweeps stop when the largest change is below ``theta``. With gamma = 1 a policy
that never terminates can have infinite value: that is detected and reported instead of looping.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from classic_rl.tabular.model import TabularModel, check_gamma, outcome_expectation


class ConvergenceError(ValueError):
    """Raised when sweeps do not converge within ``max_iterations`` (usually gamma = 1 with a
    policy that does not terminate)."""


ModelLike = Mapping | Sequence | TabularModel


def _check_positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


def policy_matrix(policy: np.ndarray | Sequence, n_states: int, n_actions: int) -> np.ndarray:
    """Return ``policy`` as probabilities of shape (n_states, n_actions).

    Accepts deterministic actions of shape (n_states,) or probabilities (n_states, n_actions).
    """
    arr = np.asarray(policy)
    if arr.shape == (n_states,) and np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() >= n_actions:
            raise ValueError(
                f"policy actions must be in 0..{n_actions - 1}, got values {arr.min()}..{arr.max()}"
            )
        return np.eye(n_actions)[arr]
    if arr.shape == (n_states, n_actions):
        arr = arr.astype(np.float64)
        if (arr < 0).any():
            raise ValueError("policy probabilities must be >= 0")
        sums = arr.sum(axis=1)
        bad = np.abs(sums - 1.0) > 1e-6
        if bad.any():
            s = int(np.argmax(bad))
            raise ValueError(f"policy probabilities of state {s} sum to {sums[s]:.6g}, expected 1")
        return arr
    raise ValueError(
        f"policy must be integer actions of shape ({n_states},) or probabilities of shape "
        f"({n_states}, {n_actions}); got shape {arr.shape} and dtype {arr.dtype}"
    )


def _sweep(
    backup: Callable[[np.ndarray], np.ndarray], V: np.ndarray, theta: float, max_iterations: int, what: str,
    stats: dict | None = None,
) -> np.ndarray:
    """Apply ``V <- backup(V)`` until max |change| < theta; counts sweeps in ``stats["sweeps"]``."""
    delta = np.inf
    for _ in range(max_iterations):
        if stats is not None:
            stats["sweeps"] = stats.get("sweeps", 0) + 1
        V_new = backup(V)
        delta = float(np.max(np.abs(V_new - V))) if V.size else 0.0
        V = V_new
        if delta < theta:
            return V
    raise ConvergenceError(
        f"{what} did not converge in max_iterations={max_iterations} sweeps (last change {delta:.3g} >= "
        f"theta={theta:g}). With gamma = 1 this means some policy never terminates and collects "
        "non-zero reward forever: use gamma < 1, or raise max_iterations if it is just slow."
    )


def _check_terminates(model: TabularModel, pi: np.ndarray, r_pi: np.ndarray, gamma: float) -> None:
    """With gamma = 1, states that can never terminate under ``pi`` must collect zero reward."""
    if gamma < 1.0:
        return
    stuck = ~model.states_that_can_terminate(pi)
    if stuck.any() and np.any(r_pi[stuck] != 0):
        states = np.flatnonzero(stuck)
        raise ConvergenceError(
            f"with gamma=1 the policy never terminates from states {states[:10].tolist()}"
            f"{' ...' if len(states) > 10 else ''} and collects non-zero reward there, so their values "
            "are unbounded: use gamma < 1 or a policy that reaches a terminal state"
        )


def _evaluate(
    model: TabularModel,
    pi: np.ndarray,
    gamma: float,
    theta: float,
    max_iterations: int,
    V0: np.ndarray | None,
    stats: dict | None = None,
) -> np.ndarray:
    r_pi, c_pi, next_pi = model.policy_arrays(pi)
    _check_terminates(model, pi, r_pi, gamma)

    def backup(V: np.ndarray) -> np.ndarray:
        # Bellman expectation backup: V(s) = r_pi(s) + gamma * sum_s' P_pi(s'|s) V(s')
        return r_pi + gamma * outcome_expectation(c_pi, next_pi, V)

    V = np.zeros(model.n_states) if V0 is None else np.asarray(V0, dtype=np.float64).copy()
    return _sweep(backup, V, theta, max_iterations, "policy_evaluation", stats)


def policy_evaluation(
    P: ModelLike,
    policy: np.ndarray | Sequence,
    gamma: float,
    theta: float = 1e-10,
    max_iterations: int = 100_000,
) -> np.ndarray:
    """State values V_pi of ``policy`` (actions (S,) or probabilities (S, A)) by iterative sweeps.

    Iterates V(s) <- sum_a pi(a|s) [R(s,a) + gamma sum_s' P(s'|s,a) V(s')] until the largest
    change is below ``theta``. Raises ConvergenceError if gamma = 1 and the policy collects
    reward forever without terminating.
    """
    model = TabularModel.from_P(P)
    gamma = check_gamma(gamma)
    theta = _check_positive("theta", theta)
    pi = policy_matrix(policy, model.n_states, model.n_actions)
    return _evaluate(model, pi, gamma, theta, max_iterations, None)


def q_from_v(P: ModelLike, V: np.ndarray, gamma: float) -> np.ndarray:
    """Action values Q(s, a) = R(s, a) + gamma * sum_s' P(s'|s, a) V(s'), shape (S, A)."""
    model = TabularModel.from_P(P)
    gamma = check_gamma(gamma)
    V = np.asarray(V, dtype=np.float64)
    if V.shape != (model.n_states,):
        raise ValueError(f"V must have shape ({model.n_states},), got {V.shape}")
    return model.q_values(V, gamma)


def greedy_policy(Q: np.ndarray) -> np.ndarray:
    """Deterministic greedy actions argmax_a Q(s, a); ties go to the lowest action index."""
    return np.asarray(Q).argmax(axis=1)


def value_iteration(
    P: ModelLike, gamma: float, theta: float = 1e-8, max_iterations: int = 100_000, stats: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Optimal values and a greedy policy by value iteration.

    Iterates the Bellman optimality backup V(s) <- max_a [R(s,a) + gamma sum_s' P(s'|s,a) V(s')]
    until max |change| < theta, then returns ``(V, policy)`` with policy(s) = argmax_a Q(s, a).
    A dict passed as ``stats`` receives ``sweeps``, the number of backups over all states.
    """
    model = TabularModel.from_P(P)
    gamma = check_gamma(gamma)
    theta = _check_positive("theta", theta)
    if gamma == 1.0:
        # A state that can never terminate whatever it does, yet collects reward, has unbounded value.
        stuck = ~model.states_that_can_terminate()
        if stuck.any() and np.any(model.expected_reward[stuck] != 0):
            raise ConvergenceError(
                f"with gamma=1 states {np.flatnonzero(stuck)[:10].tolist()} can never terminate and collect "
                "non-zero reward, so their values are unbounded: use gamma < 1"
            )
    V = _sweep(
        lambda V: model.q_values(V, gamma).max(axis=1),
        np.zeros(model.n_states),
        theta,
        max_iterations,
        "value_iteration",
        stats,
    )
    return V, greedy_policy(model.q_values(V, gamma))


def policy_iteration(
    P: ModelLike, gamma: float, theta: float = 1e-10, max_iterations: int = 1000, stats: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Optimal values and policy by policy iteration (evaluate, improve greedily, repeat).

    Starts from a proper policy (one that terminates from every state that can terminate, see
    :meth:`TabularModel.proper_policy`), so that with gamma = 1 the first evaluation is finite.
    The improvement keeps the current action when it is tied with the best one, which guarantees
    termination of the loop. Returns ``(V, policy)``. A dict passed as ``stats`` receives
    ``improvements`` (policy improvement steps) and ``sweeps`` (evaluation sweeps over all states).
    """
    model = TabularModel.from_P(P)
    gamma = check_gamma(gamma)
    theta = _check_positive("theta", theta)
    states = np.arange(model.n_states)
    policy = model.proper_policy()
    V = None
    for iteration in range(max_iterations):
        if stats is not None:
            stats["improvements"] = iteration + 1
        V = _evaluate(model, np.eye(model.n_actions)[policy], gamma, theta, 100_000, V, stats)
        Q = model.q_values(V, gamma)
        best = Q.max(axis=1)
        tolerance = 1e-9 * np.maximum(1.0, np.abs(best))
        keep = Q[states, policy] >= best - tolerance
        improved = np.where(keep, policy, Q.argmax(axis=1))
        if (improved == policy).all():
            return V, policy
        policy = improved
    raise ConvergenceError(
        f"policy_iteration did not stabilise in max_iterations={max_iterations} improvements"
    )
