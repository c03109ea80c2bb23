"""REINFORCE: Monte-Carlo policy gradient, with an optional learned baseline.

From complete episodes, with the return-to-go ``G_t = sum_{k>=t} gamma^{k-t} r_k``::

    theta += alpha * gamma^t * (G_t - b(S_t)) * grad log pi(A_t | S_t)

``b`` is a learned state value ``V(S_t)`` fitted to ``G_t`` (``baseline=True``) or 0. The
``gamma^t`` factor of the textbook update is optional (``discount_weighting``); it is usually
dropped in practice because it starves late steps of gradient. An episode cut by a time limit
is completed with ``gamma^k V(final obs)`` when there is a baseline (bootstrap on truncation).
"""

from __future__ import annotations

from dataclasses import dataclass

from classic_rl.agents.actor_critic import gradient_step
from classic_rl.agents.base import register
from classic_rl.agents.on_policy import OnPolicyAgent, OnPolicyConfig, Rollout, RolloutCollector, compute_gae
from classic_rl.core.losses import masked_mean, masked_whiten, value_loss
from classic_rl.logger import RunLogger

__all__ = ["Reinforce", "ReinforceConfig"]


@dataclass
class ReinforceConfig(OnPolicyConfig):
    """Settings of ``reinforce``."""

    episodes_per_update: int = 2
    """Complete episodes per policy-gradient step (summed over the envs)."""
    max_rollout_steps: int = 100_000
    """Cap on the steps per env of one collection, for envs whose episodes never end."""
    baseline: bool = True
    """Learn a state-value baseline b(s) = V(s) (and bootstrap truncated episodes with it)."""
    discount_weighting: bool = False
    """Multiply each term by gamma^t (t = step within its episode), as in the textbook update."""
    normalize_advantage: bool = True
    """Whiten G_t - b(S_t) over the batch (a second, batch-level baseline)."""
    learning_rate: float = 1e-3
    max_grad_norm: float | None = None


@register
class Reinforce(OnPolicyAgent):
    """Monte-Carlo policy gradient over complete episodes (see the module docstring)."""

    algo = "reinforce"
    Config = ReinforceConfig
    budget_unit = "step"
    default_steps = 100_000

    def critic_enabled(self) -> bool:
        return self.config.baseline

    def collect(self, collector: RolloutCollector, logger: RunLogger) -> Rollout:
        cfg = self.config
        return collector.collect(
            n_episodes=cfg.episodes_per_update, logger=logger, max_steps=cfg.max_rollout_steps
        )

    def update(self, rollout: Rollout, progress_remaining: float) -> dict[str, float]:
        cfg = self.config
        # lambda = 1 turns GAE into Monte-Carlo returns: A_t = G_t - V(S_t), returns = G_t.
        advantages, returns = compute_gae(rollout, cfg.gamma, 1.0)
        mask = rollout.loss_mask
        adv = advantages.flatten()
        if cfg.normalize_advantage and (mask is None or mask.sum() > 1):
            adv = masked_whiten(adv, mask)
        if cfg.discount_weighting:
            adv = adv * cfg.gamma ** rollout.episode_step.flatten().to(adv.dtype)
        dist, values = self.policy(rollout.obs.flatten(0, 1))
        pg_loss = -masked_mean(dist.log_prob(rollout.actions.flatten(0, 1)) * adv, mask)
        loss = pg_loss
        if cfg.ent_coef != 0.0:
            loss = loss - cfg.ent_coef * masked_mean(dist.entropy(), mask)
        stats = {"loss/policy": pg_loss}
        if cfg.baseline:
            v_loss, _ = value_loss(values, values.detach(), returns.flatten(), mask, None)
            loss = loss + cfg.vf_coef * v_loss
            stats["loss/value"] = v_loss
        gradient_step(loss, list(self.policy.parameters()), self._optimizers["optimizer"], cfg.max_grad_norm)
        return {k: float(v.detach()) for k, v in stats.items()}
