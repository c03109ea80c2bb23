"""Tabular RL: dynamic programming with a known model, model-free prediction and control.

| function | module | method |
|---|---|---|
| ``policy_evaluation``, ``policy_iteration``, ``value_iteration``, ``q_from_v`` | dp.py | dynamic programming on ``P`` |
| ``mc_prediction``, ``td_prediction``, ``n_step_td_prediction`` | prediction.py | V_pi from episodes |
| ``sarsa``, ``q_learning``, ``expected_sarsa`` (``td_control``) | control.py | Q from episodes |
| ``ConstantSchedule``, ``LinearSchedule``, ``ExponentialSchedule`` | schedules.py | epsilon / alpha decay |
"""

from classic_rl.tabular.control import (
    TDControlResult,
    epsilon_greedy,
    expected_sarsa,
    q_learning,
    sarsa,
    td_control,
)
from classic_rl.tabular.dp import (
    ConvergenceError,
    greedy_policy,
    policy_evaluation,
    policy_iteration,
    q_from_v,
    value_iteration,
)
from classic_rl.tabular.model import TabularModel
from classic_rl.tabular.prediction import mc_prediction, n_step_td_prediction, rms_error, td_prediction
from classic_rl.tabular.schedules import ConstantSchedule, ExponentialSchedule, LinearSchedule

__all__ = [
    "ConstantSchedule",
    "ConvergenceError",
    "ExponentialSchedule",
    "LinearSchedule",
    "TDControlResult",
    "TabularModel",
    "epsilon_greedy",
    "expected_sarsa",
    "greedy_policy",
    "mc_prediction",
    "n_step_td_prediction",
    "policy_evaluation",
    "policy_iteration",
    "q_from_v",
    "q_learning",
    "rms_error",
    "sarsa",
    "td_control",
    "td_prediction",
    "value_iteration",
]
