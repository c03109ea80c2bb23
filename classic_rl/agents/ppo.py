"""PPO on vector environments, on the shared core (``classic_rl.core.advantages`` and ``.losses``).

The update is Stable-Baselines3's ``PPO.train`` (``tests/test_ppo_vs_sb3.py`` holds the two equal
from the same weights and rollout). Each update: collect ``n_steps`` steps in each of ``num_envs``
envs, compute GAE(lambda) advantages with the core's :func:`~classic_rl.core.advantages.gae`
(bootstrapping truncated episodes from their final observation), then ``n_epochs`` passes over
the batch, each a fresh shuffle cut into minibatches of ``batch_size`` transitions (the last one
shorter when ``batch_size`` does not divide the batch). Per minibatch::

    A      = (A - mean A) / (std A + 1e-8)                       (normalize_advantage, per minibatch)
    ratio  = exp(log pi(a|s) - log pi_old(a|s))
    loss   = -mean(min(ratio A, clip(ratio, 1 - eps, 1 + eps) A))          (clipped surrogate)
             + vf_coef * mean((V_pred - R)^2)                              (value loss, no 1/2)
             - ent_coef * mean(entropy)
    V_pred = V, or V_old + clip(V - V_old, -clip_range_vf, clip_range_vf) with ``clip_range_vf``

and a gradient step clipped to global norm ``max_grad_norm``. With ``target_kl``, each minibatch's
``approx_kl = mean((ratio - 1) - log ratio)`` is checked *before* its step: above
``1.5 * target_kl`` the minibatch is not applied and the update ends (no further epochs). The
learning rate and the clip range can decay linearly to 0 over the budget; observations and
rewards can be normalised (``normalize_obs``, ``normalize_reward``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from classic_rl.agents.base import register
from classic_rl.agents.on_policy import OnPolicyAgent, OnPolicyConfig, Rollout, compute_gae
from classic_rl.core.losses import clipped_surrogate, masked_mean, masked_whiten, surrogate_stats, value_mse

__all__ = ["PPO", "PPOConfig", "CoreSettings", "core_settings"]


@dataclass
class PPOConfig(OnPolicyConfig):
    """Settings of ``ppo`` (defaults: SB3's, with 8 envs)."""

    num_envs: int = 8
    n_steps: int = 256
    """Steps per environment per rollout; the batch is num_envs * n_steps transitions."""
    batch_size: int = 64
    """Minibatch size (transitions); the batch must hold at least one minibatch. When it does not
    divide the batch, each epoch's last minibatch holds the remainder (as SB3's)."""
    n_epochs: int = 10
    gae_lambda: float = 0.95
    learning_rate: float = 3e-4
    clip_range: float = 0.2
    anneal_clip: bool = False
    """Decay the clip range linearly to 0 over the ``learn`` budget."""
    clip_range_vf: float | None = None
    """Clip the value prediction to ``V_old +- clip_range_vf`` before the squared error (SB3's
    value clipping; it depends on the reward scale). None: no value clipping."""
    target_kl: float | None = None
    """Stop an update before a minibatch step whose approximate KL exceeds ``1.5 * target_kl`` (SB3's rule)."""
    ent_coef: float = 0.0
    """Entropy bonus weight; at 0 the entropy is not computed (``loss/entropy`` then reads 0)."""
    normalize_advantage: bool = True
    """Whiten the advantages of each minibatch (of more than one transition), as SB3."""

    def validate(self) -> None:
        super().validate()
        if self.batch_size < 2 or self.batch_size > self.num_envs * self.n_steps:
            raise ValueError(
                f"batch_size={self.batch_size} must lie in [2, num_envs * n_steps = {self.num_envs * self.n_steps}]"
            )
        if self.clip_range <= 0:
            raise ValueError(f"clip_range must be positive, got {self.clip_range}")


class CoreSettings(NamedTuple):
    """PPO's settings in the core's names (:mod:`classic_rl.core.losses`)."""

    epsilon: float
    epsilon_value: float | None
    num_epochs: int


def core_settings(cfg: PPOConfig, progress_remaining: float = 1.0) -> CoreSettings:
    """The one place where this agent's (Stable-Baselines3's, the CLI's) names become the core's:
    ``clip_range`` -> ``epsilon`` (decayed with ``progress_remaining`` under ``anneal_clip``),
    ``clip_range_vf`` -> ``epsilon_value``, ``n_epochs`` -> ``num_epochs``."""
    epsilon = cfg.clip_range * progress_remaining if cfg.anneal_clip else cfg.clip_range
    return CoreSettings(epsilon=epsilon, epsilon_value=cfg.clip_range_vf, num_epochs=cfg.n_epochs)


@register
class PPO(OnPolicyAgent):
    """Proximal policy optimisation (clipped surrogate), see the module docstring."""

    algo = "ppo"
    Config = PPOConfig
    default_steps = 100_000
    use_flat_parameters = True

    def update(self, rollout: Rollout, progress_remaining: float) -> dict[str, float]:
        """GAE over the rollout, then ``n_epochs`` x minibatches of the clipped surrogate (the loop is
        here, in plain sight; the math is the core's ``clipped_surrogate`` and ``value_mse``)."""
        cfg = self.config
        advantages, returns = compute_gae(rollout, cfg.gamma, cfg.gae_lambda)
        # Each transition is one row: per-step tensors are 1-D here ((batch,), not (batch, 1)).
        batch = {
            "obs": rollout.obs.flatten(0, 1),
            "actions": rollout.actions.flatten(0, 1),
            "logprobs": rollout.logprobs.flatten(),
            "values": rollout.values.flatten(),
            "advantages": advantages.flatten(),
            "returns": returns.flatten(),
            "mask": rollout.mask.flatten(),
        }
        settings = core_settings(cfg, progress_remaining)
        stats = self.train_epochs(batch, settings)
        stats["policy/clip_range"] = settings.epsilon
        return stats

    def train_epochs(self, batch: dict[str, Tensor], settings: CoreSettings) -> dict[str, float]:
        """``num_epochs`` passes of shuffled minibatches over ``batch``; statistics averaged over the steps.

        Small networks spend most of a minibatch step on per-op overhead, so the loop keeps the op
        count down without changing the arithmetic: an all-ones mask is dropped (plain means), each
        epoch's shuffle is one gather per key (minibatches are then slices of it; a single minibatch
        is the batch itself, unshuffled: no mean depends on the order), and the statistics are kept
        per minibatch and reduced once at the end (one host sync per update, plus one per step
        with ``target_kl``).
        """
        cfg = self.config
        epsilon, epsilon_value = settings.epsilon, settings.epsilon_value
        policy, optimizer = self.policy, self._optimizers["optimizer"]
        n = batch["mask"].shape[0]
        mb_size = min(cfg.batch_size, n)
        masked = not bool(batch["mask"].all())
        with_entropy = cfg.ent_coef != 0.0  # else skip it: a measurable share of a minibatch step for nothing
        pieces: dict[str, list[Tensor]] = {k: [] for k in ("log_ratio", "advantages", "mask", "policy", "value", "entropy", "val_clipfrac")}
        epochs_run = 0
        for _epoch in range(settings.num_epochs):
            epochs_run += 1
            shuffled = batch
            if mb_size < n:
                perm = torch.randperm(n)
                shuffled = {k: v[perm] for k, v in batch.items()}
            stop = False
            for start in range(0, n, mb_size):
                mb = {k: v[start : start + mb_size] for k, v in shuffled.items()}
                mask = mb["mask"] if masked else None
                advantages = mb["advantages"]
                if cfg.normalize_advantage and advantages.shape[0] > 1:  # SB3: per minibatch
                    # rsqrt(var + 1e-8) here, 1 / (std + 1e-8) in SB3: equal to ~1e-8 relative
                    advantages = masked_whiten(advantages, mask)
                dist, new_values = policy(mb["obs"])
                new_logprobs = dist.log_prob(mb["actions"])
                per_step, log_ratio = clipped_surrogate(new_logprobs, mb["logprobs"], advantages, epsilon=epsilon)
                pg_loss = masked_mean(per_step, mask)
                v_loss, v_clipfrac = value_mse(new_values, mb["values"], mb["returns"], mask, epsilon_value)
                loss = pg_loss + cfg.vf_coef * v_loss
                if with_entropy:
                    entropy = masked_mean(dist.entropy(), mask)
                    loss = loss - cfg.ent_coef * entropy

                log_ratio = log_ratio.detach()
                # SB3's early stop: checked before the step, which is then not taken
                if cfg.target_kl is not None and _approx_kl(log_ratio, mask).item() > 1.5 * cfg.target_kl:
                    stop = True
                    break

                self.zero_grad()
                loss.backward()
                self.clip_grad_norm(cfg.max_grad_norm)
                optimizer.step()

                pieces["log_ratio"].append(log_ratio)
                pieces["advantages"].append(advantages)
                pieces["policy"].append(pg_loss.detach())
                pieces["value"].append(v_loss.detach())
                if with_entropy:
                    pieces["entropy"].append(entropy.detach())
                if epsilon_value is not None:
                    pieces["val_clipfrac"].append(v_clipfrac)
                if masked:
                    pieces["mask"].append(mask)
            if stop:
                break
        return _mean_statistics(pieces, epsilon, epochs_run)


@torch.no_grad()
def _approx_kl(log_ratio: Tensor, mask: Tensor | None) -> Tensor:
    """``mean((ratio - 1) - log ratio)``, the k3 estimate of KL(pi_old || pi) SB3 stops on."""
    return masked_mean((torch.exp(log_ratio) - 1.0) - log_ratio, mask)


@torch.no_grad()
def _mean_statistics(pieces: dict[str, list[Tensor]], epsilon: float, epochs_run: int) -> dict[str, float]:
    """Average each statistic over the minibatch steps that ran, in one stacked pass per minibatch
    size (two at most: the full minibatches and a shorter last one)."""
    stats = {"epochs_run": float(epochs_run)}
    if not pieces["policy"]:
        return stats
    per_step: dict[str, list[Tensor]] = {"approx_kl": [], "clipfrac": [], "ratio": []}
    for size in {t.shape[0] for t in pieces["log_ratio"]}:
        steps = [i for i, t in enumerate(pieces["log_ratio"]) if t.shape[0] == size]
        log_ratio = torch.stack([pieces["log_ratio"][i] for i in steps])
        mask = torch.stack([pieces["mask"][i] for i in steps]).to(log_ratio.dtype) if pieces["mask"] else None
        advantages = torch.stack([pieces["advantages"][i] for i in steps])
        for key, value in surrogate_stats(log_ratio, advantages, mask, epsilon, dim=(1,)).items():
            per_step[key].append(value)
    surrogate = {key: torch.cat(values) for key, values in per_step.items()}

    def mean(name: str) -> Tensor:
        return torch.stack(pieces[name]).mean() if pieces[name] else torch.zeros(())

    totals = torch.stack([
        mean("policy"), mean("value"), mean("entropy"), surrogate["approx_kl"].mean(),
        surrogate["clipfrac"].mean(), surrogate["ratio"].mean(), mean("val_clipfrac"),
    ]).tolist()
    names = ("loss/policy", "loss/value", "loss/entropy", "policy/approxkl", "policy/clipfrac", "policy/ratio", "val/clipfrac")
    stats.update(zip(names, totals))
    return stats
