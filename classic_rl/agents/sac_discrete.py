"""Discrete SAC (Christodoulou, 2019, "Soft Actor-Critic for Discrete Action Settings").

SAC (:mod:`classic_rl.agents.sac`) with a categorical policy ``pi(.|s)`` over ``n`` actions and
critics that output ``Q(s, .)`` for every action at once. Expectations over actions are then
sums, computed exactly, so no reparameterisation trick and no sampling in the update::

    V'(s')      = sum_a' pi(a'|s') [min_k Q'_k(s', a') - alpha log pi(a'|s')]
    td_target   = r + discount * V'(s')                     discount = gamma^n (1 - terminated)
    critic_loss = sum_k mean (Q_k(s, a) - td_target)^2
    actor_loss  = mean_s sum_a pi(a|s) [alpha log pi(a|s) - min_k Q_k(s, a)]   (Q held fixed)
    H(s)        = -sum_a pi(a|s) log pi(a|s)
    alpha_loss  = mean log_alpha (H(s) - target_entropy)    target_entropy = scale * log(n)
    theta' <- (1 - tau) theta' + tau theta                  every target_update_interval steps

The temperature setting (``ent_coef``) and its optimizer are SAC's (:func:`~classic_rl.agents.sac.make_temperature`);
as there, alpha's value before this update weighs the update's targets and actor loss. The
training loop, replay (prioritized too) and target updates are the shared off-policy ones.
Exploration samples from ``pi``; greedy acting (evaluation) takes ``argmax_a pi(a|s)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from classic_rl.agents.base import register
from classic_rl.agents.continuous import (
    ContinuousConfig,
    Flat,
    GroupedMLP,
    NumpyMLP,
    online_and_target,
    weighted_mean,
)
from classic_rl.agents.off_policy import OffPolicyAgent
from classic_rl.agents.sac import TemperatureState, make_temperature, parse_ent_coef
from classic_rl.buffers import Batch
from classic_rl.fused import DEFAULT_UPDATE_BACKEND, resolve_update_backend
from classic_rl.nets import mlp
from classic_rl.policies import run_mlp


@dataclass
class SACDiscreteConfig(ContinuousConfig):
    """Discrete-SAC settings: the off-policy actor-critic ones (replay, tau, ``hidden``, learning rate;
    nothing in them is continuous-specific) with SAC's defaults, plus the temperature."""

    learning_rate: float = 3e-4
    """Adam step size of the actor, the critics and the temperature."""
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    n_critics: int = 2
    ent_coef: str = "auto"
    """Temperature alpha: ``auto`` (learned, starting at 1), ``auto_<init>`` or a fixed number (as SAC)."""
    target_entropy_scale: float = 0.89
    """The learned alpha aims for an entropy of ``scale * log(n)`` nats (``log(n)``: the uniform
    policy's). The paper uses 0.98, which keeps the policy close to uniform; 0.89 is CleanRL's
    ``sac_atari`` value."""
    update_backend: str = DEFAULT_UPDATE_BACKEND
    """``fused`` (Adam through :class:`classic_rl.fused.adam.FlatAdam`; the gradients come from autograd:
    there is no hand-written one here) or ``autograd`` (``torch.optim.Adam``): the same numbers."""

    def validate(self) -> None:
        super().validate()
        resolve_update_backend(self)
        parse_ent_coef(self.ent_coef)
        if self.n_critics < 1:
            raise ValueError(f"n_critics must be >= 1, got {self.n_critics}")
        if not 0.0 <= self.target_entropy_scale < 1.0:
            raise ValueError(
                f"target_entropy_scale must be in [0, 1) (a fraction of the uniform policy's entropy log(n)), "
                f"got {self.target_entropy_scale}"
            )


