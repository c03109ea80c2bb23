"""Compatibility names for PPO's math, and the old optimizer-owning update loop of ``rlhf``.

The definitions live in :mod:`classic_rl.core.advantages` (``gae``, group and leave-one-out
advantages) and :mod:`classic_rl.core.losses` (clipped surrogate, value loss, KL estimators, masked
statistics); this module re-exports the names it used to define so old imports keep working.

:func:`ppo_update` is the loop ``rlhf``'s PPO trainer used before each trainer owned its loop;
it goes once nothing calls it (the gym agents already run their own loop, see ``agents/ppo.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from classic_rl.core.advantages import gae
from classic_rl.core.losses import (
    clipped_surrogate,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    surrogate_stats,
    value_loss,
)

__all__ = [
    "PPOUpdateConfig",
    "PolicyEvaluation",
    "gae",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "policy_loss",
    "value_loss",
    "ppo_update",
]


# ----------------------------------------------------------------------------- the update loop
class PolicyEvaluation(NamedTuple):
    """What the caller's ``evaluate(minibatch)`` returns, each ``(B, T)`` like the batch."""

    logprobs: Tensor
    values: Tensor
    entropy: Tensor | None = None


@dataclass
class PPOUpdateConfig:
    """Settings of :func:`ppo_update` (names follow CleanRL / TRL)."""

    num_epochs: int = 4
    """Passes over the batch per update."""
    num_minibatches: int = 4
    """Minibatches per epoch (the batch's first dimension is split)."""
    clip_range: float = 0.2
    """Policy ratio clip epsilon."""
    clip_range_value: float | None = None
    """Value clip around the old values; None disables value clipping."""
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float | None = 0.5
    target_kl: float | None = None
    """Stop the epochs early once a minibatch's approx KL exceeds this."""
    normalize_advantages: bool = True
    """Whiten advantages per minibatch (CleanRL); pass False if the caller whitened the batch."""


