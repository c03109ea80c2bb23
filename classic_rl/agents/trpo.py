"""TRPO: a natural-gradient policy step inside a KL trust region, and a separately fitted critic.

Each update maximises the surrogate ``L(theta) = mean(pi_theta(a|s) / pi_old(a|s) * A)`` subject
to ``mean KL(pi_old || pi_theta) <= max_kl`` (Schulman et al., 2015):

1. ``g = grad L`` at ``theta_old``; the Fisher matrix ``F`` is the Hessian of the mean KL, used
   only through products ``F v = grad((grad KL) . v) + damping * v``.
2. :func:`conjugate_gradient` solves ``F s = g`` in ``cg_max_steps`` iterations.
3. The largest step along ``s`` with a quadratic KL of ``max_kl`` is
   ``beta s``, ``beta = sqrt(2 max_kl / (s^T F s))``.
4. :func:`kl_line_search` shrinks that step (``x shrink^k``) until the exact KL is within the
   bound and the surrogate improved; if no step qualifies, the policy stays as it was.
5. The value function is fitted by ``n_critic_updates`` epochs of minibatch regression on the
   GAE returns (Adam, ``learning_rate``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from classic_rl.agents.base import register
from classic_rl.agents.on_policy import OnPolicyAgent, OnPolicyConfig, Rollout, compute_gae, make_optimizer
from classic_rl.core.losses import masked_mean, masked_whiten, value_loss

__all__ = ["TRPO", "TRPOConfig", "conjugate_gradient", "kl_line_search"]


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, max_steps: int = 15, residual_tol: float = 1e-10
) -> Tensor:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given only ``v -> A v``.

    Standard CG from ``x = 0``: ``alpha = r.r / p.Ap``, ``x += alpha p``, ``r -= alpha Ap``,
    ``p = r + (r'.r' / r.r) p``; stops after ``max_steps`` or when ``r.r < residual_tol``.
    Exact in ``n`` steps for an ``n``-dimensional system (in exact arithmetic).
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r.dot(r)
    for _ in range(max_steps):
        if rr < residual_tol:
            break
        Ap = matvec(p)
        alpha = rr / p.dot(Ap)
        x += alpha * p
        r -= alpha * Ap
        rr_new = r.dot(r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def kl_line_search(
    evaluate: Callable[[Tensor], tuple[float, float]],
    x0: Tensor,
    full_step: Tensor,
    max_kl: float,
    f0: float | None = None,
    shrink: float = 0.8,
    max_iter: int = 10,
) -> tuple[Tensor, float]:
    """Backtracking search on ``x0 + shrink^k * full_step``, ``k = 0, 1, ...``.

    ``evaluate(x) -> (objective, kl)`` (objective to *maximise*, KL from the policy at ``x0``).
    Returns the first point with ``kl <= max_kl`` and ``objective > f0`` and its step fraction
    ``shrink^k``; ``(x0, 0.0)`` when none of ``max_iter`` candidates qualifies.
    """
    if f0 is None:
        f0 = evaluate(x0)[0]
    frac = 1.0
    for _ in range(max_iter):
        x = x0 + frac * full_step
        objective, kl = evaluate(x)
        if kl <= max_kl and objective > f0:
            return x, frac
        frac *= shrink
    return x0, 0.0


@dataclass
class TRPOConfig(OnPolicyConfig):
    """Settings of ``trpo`` (defaults: sb3-contrib's)."""

    num_envs: int = 1
    n_steps: int = 2048
    gae_lambda: float = 0.95
    max_kl: float = 0.01
    """Trust-region radius: bound on the mean KL(pi_old || pi_new) of a step."""
    cg_max_steps: int = 15
    cg_damping: float = 0.1
    """Added to the Fisher-vector product (F + damping I) for a well-conditioned solve."""
    line_search_shrink: float = 0.8
    line_search_max_iter: int = 10
    learning_rate: float = 1e-3
    """Critic (value function) learning rate."""
    n_critic_updates: int = 10
    """Epochs of value regression per update."""
    batch_size: int = 128
    """Minibatch size of the value regression."""
    normalize_advantage: bool = True
    max_grad_norm: float | None = None

    def validate(self) -> None:
        super().validate()
        if self.share_trunk:
            raise ValueError("trpo needs share_trunk=false: the critic's regression must not move the policy")
        if self.max_kl <= 0:
            raise ValueError(f"max_kl must be positive, got {self.max_kl}")
        if not 0.0 < self.line_search_shrink < 1.0:
            raise ValueError(f"line_search_shrink must lie in (0, 1), got {self.line_search_shrink}")


def flat_grad(output: Tensor, params: list[torch.nn.Parameter], **kwargs) -> Tensor:
    grads = torch.autograd.grad(output, params, **kwargs)
    return torch.cat([g.reshape(-1) for g in grads])


@register
class TRPO(OnPolicyAgent):
    """Trust region policy optimisation (see the module docstring)."""

    algo = "trpo"
    Config = TRPOConfig
    default_steps = 100_000

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {
            "critic": make_optimizer(
                self.config.optimizer, self.policy.critic_parameters(), self.config.learning_rate
            )
        }

    def update(self, rollout: Rollout, progress_remaining: float) -> dict[str, float]:
        cfg = self.config
        advantages, returns = compute_gae(rollout, cfg.gamma, cfg.gae_lambda)
        obs, actions = rollout.obs.flatten(0, 1), rollout.actions.flatten(0, 1)
        mask, adv, ret = rollout.loss_mask, advantages.flatten(), returns.flatten()
        if cfg.normalize_advantage:
            adv = masked_whiten(adv, mask)
        stats = self.policy_step(obs, actions, adv, mask)
        stats.update(self.fit_critic(obs, ret, mask))
        return stats

    def policy_step(self, obs: Tensor, actions: Tensor, adv: Tensor, mask: Tensor | None) -> dict[str, float]:
        """Steps 1-4 of the module docstring."""
        cfg, policy = self.config, self.policy
        params = policy.actor_parameters()
        with torch.no_grad():
            old_dist = policy.distribution(obs)
            old_logp = old_dist.log_prob(actions)

        def surrogate_and_kl(dist) -> tuple[Tensor, Tensor]:
            ratio = torch.exp(dist.log_prob(actions) - old_logp)
            return masked_mean(ratio * adv, mask), masked_mean(old_dist.kl(dist), mask)

        dist = policy.distribution(obs)
        surrogate, kl = surrogate_and_kl(dist)
        g = flat_grad(surrogate, params, retain_graph=True)
        grad_kl = flat_grad(kl, params, create_graph=True)

        def fisher_vector_product(v: Tensor) -> Tensor:
            return flat_grad(grad_kl.dot(v), params, retain_graph=True) + cfg.cg_damping * v

        step_dir = conjugate_gradient(fisher_vector_product, g, cfg.cg_max_steps)
        shs = step_dir.dot(fisher_vector_product(step_dir))
        full_step = torch.sqrt(2.0 * cfg.max_kl / shs.clamp(min=1e-12)) * step_dir
        x0 = parameters_to_vector(params).detach()

        @torch.no_grad()
        def evaluate(x: Tensor) -> tuple[float, float]:
            vector_to_parameters(x, params)
            s, k = surrogate_and_kl(policy.distribution(obs))
            return float(s), float(k)

        x, frac = kl_line_search(
            evaluate,
            x0,
            full_step.detach(),
            cfg.max_kl,
            f0=float(surrogate.detach()),
            shrink=cfg.line_search_shrink,
            max_iter=cfg.line_search_max_iter,
        )
        with torch.no_grad():
            vector_to_parameters(x, params)
            new_surrogate, new_kl = surrogate_and_kl(policy.distribution(obs))
        return {
            "policy/surrogate_gain": float(new_surrogate) - float(surrogate.detach()),
            "policy/kl": float(new_kl),
            "policy/step_fraction": frac,
        }

    def fit_critic(self, obs: Tensor, returns: Tensor, mask: Tensor | None) -> dict[str, float]:
        """Step 5: minibatch regression of V on the returns."""
        cfg, policy, opt = self.config, self.policy, self._optimizers["critic"]
        n = obs.shape[0]
        size = min(cfg.batch_size, n)
        total, count = 0.0, 0
        for _ in range(cfg.n_critic_updates):
            perm = torch.randperm(n)
            for start in range(0, n - size + 1, size):
                idx = perm[start : start + size]
                v = policy.value(obs[idx])
                loss, _ = value_loss(v, v.detach(), returns[idx], None if mask is None else mask[idx], None)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(policy.critic_parameters(), cfg.max_grad_norm)
                opt.step()
                total += float(loss.detach())
                count += 1
        return {"loss/value": total / max(count, 1)}
