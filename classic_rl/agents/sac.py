"""SAC (Haarnoja et al., 2018): maximum-entropy actor-critic with a squashed Gaussian policy.

The policy samples ``u ~ N(mu(s), sigma(s)^2)`` and acts ``a = tanh(u)`` (then rescaled to the
bounds). By the change of variables its log-density is
``log pi(a|s) = log N(u) - sum_d log(1 - tanh(u_d)^2)`` (:func:`squash_with_log_prob`, with the
stable form of the correction). The update (one screen)::

    a', logp' ~ pi(.|s')
    td_target  = r + discount * (min_k Q'_k(s', a') - alpha logp')
    critic_loss = sum_k mean (Q_k(s, a) - td_target)^2
    a_pi, logp ~ pi(.|s)                              (reparameterised: gradients reach mu, sigma)
    actor_loss  = mean (alpha logp - min_k Q_k(s, a_pi))
    alpha_loss  = -mean log_alpha (logp + target_entropy)   target_entropy = -dim(A) by default
    theta' <- (1 - tau) theta' + tau theta

:meth:`SAC.autograd_update` is the definition. With ``update_backend: fused`` (the default) the
agent runs :class:`classic_rl.fused.updates.FusedSACUpdate` instead: the same update with the
gradients written out by hand, equal up to float rounding (its speed: ``docs/benchmarks.md``).

As in Stable-Baselines3, alpha is updated first and its value before the step weighs this
update's targets and actor loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from classic_rl.agents.base import register
from classic_rl.agents.continuous import (
    ContinuousAgent,
    ContinuousConfig,
    Flat,
    NumpyMLP,
    QEnsemble,
    online_and_target,
    weighted_mean,
)
from classic_rl.buffers import Batch
from classic_rl.fused import DEFAULT_UPDATE_BACKEND, resolve_update_backend, select_update
from classic_rl.fused.adam import make_adam
from classic_rl.fused.updates import FusedSACUpdate
from classic_rl.nets import mlp, zero_flat_grad_
from classic_rl.policies import LOG_STD_MAX, LOG_STD_MIN, run_mlp


@dataclass
class SACConfig(ContinuousConfig):
    learning_rate: float = 3e-4
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    n_critics: int = 2
    ent_coef: str = "auto"
    """Entropy temperature alpha: ``auto`` (learned, starting at 1), ``auto_0.1`` (learned, starting
    at 0.1) or a fixed number such as ``0.2``."""
    target_entropy: float | None = None
    """Entropy the learned alpha aims for; None means -dim(A)."""
    update_backend: str = DEFAULT_UPDATE_BACKEND
    """``fused`` (gradients by hand and a bare fused-Adam step, :mod:`classic_rl.fused`) or ``autograd``
    (the plain torch update): the same numbers up to float rounding; see docs/benchmarks.md for the speed."""
    analytic_grad: bool | None = None
    """Deprecated alias of ``update_backend`` (true = fused, false = autograd)."""

    def validate(self) -> None:
        super().validate()
        resolve_update_backend(self)
        parse_ent_coef(self.ent_coef)
        if self.n_critics < 1:
            raise ValueError(f"n_critics must be >= 1, got {self.n_critics}")


def parse_ent_coef(value: str) -> tuple[bool, float]:
    """``"auto"`` -> (learned, 1.0); ``"auto_0.1"`` -> (learned, 0.1); ``"0.2"`` -> (fixed, 0.2)."""
    text = str(value).strip().lower()
    try:
        if text == "auto":
            return True, 1.0
        if text.startswith("auto_"):
            init = float(text[5:])
            learned = True
        else:
            init, learned = float(text), False
    except ValueError:
        raise ValueError(f"ent_coef must be 'auto', 'auto_<init>' or a number, got {value!r}") from None
    if init <= 0:
        raise ValueError(f"ent_coef must be positive, got {value!r}")
    return learned, init


def make_temperature(
    ent_coef: str, lr: float, backend: str = "fused"
) -> tuple[bool, torch.Tensor, torch.optim.Optimizer | None]:
    """``(learned, log_alpha, optimizer)`` for an ``ent_coef`` setting (see :func:`parse_ent_coef`).

    alpha is learned through ``log_alpha`` (so it stays positive) by Adam at ``lr``; a fixed
    alpha gets no optimizer; ``backend`` picks the Adam class (:func:`classic_rl.fused.adam.make_adam`). Shared by :mod:`classic_rl.agents.sac` and :mod:`classic_rl.agents.sac_discrete`.
    """
    learned, init = parse_ent_coef(ent_coef)
    log_alpha = torch.tensor([np.log(init)], dtype=torch.float32, requires_grad=learned)
    optimizer = make_adam(log_alpha, lr=lr, backend=backend) if learned else None
    return learned, log_alpha, optimizer


class TemperatureState:
    """Mixin for agents holding ``log_alpha`` and ``alpha_opt`` (from :func:`make_temperature`): the
    temperature and its optimizer are saved, restored and resumed with the agent's other state."""

    log_alpha: torch.Tensor
    alpha_opt: torch.optim.Optimizer | None
    learn_alpha: bool

    def with_alpha_optimizer(self, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.optim.Optimizer]:
        return optimizers if self.alpha_opt is None else {**optimizers, "alpha": self.alpha_opt}

    def step_policy_and_temperature(
        self, policy: Flat, actor_loss: torch.Tensor, log_prob_gap: torch.Tensor
    ) -> torch.Tensor | None:
        """Step the policy on ``actor_loss`` and, when alpha is learned, the temperature on
        ``alpha_loss = -mean log_alpha (log pi + target_entropy)`` (``log_prob_gap``, per sample, no
        gradient); returns ``alpha_loss`` or None. ``log_alpha`` appears only in ``alpha_loss`` and the
        policy only in ``actor_loss``, so one backward pass of their sum gives both gradients."""
        loss, alpha_loss = actor_loss, None
        if self.learn_alpha:
            alpha_loss = -(self.log_alpha * log_prob_gap).mean()
            loss = loss + alpha_loss
            self.log_alpha.grad = None
        zero_flat_grad_(policy.param)
        loss.backward()
        policy.optimizer.step()
        if self.learn_alpha:
            self.alpha_opt.step()
        return alpha_loss

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().state_tensors(), "log_alpha": self.log_alpha.detach().clone()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_state_tensors(tensors)
        with torch.no_grad():
            self.log_alpha.copy_(tensors["log_alpha"])