def _minibatch(batch: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
    return {k: v[index] for k, v in batch.items()}


def ppo_update(
    batch: dict[str, Tensor],
    evaluate: Callable[[dict[str, Tensor]], PolicyEvaluation],
    optimizer: torch.optim.Optimizer,
    parameters: Iterable[torch.nn.Parameter],
    config: PPOUpdateConfig,
    *,
    generator: torch.Generator | None = None,
    backward: Callable[[Tensor], None] | None = None,
    clip_grad_norm: Callable[[Iterable[torch.nn.Parameter], float], Tensor] | None = None,
    clip_range: float | None = None,
    reduce_mean: Callable[[Tensor], Tensor] | None = None,
    zero_grad: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Epochs x minibatches of PPO on a collected batch; returns averaged statistics.

    ``batch`` must hold ``logprobs``, ``values``, ``advantages``, ``returns`` and ``mask``
    (all ``(B, T)``, or all ``(B,)`` when every row is one step) plus whatever ``evaluate``
    needs; each minibatch is a dict with the same keys, sliced along the first dimension.
    ``backward`` / ``clip_grad_norm`` default to
    ``loss.backward()`` / ``torch.nn.utils.clip_grad_norm_``; pass ``accelerator.backward`` and
    ``accelerator.clip_grad_norm_`` under accelerate. ``clip_range`` overrides the config's
    (for annealing). ``reduce_mean`` averages a scalar across processes (e.g.
    ``lambda t: accelerator.reduce(t, "mean")``) so the KL early stop is the same on every rank.
    ``zero_grad`` defaults to ``optimizer.zero_grad(set_to_none=True)`` (pass one that zeroes in
    place for parameters kept in one flat tensor). Stats: ``loss/policy``, ``loss/value``, ``loss/entropy``,
    ``policy/approxkl``, ``policy/clipfrac``, ``val/clipfrac``, ``policy/ratio``,
    ``epochs_run``, each averaged over the minibatches that ran.

    Small networks spend most of a minibatch step on per-op overhead, so the loop keeps the op
    count down without changing the arithmetic: an all-ones mask is dropped (plain means), each
    epoch's shuffle is one gather per key (minibatches are then slices of it; a single minibatch
    is the batch itself, unshuffled: the mean does not depend on the order), and the statistics
    are kept as per-minibatch pieces and reduced once at the end (one host sync per update).
    """
    for key in ("logprobs", "values", "advantages", "returns", "mask"):
        if key not in batch:
            raise ValueError(f"ppo_update: batch is missing {key!r}; it needs logprobs, values, advantages, returns, mask")
    params = [p for p in parameters if p.requires_grad]
    eps = config.clip_range if clip_range is None else clip_range
    n = batch["mask"].shape[0]
    if config.num_minibatches < 1 or config.num_minibatches > n:
        raise ValueError(f"num_minibatches={config.num_minibatches} must be between 1 and the batch size {n}")
    mb_size = n // config.num_minibatches
    backward = backward or (lambda loss: loss.backward())
    clip_grad_norm = clip_grad_norm or torch.nn.utils.clip_grad_norm_
    zero_grad = zero_grad or (lambda: optimizer.zero_grad(set_to_none=True))
    masked = not bool(batch["mask"].all())  # else the losses take plain means (fewer ops)

    # Per-minibatch pieces, reduced after the loop (one host sync per update, not several per step).
    pieces: dict[str, list[Tensor]] = {k: [] for k in ("log_ratio", "advantages", "mask", "policy", "value", "entropy", "val_clipfrac")}
    epochs_run = 0
    stop = False
    for _ in range(config.num_epochs):
        epochs_run += 1
        if config.num_minibatches == 1:
            shuffled = batch
        else:
            perm = torch.randperm(n, generator=generator, device="cpu")
            shuffled = _minibatch(batch, perm.to(batch["logprobs"].device))
        for start in range(0, mb_size * config.num_minibatches, mb_size):
            mb = {k: v[start : start + mb_size] for k, v in shuffled.items()}
            mask = mb["mask"] if masked else None
            adv = mb["advantages"]
            if config.normalize_advantages and (mask.sum() if masked else adv.numel()) > 1:
                adv = masked_whiten(adv, mask)
            out = evaluate(mb)
            per_token, log_ratio = clipped_surrogate(out.logprobs, mb["logprobs"], adv, epsilon=eps)
            pg_loss = masked_mean(per_token, mask)
            v_loss, v_clipfrac = value_loss(out.values, mb["values"], mb["returns"], mask, config.clip_range_value)
            loss = pg_loss + config.vf_coef * v_loss
            if out.entropy is not None:
                entropy = masked_mean(out.entropy, mask)
                pieces["entropy"].append(entropy.detach())
                if config.ent_coef != 0.0:
                    loss = loss - config.ent_coef * entropy

            zero_grad()
            backward(loss)
            if config.max_grad_norm is not None:
                clip_grad_norm(params, config.max_grad_norm)
            optimizer.step()

            log_ratio = log_ratio.detach()
            pieces["log_ratio"].append(log_ratio)
            pieces["advantages"].append(adv)
            pieces["policy"].append(pg_loss.detach())
            pieces["value"].append(v_loss.detach())
            if config.clip_range_value is not None:
                pieces["val_clipfrac"].append(v_clipfrac)
            if masked:
                pieces["mask"].append(mask)
            if config.target_kl is not None:
                # Every process must take the same decision, or a rank waits forever in backward.
                kl = surrogate_stats(log_ratio, adv, mask, eps)["approx_kl"]
                kl = reduce_mean(kl) if reduce_mean is not None else kl
                if kl.item() > config.target_kl:
                    stop = True
                    break
        if stop:
            break
    return _update_stats(pieces, eps, epochs_run)


@torch.no_grad()
def _update_stats(pieces: dict[str, list[Tensor]], clip_range: float, epochs_run: int) -> dict[str, float]:
    """Average each statistic over the minibatches that ran, all minibatches in one stacked pass."""
    count = len(pieces["policy"])
    if count == 0:
        return {"epochs_run": float(epochs_run)}
    log_ratio = torch.stack(pieces["log_ratio"])
    dims = tuple(range(1, log_ratio.dim()))
    mask = torch.stack(pieces["mask"]).to(log_ratio.dtype) if pieces["mask"] else None
    surrogate = surrogate_stats(log_ratio, torch.stack(pieces["advantages"]), mask, clip_range, dim=dims)

    def mean(name: str) -> Tensor:
        values = pieces[name]
        return torch.stack(values).mean() if values else torch.zeros((), device=log_ratio.device)

    totals = torch.stack([
        mean("policy"), mean("value"), mean("entropy"), surrogate["approx_kl"].mean(),
        surrogate["clipfrac"].mean(), surrogate["ratio"].mean(), mean("val_clipfrac").to(log_ratio.device),
    ]).tolist()
    names = ("loss/policy", "loss/value", "loss/entropy", "policy/approxkl", "policy/clipfrac", "policy/ratio", "val/clipfrac")
    stats = dict(zip(names, totals))
    stats["epochs_run"] = float(epochs_run)
    return stats
