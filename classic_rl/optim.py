"""Kept so that ``from classic_rl.optim import FlatAdam`` still works: the optimizer lives in
:mod:`classic_rl.fused.adam` with the rest of the fused update backend."""

from classic_rl.fused.adam import FlatAdam, make_adam

__all__ = ["FlatAdam", "make_adam"]
