"""Actor-critic with n-step targets (``actor_critic``) and its synchronous batched form (``a2c``).

One update from a rollout of ``n_steps`` steps in each of ``num_envs`` environments::

    R_t = r_t + gamma r_{t+1} + ... + gamma^{n-1} r_{t+n-1} + gamma^n V(s_{t+n})   (n-step target,
          cut at episode ends; GAE(lambda) when gae_lambda < 1)
    A_t = R_t - V(s_t)                                                             (advantage)
    loss = -mean(log pi(a_t|s_t) A_t) + vf_coef * mean((V(s_t) - R_t)^2) - ent_coef * H[pi]

The value term is SB3's A2C loss (a plain MSE, no 1/2), so ``vf_coef`` means what it means there.

``actor_critic`` is the course's one-environment version (Adam); ``a2c`` is the same update on a
vector of environments with RMSprop, as in Mnih et al. (2016) and SB3. :func:`actor_critic_loss`
is also the loss of every ``a3c`` worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from classic_rl.agents.base import register
from classic_rl.agents.on_policy import OnPolicyAgent, OnPolicyConfig, Rollout, compute_gae
from classic_rl.core.losses import masked_mean, masked_whiten, value_mse
from classic_rl.policies import ActorCritic

__all__ = ["A2C", "A2CConfig", "ActorCriticAgent", "ActorCriticConfig", "actor_critic_loss"]


@dataclass
class ActorCriticConfig(OnPolicyConfig):
    """Settings of ``actor_critic`` (one environment, Adam)."""

    n_steps: int = 8
    """Steps per environment per update: the n of the n-step targets."""
    learning_rate: float = 1e-3


@dataclass
class A2CConfig(ActorCriticConfig):
    """Settings of ``a2c`` (SB3's defaults: 8-16 envs, 5 steps, RMSprop 7e-4)."""

    num_envs: int = 8
    n_steps: int = 5
    learning_rate: float = 7e-4
    optimizer: str = "rmsprop"


def actor_critic_loss(
    policy: ActorCritic, rollout: Rollout, config: OnPolicyConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """The advantage actor-critic loss of a rollout (see the module docstring) and its parts."""
    advantages, returns = compute_gae(rollout, config.gamma, config.gae_lambda)
    obs, actions = rollout.obs.flatten(0, 1), rollout.actions.flatten(0, 1)
    adv, ret, mask = advantages.flatten(), returns.flatten(), rollout.loss_mask
    if config.normalize_advantage and adv.numel() > 1:
        adv = masked_whiten(adv, mask)
    dist, values = policy(obs)
    pg_loss = -masked_mean(dist.log_prob(actions) * adv, mask)
    v_loss, _ = value_mse(values, values.detach(), ret, mask, None)
    loss = pg_loss + config.vf_coef * v_loss
    parts = {"loss/policy": pg_loss, "loss/value": v_loss}
    if config.ent_coef != 0.0:  # the entropy graph is a noticeable share of a small update
        parts["loss/entropy"] = masked_mean(dist.entropy(), mask)
        loss = loss - config.ent_coef * parts["loss/entropy"]
    return loss, parts


def gradient_step(
    loss: Tensor,
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    max_grad_norm: float | None,
) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()


@register
class ActorCriticAgent(OnPolicyAgent):
    """Advantage actor-critic with n-step targets (see the module docstring)."""

    algo = "actor_critic"
    Config = ActorCriticConfig
    default_steps = 100_000

    use_flat_parameters = True

    def update(self, rollout: Rollout, progress_remaining: float) -> dict[str, float]:
        loss, parts = actor_critic_loss(self.policy, rollout, self.config)
        self.zero_grad()
        loss.backward()
        self.clip_grad_norm(self.config.max_grad_norm)
        self._optimizers["optimizer"].step()
        values = torch.stack([v.detach() for v in parts.values()]).tolist()  # one host sync
        return dict(zip(parts, values))


@register
class A2C(ActorCriticAgent):
    """Synchronous advantage actor-critic: the same update over a vector of environments."""

    algo = "a2c"
    Config = A2CConfig
    default_steps = 200_000