def soft_state_value(q: torch.Tensor, log_pi: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """``V(s) = sum_a pi(a|s) [Q(s, a) - alpha log pi(a|s)]`` for ``q`` and ``log_pi`` of shape (B, n)."""
    return (log_pi.exp() * (q - alpha * log_pi)).sum(dim=-1)


def discrete_actor_loss(log_pi: torch.Tensor, q: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """``mean_s sum_a pi(a|s) [alpha log pi(a|s) - Q(s, a)]``: minimising it moves ``pi`` towards
    ``softmax(Q / alpha)`` (``q`` must carry no gradient; the actor alone is trained here)."""
    return (log_pi.exp() * (alpha * log_pi - q)).sum(dim=-1).mean()


@register
class SACDiscrete(TemperatureState, OffPolicyAgent):
    """Soft Actor-Critic for discrete actions (see the module docstring)."""

    algo = "sac_discrete"
    Config = SACDiscreteConfig
    action_kinds = ("discrete",)
    alternatives = {"continuous": "sac"}
    default_steps = 100_000

    def setup(self) -> None:
        self.config.validate()
        super().setup()
        cfg = self.config
        if not isinstance(self.env.observation_space, gym.spaces.Box | gym.spaces.Discrete):
            raise ValueError(f"sac_discrete needs a Box or Discrete observation space, got {self.env.observation_space}")
        self.obs_dim = int(np.prod(self.obs_shape))
        self.n_actions = int(self.env.action_space.n)
        self.action_start = int(self.env.action_space.start)
        backend = resolve_update_backend(cfg)
        self.policy = Flat(mlp(self.obs_dim, cfg.hidden, self.n_actions), cfg.learning_rate, backend)
        self.policy_numpy = NumpyMLP(self.policy.module)
        critic = GroupedMLP(cfg.n_critics, self.obs_dim, cfg.hidden, self.n_actions)
        self.critic, self.critic_target = online_and_target(critic, cfg.learning_rate, backend)
        self.learn_alpha, self.log_alpha, self.alpha_opt = make_temperature(cfg.ent_coef, cfg.learning_rate, backend)
        self.target_entropy = cfg.target_entropy_scale * math.log(self.n_actions)

    def target_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(self.critic.param, self.critic_target.param)]

    # ------------------------------------------------------------------ acting
    def select_action(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        """Sample ``a ~ pi(.|s)`` (inverse CDF with the agent's generator, so runs replay) or ``argmax pi``."""
        logits = self.policy_numpy(np.asarray(obs, dtype=np.float32).reshape(len(obs), -1))
        if not explore:
            return logits.argmax(axis=1) + self.action_start
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        cdf = np.cumsum(probs, axis=1)
        u = self.rng.random((len(obs), 1)) * cdf[:, -1:]
        return np.minimum((cdf <= u).sum(axis=1), self.n_actions - 1) + self.action_start

    def act(self, obs: Any, deterministic: bool = True) -> int:
        return int(self.select_action(self.encode(obs)[None], explore=not deterministic)[0])

    # ------------------------------------------------------------------ learning
    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        obs = batch.obs.reshape(len(batch.obs), -1)
        next_obs = batch.next_obs.reshape(len(batch.next_obs), -1)
        actions = batch.actions - self.action_start if self.action_start else batch.actions
        alpha = self.log_alpha.detach().exp()  # the value before this step's alpha update
        log_pi = torch.log_softmax(run_mlp(self.policy.module, obs), dim=-1)
        with torch.no_grad():
            next_log_pi = torch.log_softmax(run_mlp(self.policy.module, next_obs), dim=-1)
            q_next = self.critic_target.module(next_obs).min(dim=0).values  # (B, n)
            td_target = batch.rewards + batch.discounts * soft_state_value(q_next, next_log_pi, alpha)
        q_all = self.critic.module(obs)  # (n_critics, B, n)
        index = actions.view(1, -1, 1).expand(q_all.shape[0], -1, 1)
        q = q_all.gather(2, index).squeeze(2)  # (n_critics, B)
        critic_loss = weighted_mean((q - td_target).pow(2).sum(0), batch.weights)
        self.critic.step(critic_loss)

        with torch.no_grad():  # the updated critics, as SAC's actor step sees them
            q_pi = self.critic.module(obs).min(dim=0).values
        actor_loss = discrete_actor_loss(log_pi, q_pi, alpha)
        entropy = -(log_pi.exp() * log_pi).sum(dim=-1).detach()
        # E[log pi] = -entropy: alpha_loss = mean log_alpha (entropy - target_entropy)
        alpha_loss = self.step_policy_and_temperature(self.policy, actor_loss, self.target_entropy - entropy)
        stats = dict(critic_loss=critic_loss.detach(), actor_loss=actor_loss.detach(), alpha=alpha,
                     entropy=entropy.mean(), td_error=(q[0] - td_target).detach().abs())
        if alpha_loss is not None:
            stats["alpha_loss"] = alpha_loss.detach()
        return stats

    # ------------------------------------------------------------------ saving
    def networks(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy.module, "critic": self.critic.module, "critic_target": self.critic_target.module}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.with_alpha_optimizer({"policy": self.policy.optimizer, "critic": self.critic.optimizer})
