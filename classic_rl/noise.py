"""Exploration noise for deterministic continuous-action policies (DDPG, TD3, D4PG).

Two processes, both added to the actor's action ``a = mu(s) + eps`` and then clipped to the
action bounds:

* :class:`GaussianNoise`: ``eps ~ N(0, sigma^2)`` independently at every step (TD3's choice).
* :class:`OrnsteinUhlenbeckNoise`: temporally correlated noise, the Euler discretisation of
  ``dx = theta (mu - x) dt + sigma dW``::

      x_{t+1} = x_t + theta (mu - x_t) dt + sigma sqrt(dt) N(0, 1)

  It reverts to ``mu`` at rate ``theta`` with stationary variance
  ``sigma^2 dt / (1 - (1 - theta dt)^2)`` (``-> sigma^2 / (2 theta)`` as ``dt -> 0``); the
  correlation helps momentum tasks such as MountainCarContinuous (the original DDPG's choice).

Every process draws from its own ``numpy.random.Generator`` so runs are reproducible.
"""

from __future__ import annotations

import numpy as np

NOISE_TYPES = ("normal", "ornstein-uhlenbeck", "none")


class ActionNoise:
    """Base: ``noise()`` returns one sample of shape ``size``; ``reset()`` starts a new episode."""

    def __init__(self, size: int | tuple[int, ...], rng: np.random.Generator | None = None) -> None:
        self.size = (size,) if isinstance(size, int) else tuple(size)
        self.rng = rng if rng is not None else np.random.default_rng()

    def __call__(self) -> np.ndarray:
        raise NotImplementedError

    def reset(self) -> None:
        """Called at the start of every episode."""


class NoNoise(ActionNoise):
    def __call__(self) -> np.ndarray:
        return np.zeros(self.size)


class GaussianNoise(ActionNoise):
    """Independent ``N(mean, sigma^2)`` per step."""

    def __init__(
        self, size: int | tuple[int, ...], sigma: float | np.ndarray = 0.1, mean: float | np.ndarray = 0.0,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__(size, rng)
        self.sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), self.size)
        self.mean = np.broadcast_to(np.asarray(mean, dtype=np.float64), self.size)

    def __call__(self) -> np.ndarray:
        return self.mean + self.sigma * self.rng.standard_normal(self.size)


class OrnsteinUhlenbeckNoise(ActionNoise):
    """Mean-reverting Ornstein-Uhlenbeck process (see the module docstring for the update)."""

    def __init__(
        self, size: int | tuple[int, ...], sigma: float | np.ndarray = 0.2, theta: float = 0.15,
        dt: float = 1e-2, mean: float | np.ndarray = 0.0, x0: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__(size, rng)
        if theta <= 0 or dt <= 0 or theta * dt >= 2:
            raise ValueError(f"OU noise needs theta > 0, dt > 0 and theta*dt < 2, got theta={theta}, dt={dt}")
        self.sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), self.size)
        self.mean = np.broadcast_to(np.asarray(mean, dtype=np.float64), self.size)
        self.theta = float(theta)
        self.dt = float(dt)
        self.x0 = None if x0 is None else np.broadcast_to(np.asarray(x0, dtype=np.float64), self.size).copy()
        self.reset()

    def __call__(self) -> np.ndarray:
        self.x = (
            self.x + self.theta * (self.mean - self.x) * self.dt
            + self.sigma * np.sqrt(self.dt) * self.rng.standard_normal(self.size)
        )
        return self.x.copy()

    def reset(self) -> None:
        self.x = self.x0.copy() if self.x0 is not None else np.zeros(self.size)

    def stationary_variance(self) -> np.ndarray:
        """Variance the discretised process settles to: ``sigma^2 dt / (1 - (1 - theta dt)^2)``."""
        decay = 1.0 - self.theta * self.dt
        return self.sigma**2 * self.dt / (1.0 - decay**2)


def make_noise(
    kind: str, size: int, std: float | np.ndarray, rng: np.random.Generator | None = None,
    ou_theta: float = 0.15, ou_dt: float = 1e-2,
) -> ActionNoise:
    """Build exploration noise by name: ``normal``, ``ornstein-uhlenbeck`` (alias ``ou``) or ``none``.

    ``std`` is the per-step standard deviation for ``normal`` and the ``sigma`` of the OU process.
    """
    name = kind.lower().replace("_", "-")
    if name in ("normal", "gaussian"):
        return GaussianNoise(size, sigma=std, rng=rng)
    if name in ("ornstein-uhlenbeck", "ou"):
        return OrnsteinUhlenbeckNoise(size, sigma=std, theta=ou_theta, dt=ou_dt, rng=rng)
    if name == "none":
        return NoNoise(size, rng)
    raise ValueError(f"Unknown noise_type {kind!r}; valid: {', '.join(NOISE_TYPES)}")
