"""DDPG (Lillicrap et al., 2016): a deterministic actor ``mu(s)`` and a critic ``Q(s, a)``.

The update (one screen; actions normalised to [-1, 1])::

    a'        = mu'(s')  (+ clip(N(0, target_policy_noise), -noise_clip, noise_clip), clipped)  TD3
    td_target = r + discount * min_k Q'_k(s', a')              one critic for DDPG, twins for TD3
    critic_loss = sum_k mean (Q_k(s, a) - td_target)^2
    every policy_delay critic updates:                          1 for DDPG, 2 for TD3
        actor_loss = -mean Q_1(s, mu(s))
        theta' <- (1 - tau) theta' + tau theta                  (actor and critic targets)

:meth:`DDPG.autograd_update` is the definition. With ``update_backend: fused`` (the default) the
agent runs :class:`classic_rl.fused.updates.FusedDDPGUpdate` instead: the same update with the
gradients written out by hand, equal up to float rounding (its speed: ``docs/benchmarks.md``).

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
from classic_rl.buffers import Batch
from classic_rl.fused import DEFAULT_UPDATE_BACKEND, resolve_update_backend, select_update
from classic_rl.fused.updates import FusedDDPGUpdate
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
    update_backend: str = DEFAULT_UPDATE_BACKEND
    """``fused`` (gradients by hand and a bare fused-Adam step, :mod:`classic_rl.fused`) or ``autograd``
    (the plain torch update): the same numbers up to float rounding; see docs/benchmarks.md for the speed."""
    analytic_grad: bool | None = None
    """Deprecated alias of ``update_backend`` (true = fused, false = autograd)."""

    def validate(self) -> None:
        super().validate()
        resolve_update_backend(self)
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
        backend = resolve_update_backend(cfg)
        actor = mlp(self.obs_dim, cfg.hidden, self.act_dim)
        self.actor, self.actor_target = online_and_target(actor, cfg.learning_rate, backend)
        critic = QEnsemble(cfg.n_critics, self.obs_dim, self.act_dim, cfg.hidden)
        self.critic, self.critic_target = online_and_target(critic, cfg.learning_rate, backend)
        self.noises = [
            make_noise(cfg.noise_type, self.act_dim, cfg.noise_std, self.rng, cfg.ou_theta, cfg.ou_dt)
            for _ in range(self.n_envs)
        ]
        self.critic_updates = 0
        self.actor_numpy = NumpyMLP(self.actor.module)
        self.update = select_update(backend, self.autograd_update, fused=lambda: FusedDDPGUpdate(self))

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
        """One update by the backend chosen in :meth:`build` (:meth:`autograd_update` is the definition)."""
        return self.update(batch)

    def autograd_update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The update of the module docstring, with autograd."""
        cfg = self.config
        obs = batch.obs
        with torch.no_grad():
            td_target = td3_target(
                batch.next_obs, batch.rewards, batch.discounts, partial(run_mlp, self.actor_target.module),
                self.critic_target.module, cfg.target_policy_noise, cfg.target_noise_clip,
            )
        q = self.critic.module(obs, self.normalize_actions(batch.actions))  # (n_critics, B)
        critic_loss = weighted_mean((q - td_target).pow(2).sum(0), batch.weights)
        self.critic.step(critic_loss)
        self.critic_updates += 1
        stats = {"critic_loss": critic_loss.detach(), "td_error": (q[0] - td_target).detach().abs()}
        if self.critic_updates % cfg.policy_delay == 0:
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
