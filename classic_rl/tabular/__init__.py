"""Tabular RL: dynamic programming with a known model, model-free prediction and control."""

from classic_rl.tabular.dp import (
    ConvergenceError,
    greedy_policy,
    policy_evaluation,
    policy_iteration,
    q_from_v,
    value_iteration,
)
from classic_rl.tabular.model import TabularModel

__all__ = [
    "ConvergenceError",
    "TabularModel",
    "greedy_policy",
    "policy_evaluation",
    "policy_iteration",
    "q_from_v",
    "value_iteration",
]
