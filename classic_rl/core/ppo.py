"""The PPO core: the one implementation of PPO's math in this project.

Plain functions over tensors shaped ``(batch, time)`` with a validity ``mask`` (1 = real step,
0 = padding or a masked step). Nothing here knows about gymnasium or language models, so the
same code trains a CartPole agent (``classic_rl.agents.ppo``) and a causal LM (``rlhf.ppo``).

Pieces
------
- :func:`gae` -- generalised advantage estimation, GAE(lambda), with terminated vs truncated
  episodes (bootstrap on truncation, not on termination) and padding.
- :func:`policy_loss` -- the clipped surrogate
  ``L = -E[min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)]`` with approx-KL and clip fraction.
- :func:`value_loss` -- ``0.5 * E[(V - R)^2]``, optionally clipped around the old values.
- :func:`masked_mean`, :func:`masked_whiten` -- the statistics everything above relies on.
- :func:`ppo_update` -- epochs x minibatches of the loss above, gradient clipping, early stop
  when the approximate KL exceeds a target.

Use from a gymnasium rollout (``num_envs`` environments, ``T`` steps each)::

    adv, ret = gae(rewards, values, next_values=next_values, terminated=terminated,
                   episode_end=terminated | truncated, mask=valid, gamma=0.99, lam=0.95)
    batch = {"obs": obs.flatten(0, 1), "actions": actions.flatten(0, 1),
             "logprobs": logprobs.reshape(-1, 1), "values": values.reshape(-1, 1),
             "advantages": adv.reshape(-1, 1), "returns": ret.reshape(-1, 1),
             "mask": valid.reshape(-1, 1)}

    def evaluate(mb):  # -> PolicyEvaluation with (B, 1) tensors
        dist, value = net(mb["obs"])
        return PolicyEvaluation(dist.log_prob(mb["actions"])[:, None], value[:, None],
                                dist.entropy()[:, None])

    stats = ppo_update(batch, evaluate, optimizer, net.parameters(), PPOUpdateConfig())

Use from a batch of LM responses (``B`` sequences of up to ``T`` response tokens; the reward
sits on the last real token, every step is a token)::

    adv, ret = gae(token_rewards, values, mask=response_mask, gamma=1.0, lam=0.95)
    adv = masked_whiten(adv, response_mask)       # whiten over the whole batch once
    batch = {"query_responses": qr, "responses": resp, "logprobs": old_logprobs,
             "values": values, "advantages": adv, "returns": ret, "mask": response_mask}

    def evaluate(mb):  # forward the policy and critic over the sequences, (B, T) tensors
        ...
    stats = ppo_update(batch, evaluate, optimizer, params,
                       PPOUpdateConfig(normalize_advantages=False), backward=accelerator.backward)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

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


# ----------------------------------------------------------------------------- masked statistics
def masked_mean(x: Tensor, mask: Tensor | None = None, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (all positions if ``mask`` is None)."""
    if mask is None:
        return x.mean() if dim is None else x.mean(dim)
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor | None = None, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over the valid positions (Bessel-corrected by default)."""
    mean = masked_mean(x, mask)
    sq = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = x.numel() if mask is None else mask.sum()
        n = torch.as_tensor(n, dtype=x.dtype)
        sq = sq * n / (n - 1).clamp(min=1.0)
    return sq


def masked_whiten(x: Tensor, mask: Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / std`` over valid positions; padding stays 0.

    ``shift_mean=False`` only rescales (used for rewards, whose sign carries meaning).
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out if mask is None else out * mask.to(x.dtype)


# ----------------------------------------------------------------------------- advantages
@torch.no_grad()
def gae(
    rewards: Tensor,
    values: Tensor,
    *,
    mask: Tensor | None = None,
    next_values: Tensor | None = None,
    terminated: Tensor | None = None,
    episode_end: Tensor | None = None,
    last_values: Tensor | None = None,
    gamma: float = 0.99,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """GAE(lambda) advantages and lambda-returns over ``(batch, time)`` tensors.

    ``delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t)``
    ``A_t = delta_t + gamma * lam * (1 - episode_end_t) * A_{t+1}``, ``returns = A + V``.

    Args:
        rewards, values: ``(B, T)``.
        mask: ``(B, T)``, 1 for real steps. Masked steps get advantage 0 and do not pass
            advantage back to earlier steps, so a padded batch equals the unpadded one.
        next_values: ``(B, T)`` value of the state after step t. For a truncated episode this
            must be the value of the *final* observation (the time limit is not the end of the
            task, so we bootstrap). Default: ``values`` shifted left by one (padding counts as 0),
            with ``last_values`` (or 0) after the last column -- the LM case.
        terminated: ``(B, T)`` 1 where the episode really ended at step t: no bootstrap.
        episode_end: ``(B, T)`` 1 where the episode ended for any reason (terminated or
            truncated): the advantage recursion stops there. Defaults to ``terminated``.
        last_values: ``(B,)`` bootstrap value after the final column when ``next_values`` is None.
    """
    B, T = rewards.shape
    dtype = values.dtype
    valid = torch.ones_like(values) if mask is None else mask.to(dtype)
    if next_values is None:
        tail = torch.zeros(B, 1, dtype=dtype, device=values.device)
        if last_values is not None:
            tail = last_values.reshape(B, 1).to(dtype)
        next_values = torch.cat([(values * valid)[:, 1:], tail], dim=1)
    not_terminal = torch.ones_like(values) if terminated is None else 1.0 - terminated.to(dtype)
    ends = terminated if episode_end is None else episode_end
    carry_on = torch.ones_like(values) if ends is None else 1.0 - ends.to(dtype)

    deltas = (rewards + gamma * next_values * not_terminal - values) * valid
    advantages = torch.zeros_like(values)
    running = torch.zeros(B, dtype=dtype, device=values.device)
    for t in reversed(range(T)):
        running = deltas[:, t] + gamma * lam * carry_on[:, t] * running
        running = running * valid[:, t]
        advantages[:, t] = running
    returns = (advantages + values) * valid
    return advantages, returns


# ----------------------------------------------------------------------------- losses
def policy_loss(
    new_logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor | None, clip_range: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate (to minimise) and its statistics.

    ``ratio = exp(log pi_new - log pi_old)``;
    ``loss = mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))``.
    Stats: ``approx_kl`` (the unbiased k3 estimator ``(ratio - 1) - log ratio``), ``clipfrac``
    (share of steps where the clipped branch is the active one), ``ratio`` (mean).
    """
    loss, log_ratio = _clipped_surrogate(new_logprobs, old_logprobs, advantages, mask, clip_range)
    return loss, _surrogate_stats(log_ratio.detach(), advantages, mask, clip_range)


