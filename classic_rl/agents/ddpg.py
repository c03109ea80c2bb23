"""DDPG (Lillicrap et al., 2016): a deterministic actor ``mu(s)`` and a critic ``Q(s, a)``.

The update (one screen; actions normalised to [-1, 1])::

    a'        = mu'(s')  (+ clip(N(0, target_policy_noise), -noise_clip, noise_clip), clipped)  TD3
    td_target = r + discount * min_k Q'_k(s', a')              one critic for DDPG, twins for TD3
    critic_loss = sum_k mean (Q_k(s, a) - td_target)^2
    every policy_delay critic updates:                          1 for DDPG, 2 for TD3
        actor_loss = -mean Q_1(s, mu(s))
        theta' <- (1 - tau) theta' + tau theta                  (actor and critic targets)

By default (``analytic_grad=True``) the gradients of both losses are written out by hand
(:mod:`classic_rl.agents.continuous_backprop`): the same numbers as the autograd update below
up to float rounding, in less CPU time (``scripts/bench_update.py`` measures it).

Exploration adds Gaussian or Ornstein-Uhlenbeck noise (:mod:`classic_rl.noise`) to ``mu(s)``.
TD3 (:mod:`classic_rl.agents.td3`) is this class with twin critics, the delay and target
smoothing switched on, as Stable-Baselines3's DDPG is its TD3 with them off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from classic_rl.agents.base import register
from classic_rl.agents.continuous import (
    ContinuousAgent,
    ContinuousConfig,
    NumpyMLP,
    QEnsemble,
    online_and_target,
    weighted_mean,
)
from classic_rl.agents.continuous_backprop import CriticStacks, critic_regression_, tanh_actor_gradient_
from classic_rl.buffers import Batch
from classic_rl.mlp_backprop import DenseStack
from classic_rl.nets import mlp
from classic_rl.noise import NOISE_TYPES, make_noise
from classic_rl.policies import run_mlp


@dataclass
class DDPGConfig(ContinuousConfig):
    noise_type: str = "normal"
    """Exploration noise: normal, ornstein-uhlenbeck or none."""
    noise_std: float = 0.1
    """Standard deviation of the exploration noise (sigma of the OU process), in [-1, 1] action units."""
    ou_theta: float = 0.15
    ou_dt: float = 1e-2
    n_critics: int = 1
    """Critics; the target takes the minimum over them (2 = TD3's clipped double Q)."""
    policy_delay: int = 1
    """Critic updates per actor (and target) update."""
    target_policy_noise: float = 0.0
    """Std of the noise added to the target action (TD3's target policy smoothing; 0 = off)."""
    target_noise_clip: float = 0.5
    analytic_grad: bool = True
    """Compute the gradients by hand (:mod:`classic_rl.agents.continuous_backprop`: the same numbers
    up to float rounding, in less time); False runs the plain autograd update."""

    def validate(self) -> None:
        super().validate()
        if self.noise_type.lower().replace("_", "-") not in (*NOISE_TYPES, "ou", "gaussian"):
            raise ValueError(f"noise_type must be one of {', '.join(NOISE_TYPES)}; got {self.noise_type!r}")
        if self.n_critics < 1 or self.policy_delay < 1:
            raise ValueError(f"n_critics and policy_delay must be >= 1, got {self.n_critics}, {self.policy_delay}")
        if self.noise_std < 0 or self.target_policy_noise < 0 or self.target_noise_clip < 0:
            raise ValueError("noise_std, target_policy_noise and target_noise_clip must be >= 0")


def td3_target(
    next_obs: torch.Tensor, rewards: torch.Tensor, discounts: torch.Tensor,
    actor_target: Callable[[torch.Tensor], torch.Tensor], critic_target: Callable[..., torch.Tensor],
    target_policy_noise: float, noise_clip: float,
) -> torch.Tensor:
    """``r + discount * min_k Q'_k(s', clip(mu'(s') + clip(eps, -c, c), -1, 1))``, ``eps ~ N(0, sigma^2)``.

    ``actor_target``: ``s -> z`` (the pre-tanh output), ``critic_target``: ``(s, u) -> Q'`` (n, B).
    """
    next_u = torch.tanh(actor_target(next_obs))
    if target_policy_noise > 0:
        noise = (torch.randn_like(next_u) * target_policy_noise).clamp_(-noise_clip, noise_clip)
        next_u = (next_u + noise).clamp_(-1.0, 1.0)
    q_next = critic_target(next_obs, next_u).min(dim=0).values
    return rewards + discounts * q_next


@register
class DDPG(ContinuousAgent):
    """Deep Deterministic Policy Gradient (see the module docstring)."""

    algo = "ddpg"
    Config = DDPGConfig

    def build(self) -> None:
        cfg = self.config
        self.actor, self.actor_target = online_and_target(mlp(self.obs_dim, cfg.hidden, self.act_dim), cfg.learning_rate)
        critic = QEnsemble(cfg.n_critics, self.obs_dim, self.act_dim, cfg.hidden)
        self.critic, self.critic_target = online_and_target(critic, cfg.learning_rate)
        self.noises = [
            make_noise(cfg.noise_type, self.act_dim, cfg.noise_std, self.rng, cfg.ou_theta, cfg.ou_dt)
            for _ in range(self.n_envs)
        ]
        self.critic_updates = 0
        self.actor_numpy = NumpyMLP(self.actor.module)
        self.by_hand = cfg.analytic_grad
        if self.by_hand:  # views of the flat parameters and gradients made above
            self.actor_stack = DenseStack.from_sequential(self.actor.module)
            self.actor_target_stack = DenseStack.from_sequential(self.actor_target.module)
            self.critic_stacks = CriticStacks(self.critic.module)
            self.critic_target_stacks = CriticStacks(self.critic_target.module)

    # ------------------------------------------------------------------ acting
    def policy_actions(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        u = np.tanh(self.actor_numpy(obs))
        if explore:
            for i, noise in enumerate(self.noises):
                if self.runner.lengths[i] == 0:  # a new episode: restart correlated noise
                    noise.reset()
            u = np.clip(u + np.stack([noise() for noise in self.noises[: len(u)]]), -1.0, 1.0)
        return u

    # ------------------------------------------------------------------ learning
    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self.by_hand:  # the same update, gradients written out (classic_rl.agents.continuous_backprop)
            with torch.no_grad():
                return self._update(batch)
        return self._update(batch)

    def _update(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        obs = batch.obs
        with torch.no_grad():
            td_target = td3_target(
                batch.next_obs, batch.rewards, batch.discounts,
                self.actor_target_stack.forward if self.by_hand else partial(run_mlp, self.actor_target.module),
                self.critic_target_stacks.values if self.by_hand else self.critic_target.module,
                cfg.target_policy_noise, cfg.target_noise_clip,
            )
        actions = self.normalize_actions(batch.actions)
        if self.by_hand:
            critic_loss, q = critic_regression_(self.critic_stacks, obs, actions, td_target, batch.weights)
            self.critic.optimizer.step()
        else:
            q = self.critic.module(obs, actions)  # (n_critics, B)
            critic_loss = weighted_mean((q - td_target).pow(2).sum(0), batch.weights)
            self.critic.step(critic_loss)
        self.critic_updates += 1
        stats = {"critic_loss": critic_loss.detach(), "td_error": (q[0] - td_target).detach().abs()}
        if self.critic_updates % cfg.policy_delay == 0:
            if self.by_hand:
                actor_loss = tanh_actor_gradient_(self.actor_stack, self.critic_stacks, obs)
                self.actor.optimizer.step()
            else:
                critic = self.critic.module
                critic.requires_grad_(False)  # the actor's gradient flows through Q, not into it
                actor_loss = -critic(obs, torch.tanh(run_mlp(self.actor.module, obs)), members=slice(0, 1)).mean()
                critic.requires_grad_(True)
                self.actor.step(actor_loss)
            self.critic_target.polyak_(self.critic, cfg.tau)
            self.actor_target.polyak_(self.actor, cfg.tau)
            stats["actor_loss"] = actor_loss.detach()
        return stats

    # ------------------------------------------------------------------ saving
    def networks(self) -> dict[str, torch.nn.Module]:
        return {"actor": self.actor.module, "critic": self.critic.module,
                "actor_target": self.actor_target.module, "critic_target": self.critic_target.module}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor.optimizer, "critic": self.critic.optimizer}

    def extra_state(self) -> dict:
        noise = [n.x.tolist() for n in self.noises if hasattr(n, "x")]
        return {**super().extra_state(), "critic_updates": self.critic_updates, "ou_state": noise}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.critic_updates = int(state.get("critic_updates", 0))
        for n, x in zip([n for n in self.noises if hasattr(n, "x")], state.get("ou_state", [])):
            n.x = np.asarray(x, dtype=np.float64)
