"""n-step return math, on whole trajectories (numpy).

The n-step target of a transition at time t (Sutton & Barto ch. 7; the replay side of Rainbow):

    G_t^(n) = r_t + gamma r_{t+1} + ... + gamma^(m-1) r_{t+m-1}
    y_t     = G_t^(n) + gamma^m (1 - terminated) Q(s_{t+m})

where the window stops early at the end of the episode: m = min(n, steps left in the episode).
At a *termination* nothing is bootstrapped (the value of a terminal state is 0); at a
*truncation* (time limit) the target bootstraps from the real final observation.

:func:`n_step_returns` computes ``G``, the bootstrap discount ``gamma^m (1 - terminated)`` and
the index ``t + m - 1`` whose next observation is ``s_{t+m}``. The replay buffers compute the same
quantities online, one step at a time (``classic_rl.buffers.NStepWindow``); the tests check that
the two agree.
"""

from __future__ import annotations

import numpy as np


def n_step_returns(
    rewards: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    gamma: float,
    n: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n-step returns of every step of a trajectory that may span several episodes.

    Args:
        rewards: ``(T,)`` reward of step t (the transition s_t -> s_{t+1}).
        terminated: ``(T,)`` True where s_{t+1} is terminal.
        truncated: ``(T,)`` True where the episode was cut after step t (time limit); the last
            step of the array is treated as truncated when it is not terminated.
        gamma: discount factor.
        n: number of rewards summed before bootstrapping (n = 1 is the one-step TD target).

    Returns:
        ``(returns, discounts, last)``: ``returns[t] = G_t^(n)``, ``discounts[t] = gamma^m`` or 0
        when the episode terminated inside the window, ``last[t] = t + m - 1`` (bootstrap from
        the next observation of step ``last[t]``).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rewards = np.asarray(rewards, dtype=np.float64)
    terminated = np.asarray(terminated, dtype=bool)
    truncated = np.asarray(truncated, dtype=bool).copy()
    T = len(rewards)
    if T:
        truncated[-1] |= not terminated[-1]
    ended = terminated | truncated
    returns = np.zeros(T)
    discounts = np.ones(T)
    last = np.arange(T)
    alive = np.ones(T, dtype=bool)  # window of step t still open at offset k
    idx = np.arange(T)
    for k in range(n):
        j = idx + k
        alive &= j < T
        jj = np.minimum(j, T - 1)
        returns += np.where(alive, discounts * rewards[jj], 0.0)
        discounts = np.where(alive, discounts * gamma, discounts)
        last = np.where(alive, jj, last)
        stop = alive & ended[jj]
        discounts = np.where(stop & terminated[jj], 0.0, discounts)
        alive &= ~stop
    return returns, discounts, last