_LOG_PROB_CONST = 0.5 * math.log(2.0 * math.pi) + 2.0 * math.log(2.0)


def squash_with_log_prob(
    mean: torch.Tensor, log_std: torch.Tensor, eps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``a = tanh(u)``, ``u = mean + exp(log_std) * eps``, and ``log pi(a)`` by the change of variables.

    ``log pi(a) = log N(u; mean, std) - sum_d log(1 - tanh(u_d)^2)`` where ``(u - mean) / std = eps``
    exactly and ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))`` (no ``1 - tanh^2`` that
    rounds to 0), so per dimension: ``-eps^2 / 2 - log_std + 2 (u + softplus(-2u)) - log(2 pi) / 2 - 2 log 2``.
    Written out instead of through a distribution object: a third of the tensor ops, which is
    what an update of small networks costs on a CPU.
    """
    u = torch.addcmul(mean, log_std.exp(), eps)
    per_dim = 2.0 * (u + F.softplus(-2.0 * u)) - log_std - 0.5 * eps.square()
    return torch.tanh(u), per_dim.sum(-1) - mean.shape[-1] * _LOG_PROB_CONST


def squashed_sample(out: torch.Tensor, act_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a, log pi(a), log_std, eps)`` from the policy net's output ``[mu, log_sigma_raw]`` (B, 2 act_dim)."""
    mean, log_std = out.split(act_dim, dim=-1)
    log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
    eps = torch.randn_like(mean)
    a, logp = squash_with_log_prob(mean, log_std, eps)
    return a, logp, log_std, eps


