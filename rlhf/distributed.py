"""Helpers that make `rlhf ppo` independent of how it is sharded over processes.

- :func:`masked_whiten_across_processes` -- advantage whitening with the mean and variance of the
  whole global batch (all ranks), so two processes with ``b`` sequences each take the same PPO step
  as one process with ``2b`` (per-rank whitening, as TRL's PPOTrainer did, makes the step depend on
  the world size).
- :func:`unwrap_for_generation` -- the trained model, unwrapped, with full parameters for
  token-by-token sampling. Under DeepSpeed ZeRO-3 every forward gathers each layer's shards just in
  time; generation would repeat that for every new token, so the policy's parameters are gathered
  once per rollout batch and the engine's gather hooks are lifted meanwhile (TRL's
  ``ds3_gather_for_generation``). Under FSDP the root's own (unwrapped) parameters are materialised;
  the wrapped transformer blocks gather themselves when called.
- :func:`prepare_frozen_model` -- the reference policy or reward model placed for inference: sharded
  with ZeRO-3 (or FSDP) when the policy is, otherwise one full copy per device.
- :func:`all_processes_finished` / :func:`needs_synchronised_generation` -- when each forward is a
  collective (FSDP, ZeRO-3 without the one-off gather), token-by-token sampling stops only when every
  rank's batch has finished, so all ranks run the same number of forwards (trlX #373).
- :func:`check_deepspeed_settings` -- DeepSpeed's own gradient accumulation and clipping must match
  the trainer's flags (DeepSpeed, not accelerate, applies them).

Without a distributed backend (one process, or DDP) every helper reduces to the plain operation, so
the same code runs on a laptop CPU. The DeepSpeed and FSDP branches follow TRL 1.16's
``trl.models.utils`` and ``trl.distributed``; they need GPUs and were not run on this project's CPU
machine (see docs/scaling.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "all_processes_finished",
    "make_accelerator",
    "is_sharded",
    "all_reduce_sum",
    "check_deepspeed_settings",
    "is_deepspeed_zero3",
    "fsdp_version",
    "masked_whiten_across_processes",
    "needs_synchronised_generation",
    "prepare_frozen_model",
    "unwrap_for_generation",
]


# ----------------------------------------------------------------------------- the accelerator
def make_accelerator(cpu: bool, precision: str) -> Any:
    """The one place the rlhf RL trainers create their ``Accelerator``: this run's device and precision
    ('bf16', 'fp16' or 'fp32'), even if an earlier step in the same process (the pipeline's SFT or
    reward training) initialised accelerate's process-wide state with another precision."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mixed_precision = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[precision]
    try:
        return Accelerator(cpu=cpu, mixed_precision=mixed_precision)
    except ValueError as err:
        if "already been initialized" not in str(err):
            raise
        AcceleratorState._reset_state()  # keeps the distributed set-up (PartialState), resets precision
        return Accelerator(cpu=cpu, mixed_precision=mixed_precision)


def is_sharded(accelerator: Any) -> bool:
    """Whether the trained model's parameters are sharded over the ranks (ZeRO-3 or FSDP)."""
    return is_deepspeed_zero3(accelerator) or fsdp_version(accelerator) is not None


# ----------------------------------------------------------------------------- global statistics
def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over all processes (``x`` itself in one process). Every rank must call it."""
    if not _distributed():
        return x
    x = x.clone()
    torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.SUM)
    return x


def masked_whiten_across_processes(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` with the masked mean and Bessel-corrected variance of ``x`` over
    ALL processes' valid positions; padding stays 0.

    With ``n`` valid positions in total (summed over ranks)::

        mean = sum(x * mask) / n
        var  = sum((x - mean)^2 * mask) / (n - 1)

    In one process this matches ``classic_rl.core.ppo.masked_whiten(x, mask, shift_mean, eps)`` (the
    sums run in float64); under ``world_size`` processes it matches that function on the concatenation
    of all ranks' batches. Two collectives (sum and count, then squared deviations), the same on every
    rank, so it must be called by all ranks together.
    """
    m = mask.to(x.dtype)
    sums = all_reduce_sum(torch.stack([(x * m).sum(), m.sum()]).double())
    count = sums[1].clamp(min=1.0)
    mean = (sums[0] / count).to(x.dtype)
    sq = all_reduce_sum(((x - mean) ** 2 * m).sum().double().reshape(1))[0]
    var = (sq / (count - 1).clamp(min=1.0)).to(x.dtype)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


def all_processes_finished(done: Tensor) -> bool:
    """Whether every row of ``done`` is True on every process (one all-reduce; all ranks must call it)."""
    finished = done.all().reshape(1).to(torch.float32)
    if _distributed():
        torch.distributed.all_reduce(finished, op=torch.distributed.ReduceOp.MIN)
    return bool(finished.item())


# ----------------------------------------------------------------------------- backends
def is_deepspeed_zero3(accelerator: Any) -> bool:
    """Whether ``accelerator`` runs DeepSpeed ZeRO stage 3."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and getattr(plugin, "zero_stage", 0) == 3


def fsdp_version(accelerator: Any) -> int | None:
    """1 or 2 under FSDP, None otherwise."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    return getattr(plugin, "fsdp_version", 1) if plugin is not None else None


