"""Schedules for epsilon (exploration) and alpha (step size): a value as a function of time.

Each schedule is a small dataclass called with the episode (or step) index t = 0, 1, 2, ...:

    ConstantSchedule(v)(t)                         = v
    LinearSchedule(start, end, duration)(t)        = start + (end - start) * min(t / duration, 1)
    ExponentialSchedule(start, end, decay)(t)      = max(end, start * decay**t)   (end <= start)

The TD control functions call them once per episode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Schedule = Callable[[int], float]


@dataclass(frozen=True)
class ConstantSchedule:
    value: float

    def __call__(self, t: int) -> float:
        return self.value


@dataclass(frozen=True)
class LinearSchedule:
    """Linear interpolation from ``start`` to ``end`` over ``duration`` episodes (or steps), then flat."""

    start: float
    end: float
    duration: int

    def __post_init__(self) -> None:
        if self.duration <= 0:
            raise ValueError(f"LinearSchedule.duration must be > 0, got {self.duration}")

    def __call__(self, t: int) -> float:
        frac = min(max(t, 0) / self.duration, 1.0)
        return self.start + (self.end - self.start) * frac


@dataclass(frozen=True)
class ExponentialSchedule:
    """Multiply by ``decay`` each episode (or step), never going below ``end``."""

    start: float
    end: float
    decay: float

    def __post_init__(self) -> None:
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"ExponentialSchedule.decay must be in (0, 1], got {self.decay}")
        if self.end > self.start:
            raise ValueError(f"ExponentialSchedule decays: end ({self.end}) must be <= start ({self.start})")

    def __call__(self, t: int) -> float:
        return max(self.end, self.start * self.decay ** max(t, 0))


def as_schedule(value: float | Schedule, name: str, low: float = 0.0, high: float = 1.0) -> Schedule:
    """Wrap a number as a ConstantSchedule (checking ``low <= value <= high``); pass callables through."""
    if callable(value):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a number or a schedule (callable t -> value), got {value!r}"
        ) from None
    if not low <= number <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {number}")
    return ConstantSchedule(number)