def _clipped_surrogate(
    new_logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor | None, clip_range: float
) -> tuple[Tensor, Tensor]:
    """The loss of :func:`policy_loss` and ``log ratio`` (its statistics follow from that)."""
    log_ratio = new_logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return masked_mean(torch.maximum(unclipped, clipped), mask), log_ratio


@torch.no_grad()
def _surrogate_stats(
    log_ratio: Tensor, advantages: Tensor, mask: Tensor | None, clip_range: float, dim: tuple[int, ...] | None = None
) -> dict[str, Tensor]:
    """approx_kl, clipfrac and mean ratio of :func:`policy_loss` (per leading index with ``dim``:
    :func:`ppo_update` computes them for all its minibatches at once, stacked)."""
    ratio = torch.exp(log_ratio)
    clipped_active = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range) > -advantages * ratio

    def mean(x: Tensor) -> Tensor:
        if dim is None:
            return masked_mean(x, mask)
        return x.mean(dim) if mask is None else (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)

    return {
        "approx_kl": mean((ratio - 1.0) - log_ratio),
        "clipfrac": mean(clipped_active.to(ratio.dtype)),
        "ratio": mean(ratio),
    }


def value_loss(
    new_values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor | None, clip_range_value: float | None
) -> tuple[Tensor, Tensor]:
    """``0.5 * mean((V - R)^2)``; with ``clip_range_value`` the pessimistic max of the plain and
    the clipped error, where ``V_clipped = V_old + clip(V - V_old, -c, c)``. Returns (loss, clipfrac)."""
    if clip_range_value is None:
        if mask is None:  # one fused op (and one backward node) instead of three
            return 0.5 * F.mse_loss(new_values, returns), torch.zeros((), device=new_values.device)
        return 0.5 * masked_mean((new_values - returns) ** 2, mask), torch.zeros((), device=new_values.device)
    unclipped = (new_values - returns) ** 2
    v_clipped = old_values + torch.clamp(new_values - old_values, -clip_range_value, clip_range_value)
    clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).to(new_values.dtype), mask)
    return loss, clipfrac


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
            pg_loss, log_ratio = _clipped_surrogate(out.logprobs, mb["logprobs"], adv, mask, eps)
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
                kl = _surrogate_stats(log_ratio, adv, mask, eps)["approx_kl"]
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
    surrogate = _surrogate_stats(log_ratio, torch.stack(pieces["advantages"]), mask, clip_range, dims)

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