def _fsdp2_root(model: nn.Module) -> Any | None:
    from torch.distributed.fsdp import FSDPModule

    return model if isinstance(model, FSDPModule) else None


@contextmanager
def unwrap_for_generation(model: nn.Module, accelerator: Any, gather_deepspeed3_params: bool = True) -> Iterator[nn.Module]:
    """Yield ``accelerator.unwrap_model(model)`` ready for many small forwards (KV-cache sampling).

    - ZeRO-3 (``gather_deepspeed3_params``): all parameters gathered once
      (``deepspeed.zero.GatheredParameters``) and the engine's per-module gather hooks removed until
      the block ends -- the pattern of TRL's ``unwrap_model_for_generation``; costs one full copy of
      the model per GPU for the duration. With ``gather_deepspeed3_params=False`` the hooks gather layer
      by layer at every step (slow, but no full copy).
    - FSDP1: ``FSDP.summon_full_params(model, recurse=False)`` (the root's parameters; wrapped blocks
      gather themselves). FSDP2: the root module is unsharded and resharded afterwards.
    - DDP or one process: the unwrapped module, nothing else.
    """
    unwrapped = accelerator.unwrap_model(model)
    if is_deepspeed_zero3(accelerator) and gather_deepspeed3_params:
        import deepspeed
        from trl.models.utils import add_hooks, remove_hooks

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            remove_hooks(model)
            try:
                yield unwrapped
            finally:
                add_hooks(model)
        return
    version = fsdp_version(accelerator)
    if version == 1:
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model, recurse=False, writeback=False):
            yield unwrapped
        return
    root = _fsdp2_root(model) if version == 2 else None
    if root is not None:
        root.unshard()
        try:
            yield unwrapped
        finally:
            root.reshard()
        return
    yield unwrapped


def prepare_frozen_model(model: nn.Module, accelerator: Any, dtype: torch.dtype | None = None) -> nn.Module:
    """Place a frozen model (reference policy, reward model) for inference on ``accelerator``.

    DeepSpeed: a ZeRO-3 inference engine when training runs ZeRO-3 (sharded like the policy), else a
    stage-0 engine (one full copy per GPU) -- TRL's ``prepare_deepspeed``. FSDP: wrapped with the
    run's FSDP plugin (TRL's ``prepare_fsdp``). Otherwise: moved to the device (and ``dtype``).
    """
    model.requires_grad_(False).eval()
    if getattr(accelerator.state, "deepspeed_plugin", None) is not None:
        from trl.models.utils import prepare_deepspeed

        return prepare_deepspeed(model, accelerator)
    if fsdp_version(accelerator) is not None:
        from trl.models.utils import prepare_fsdp

        return prepare_fsdp(model, accelerator)
    return model.to(accelerator.device, dtype=dtype) if dtype is not None else model.to(accelerator.device)


def needs_synchronised_generation(accelerator: Any, gather_deepspeed3_params: bool = True) -> bool:
    """Whether sampling must agree across ranks when to stop: True when a forward of the unwrapped
    policy is a collective -- under FSDP (each block gathers its shards) and under ZeRO-3 without the
    one-off gather of :func:`unwrap_for_generation` -- and there is more than one process."""
    if accelerator.num_processes <= 1:
        return False
    return fsdp_version(accelerator) is not None or (is_deepspeed_zero3(accelerator) and not gather_deepspeed3_params)


def check_deepspeed_settings(accelerator: Any, gradient_accumulation_steps: int, max_grad_norm: float | None) -> None:
    """Raise ValueError when the DeepSpeed config disagrees with the trainer's accumulation or clipping.

    Under DeepSpeed the engine scales the loss by its own ``gradient_accumulation_steps``, steps at the
    boundaries accelerate marks, and clips with its own ``gradient_clipping``; accelerate's
    ``clip_grad_norm_`` only reads the norm back. A mismatch would silently train with another
    effective batch or clip, so it is refused. No-op without DeepSpeed.
    """
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    ds_config = getattr(plugin, "deepspeed_config", None) or {}
    steps = ds_config.get("gradient_accumulation_steps", accelerator.gradient_accumulation_steps)
    if steps != "auto" and int(steps) != gradient_accumulation_steps:
        raise ValueError(
            f"the DeepSpeed config has gradient_accumulation_steps: {steps} but --gradient_accumulation_steps is "
            f"{gradient_accumulation_steps}; set gradient_accumulation_steps to {gradient_accumulation_steps} (or "
            "'auto') in the deepspeed_config of the accelerate config file, or pass the same value to both"
        )
    clip = ds_config.get("gradient_clipping", "auto")
    want = 0.0 if max_grad_norm is None else float(max_grad_norm)
    if clip != "auto" and float(clip) != want:
        raise ValueError(
            f"the DeepSpeed config has gradient_clipping: {clip} but --max_grad_norm is {max_grad_norm}; DeepSpeed "
            f"does the clipping, so set gradient_clipping to {want} (or 'auto') in the deepspeed_config, or pass "
            f"--max_grad_norm {clip}"
        )
