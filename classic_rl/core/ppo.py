"""Compatibility names for PPO's math.

The definitions live in :mod:`classic_rl.core.advantages` (``gae``, group and leave-one-out
advantages) and :mod:`classic_rl.core.losses` (clipped surrogate, value loss, KL estimators, masked
statistics); this module re-exports the names it used to define so old imports keep working. The
loops that apply them (epochs x minibatches, the optimizer step) belong to each trainer:
``classic_rl/agents/ppo.py`` for the gym agents, ``rlhf/ppo.py``, ``grpo.py`` and ``rloo.py`` for LMs.
"""

from __future__ import annotations

from classic_rl.core.advantages import gae
from classic_rl.core.losses import (
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    value_loss,
)

__all__ = [
    "gae",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "policy_loss",
    "value_loss",
]
