"""PPO on vector environments, on top of the shared PPO core (``classic_rl.core.ppo``).

Each update: collect ``n_steps`` steps in each of ``num_envs`` envs, compute GAE(lambda)
advantages with the core's :func:`~classic_rl.core.ppo.gae` (bootstrapping truncated episodes
from their final observation), then run the core's :func:`~classic_rl.core.ppo.ppo_update`:
``n_epochs`` passes of minibatches of ``batch_size`` transitions over the clipped surrogate
``-min(ratio A, clip(ratio, 1 - eps, 1 + eps) A)`` + ``vf_coef`` x value loss - ``ent_coef`` x
entropy, with gradient clipping and an optional early stop on ``target_kl``. The learning
rate and the clip range can decay linearly to 0 over the budget; observations and rewards can
be normalised (``normalize_obs``, ``normalize_reward``).
"""

from __future__ import annotations

from dataclasses import dataclass

from classic_rl.agents.base import register
from classic_rl.agents.on_policy import OnPolicyAgent, OnPolicyConfig, Rollout, compute_gae
from classic_rl.core.ppo import PolicyEvaluation, PPOUpdateConfig, masked_whiten, ppo_update

__all__ = ["PPO", "PPOConfig"]


@dataclass
class PPOConfig(OnPolicyConfig):
    """Settings of ``ppo`` (defaults: SB3's, with 8 envs)."""

    num_envs: int = 8
    n_steps: int = 256
    """Steps per environment per rollout; the batch is num_envs * n_steps transitions."""
    batch_size: int = 64
    """Minibatch size (transitions); the batch must hold at least one minibatch."""
    n_epochs: int = 10
    gae_lambda: float = 0.95
    learning_rate: float = 3e-4
    clip_range: float = 0.2
    anneal_clip: bool = False
    """Decay the clip range linearly to 0 over the ``learn`` budget."""
    clip_range_vf: float | None = None
    """Clip the value update around the old values (None: no value clipping)."""
    target_kl: float | None = None
    """Stop an update's epochs early once the approximate KL exceeds this."""
    ent_coef: float = 0.0
    """Entropy bonus weight; at 0 the entropy is not computed (``loss/entropy`` then reads 0)."""
    normalize_advantage: bool = True
    """Whiten the advantages over the whole batch (SB3 whitens each minibatch: the same when the
    batch is one minibatch, as in the tuned CartPole settings)."""

    def validate(self) -> None:
        super().validate()
        if self.batch_size < 2 or self.batch_size > self.num_envs * self.n_steps:
            raise ValueError(
                f"batch_size={self.batch_size} must lie in [2, num_envs * n_steps = {self.num_envs * self.n_steps}]"
            )
        if self.clip_range <= 0:
            raise ValueError(f"clip_range must be positive, got {self.clip_range}")


@register
class PPO(OnPolicyAgent):
    """Proximal policy optimisation (clipped surrogate), see the module docstring."""

    algo = "ppo"
    Config = PPOConfig
    default_steps = 100_000
    use_flat_parameters = True

    def update_config(self) -> PPOUpdateConfig:
        cfg = self.config
        return PPOUpdateConfig(
            num_epochs=cfg.n_epochs,
            num_minibatches=max(1, (cfg.num_envs * cfg.n_steps) // cfg.batch_size),
            clip_range=cfg.clip_range,
            clip_range_value=cfg.clip_range_vf,
            vf_coef=cfg.vf_coef,
            ent_coef=cfg.ent_coef,
            max_grad_norm=cfg.max_grad_norm,
            target_kl=cfg.target_kl,
            normalize_advantages=False,  # done batch-wide in update()
        )

    def update(self, rollout: Rollout, progress_remaining: float) -> dict[str, float]:
        cfg = self.config
        advantages, returns = compute_gae(rollout, cfg.gamma, cfg.gae_lambda)
        if cfg.normalize_advantage:  # once over the whole batch (not per minibatch): fewer ops per step
            advantages = masked_whiten(advantages, rollout.mask if rollout.masked else None)
        # Each transition is one row: the core's per-step tensors are 1-D here ((batch,), not (batch, 1)).
        batch = {
            "obs": rollout.obs.flatten(0, 1),
            "actions": rollout.actions.flatten(0, 1),
            "logprobs": rollout.logprobs.flatten(),
            "values": rollout.values.flatten(),
            "advantages": advantages.flatten(),
            "returns": returns.flatten(),
            "mask": rollout.mask.flatten(),
        }
        policy = self.policy

        with_entropy = cfg.ent_coef != 0.0  # else skip it: ~10% of a minibatch step for nothing

        def evaluate(mb: dict) -> PolicyEvaluation:
            dist, value = policy(mb["obs"])
            return PolicyEvaluation(dist.log_prob(mb["actions"]), value, dist.entropy() if with_entropy else None)

        clip = cfg.clip_range * progress_remaining if cfg.anneal_clip else cfg.clip_range
        stats = ppo_update(
            batch,
            evaluate,
            self._optimizers["optimizer"],
            [self.flat_params] if self.flat_params is not None else policy.parameters(),
            self.update_config(),
            clip_range=clip,
            zero_grad=self.zero_grad,
            clip_grad_norm=lambda _params, max_norm: self.clip_grad_norm(max_norm),
        )
        stats["policy/clip_range"] = clip
        return stats
