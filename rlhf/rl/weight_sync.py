"""The policy's full weights under the names a vLLM engine loads (the Hugging Face checkpoint's), however
the trainer holds them: one process or DDP, LoRA (merged), DeepSpeed ZeRO-3 (gathered), FSDP (full
state dict).

Every rank must call :func:`policy_weights` at the same time: gathering sharded weights is a collective.
Every rank then holds the same full weights, so under DDP each rank's colocated engine gets the same ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from rlhf.common.distributed import fsdp_version, is_deepspeed_zero3, unwrap_for_generation

__all__ = ["engine_name", "merged_lora_weights", "policy_weights"]

PEFT_PREFIX = "base_model.model."


def engine_name(name: str) -> str:
    """A peft (or FSDP-wrapped) parameter name as the base checkpoint names it."""
    for wrapper in ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "modules_to_save.default."):
        name = name.replace(wrapper, "")
    return name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")


def merged_lora_weights(policy: nn.Module) -> dict[str, Tensor]:
    """``policy`` (a peft model) as one merged state dict: each adapted weight is ``W + delta`` computed
    out of place (peft's ``get_delta_weight``), so the trained base weights are never touched -- unlike
    ``merge_adapter``/``unmerge_adapter``, whose round trip rounds them a little at every sync."""
    from peft.tuners.lora import LoraLayer

    state = {}
    for name, tensor in policy.state_dict().items():
        if "lora_" in name or "original_module" in name:
            continue  # adapter matrices (merged below) and the frozen copy behind modules_to_save
        state[engine_name(name)] = tensor
    for module_name, module in policy.named_modules():
        if not isinstance(module, LoraLayer) or getattr(module, "merged", False):
            continue
        key = engine_name(f"{module_name}.weight")
        delta = sum(module.get_delta_weight(adapter) for adapter in module.active_adapters
                    if adapter in getattr(module, "lora_A", {}))
        if isinstance(delta, Tensor):
            state[key] = state[key] + delta.to(state[key].dtype)
    return state


@contextmanager
def policy_weights(model: nn.Module, accelerator: Any) -> Iterator[dict[str, Tensor]]:
    """The policy's full weights, ``{checkpoint name: tensor}``, valid inside the block (the ZeRO-3
    gather is released when it ends). ``model`` is the trainer's prepared trainable module (``.policy``)."""
    if is_deepspeed_zero3(accelerator):
        # Every parameter gathered at once, as for the built-in sampler's one-off gather.
        with unwrap_for_generation(model, accelerator, gather_deepspeed3_params=True) as unwrapped:
            yield _plain_or_merged(unwrapped.policy)
        return
    if fsdp_version(accelerator) is not None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # Full tensors on every rank (cpu_offload=False: with it only rank 0 would get them).
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
        yield {engine_name(k.removeprefix("policy.")): v for k, v in full.items() if k.startswith("policy.")}
        return
    yield _plain_or_merged(accelerator.unwrap_model(model).policy)


def _plain_or_merged(policy: nn.Module) -> dict[str, Tensor]:
    if hasattr(policy, "peft_config"):
        return merged_lora_weights(policy)
    with torch.no_grad():
        return {engine_name(k): v for k, v in policy.state_dict().items()}