class SquashedGaussianActor(torch.nn.Module):
    """``s -> (mu, log_sigma)`` of a tanh-squashed Gaussian, log-std clamped to [-20, 2] (SB3's range)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int]) -> None:
        super().__init__()
        self.net = mlp(obs_dim, hidden, 2 * act_dim)
        self.act_dim = act_dim

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = run_mlp(self.net, obs).split(self.act_dim, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised ``(a, log pi(a|s))`` with ``a`` in [-1, 1]: gradients reach mu and sigma."""
        a, logp, _, _ = squashed_sample(run_mlp(self.net, obs), self.act_dim)
        return a, logp


@register
class SAC(TemperatureState, ContinuousAgent):
    """Soft Actor-Critic with twin critics and automatic temperature (see the module docstring)."""

    algo = "sac"
    Config = SACConfig
    alternatives = {"discrete": "sac_discrete (SAC with a categorical policy)"}

    def build(self) -> None:
        cfg = self.config
        backend = resolve_update_backend(cfg)
        self.policy = SquashedGaussianActor(self.obs_dim, self.act_dim, cfg.hidden)
        self.policy_flat = Flat(self.policy, cfg.learning_rate, backend)
        self.policy_numpy = NumpyMLP(self.policy.net)
        critic = QEnsemble(cfg.n_critics, self.obs_dim, self.act_dim, cfg.hidden)
        self.critic, self.critic_target = online_and_target(critic, cfg.learning_rate, backend)
        self.learn_alpha, self.log_alpha, self.alpha_opt = make_temperature(cfg.ent_coef, cfg.learning_rate, backend)
        self.target_entropy = float(cfg.target_entropy) if cfg.target_entropy is not None else -float(self.act_dim)
        self.update = select_update(backend, self.autograd_update, fused=lambda: FusedSACUpdate(self))

    # ------------------------------------------------------------------ acting
    def policy_actions(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        mean, log_std = np.split(self.policy_numpy(obs), 2, axis=-1)
        if not explore:
            return np.tanh(mean)
        log_std = np.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)
        return np.tanh(mean + np.exp(log_std) * self.rng.standard_normal(mean.shape))

    # ------------------------------------------------------------------ learning
    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One update by the backend chosen in :meth:`build` (:meth:`autograd_update` is the definition)."""
        return self.update(batch)

    def autograd_update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The update of the module docstring, with autograd."""
        cfg = self.config
        obs = batch.obs
        a_pi, logp = self.policy.sample(obs)
        alpha = self.log_alpha.detach().exp()  # the value before this step's alpha update
        with torch.no_grad():
            next_a, next_logp = self.policy.sample(batch.next_obs)
            q_next = self.critic_target.module(batch.next_obs, next_a).min(dim=0).values
            td_target = batch.rewards + batch.discounts * (q_next - alpha * next_logp)
        q = self.critic.module(obs, self.normalize_actions(batch.actions))
        critic_loss = weighted_mean((q - td_target).pow(2).sum(0), batch.weights)
        self.critic.step(critic_loss)

        critic = self.critic.module
        critic.requires_grad_(False)  # the actor's gradient flows through Q, not into it
        q_pi = critic(obs, a_pi).min(dim=0).values
        critic.requires_grad_(True)
        actor_loss = (alpha * logp - q_pi).mean()
        alpha_loss = self.step_policy_and_temperature(self.policy_flat, actor_loss, logp.detach() + self.target_entropy)
        self.critic_target.polyak_(self.critic, cfg.tau)
        stats = dict(critic_loss=critic_loss.detach(), actor_loss=actor_loss.detach(), alpha=alpha,
                     entropy=-logp.detach().mean(), td_error=(q[0] - td_target).detach().abs())
        if alpha_loss is not None:
            stats["alpha_loss"] = alpha_loss.detach()
        return stats

    # ------------------------------------------------------------------ saving
    def networks(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy, "critic": self.critic.module, "critic_target": self.critic_target.module}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.with_alpha_optimizer({"policy": self.policy_flat.optimizer, "critic": self.critic.optimizer})
