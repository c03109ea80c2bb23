"""TD3 (Fujimoto et al., 2018): DDPG with three fixes against Q overestimation.

1. Clipped double Q: two critics, the target takes ``min(Q'_1, Q'_2)``.
2. Delayed policy updates: the actor and the targets move every ``policy_delay`` (2) critic updates.
3. Target policy smoothing: ``a' = clip(mu'(s') + clip(N(0, 0.2^2), -0.5, 0.5), -1, 1)``.

The update is :class:`~classic_rl.agents.ddpg.DDPG`'s (see :func:`~classic_rl.agents.ddpg.td3_target`);
only the defaults differ.
"""

from __future__ import annotations

from dataclasses import dataclass

from classic_rl.agents.base import register
from classic_rl.agents.ddpg import DDPG, DDPGConfig


@dataclass
class TD3Config(DDPGConfig):
    n_critics: int = 2
    policy_delay: int = 2
    target_policy_noise: float = 0.2
    target_noise_clip: float = 0.5


@register
class TD3(DDPG):
    """Twin Delayed DDPG."""

    algo = "td3"
    Config = TD3Config
