"""The trained module's weights and the optimizer's state in a checkpoint folder, whatever the sharding.

`rlhf ppo` / `grpo` / `rloo` checkpoints (``rlhf.rl.state.TrainerState.save``) hold the full
trained weights in ``model.safetensors`` under every backend -- a checkpoint is a usable model -- and
the optimizer state in the form each backend can load back exactly:

- one process, DDP: ``optimizer.pt``, the optimizer's own ``state_dict`` (rank 0 writes both).
- FSDP2: every rank joins torch's ``get_model_state_dict`` / ``get_optimizer_state_dict`` with
  ``StateDictOptions(full_state_dict=True, cpu_offload=True)``: the full weights and the full
  optimizer state (keyed by parameter name) are gathered on rank 0, which writes them. Resuming, every
  rank reads both files and ``set_model_state_dict`` / ``set_optimizer_state_dict`` keep its shard.
- DeepSpeed ZeRO (stages 1-3): rank 0 writes the weights (under ZeRO-3 gathered by
  ``accelerator.get_state_dict``, a collective), and every rank writes ``optimizer_rank<r>.pt``: its
  partition of the fp32 master weights and of the Adam states, from the ZeRO optimizer's own
  ``state_dict`` (what ``engine.save_checkpoint`` stores per rank), plus the loss scaler's numbers and
  the engine's step counters. Resuming, each rank hands its file to the ZeRO optimizer's
  ``load_state_dict`` (as ``engine.load_checkpoint`` does); under ZeRO-3 the parameters' shards are
  refreshed from the master weights, below stage 3 the whole weights are loaded first. The files hold
  tensors and plain numbers only, so they load with ``torch.load(weights_only=True)`` (DeepSpeed's own
  checkpoint files pickle Python objects and are read with ``weights_only=False``).

Every rank calls :func:`state_files` (collectives) and :func:`write_state_files` (into the shared
staging folder of ``rlhf.common.checkpoints.checkpoint_writer``), and :func:`load_state_files` to resume.
A checkpoint loads only under the sharding and number of processes that wrote it (checked by the
caller).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from classic_rl.safe_io import UserError
from rlhf.common.distributed import fsdp_version

__all__ = [
    "MODEL_FILE",
    "OPTIMIZER_FILE",
    "checkpoint_refusal",
    "load_state_files",
    "state_files",
    "write_state_files",
    "zero_optimizer_file",
]

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
_ENGINE_COUNTERS = ("global_steps", "global_samples", "micro_steps", "skipped_steps")


def zero_optimizer_file(rank: int) -> str:
    """This rank's DeepSpeed ZeRO optimizer partition in a checkpoint folder."""
    return f"optimizer_rank{rank}.pt"


def _zero_stage(accelerator: Any) -> int:
    """The DeepSpeed ZeRO stage (0 without DeepSpeed)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return int(plugin.zero_stage) if plugin is not None else 0


def _inner_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer``."""
    from accelerate.optimizer import AcceleratedOptimizer

    while isinstance(optimizer, AcceleratedOptimizer):
        optimizer = optimizer.optimizer
    return optimizer


def _full_state_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _plain(value: Any) -> Any:
    """``value`` with enums as their numbers and tensors detached on the CPU: what ``weights_only`` loads."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, Enum):
        return value.value
    if torch.is_tensor(value):
        return value.detach().cpu().clone()
    return value


def checkpoint_refusal(accelerator: Any) -> str | None:
    """Why this launch's sharding cannot be checkpointed (None: it can), known before any model loads.

    FSDP1 (GPUs only) is not handled here; DeepSpeed's NVMe optimizer offload keeps the optimizer state
    in swap files that a checkpoint of this module would miss."""
    if fsdp_version(accelerator) == 1:
        return "under FSDP need fsdp_version: 2 in the accelerate config (FSDP1 checkpoints are not supported)"
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    zero = ((getattr(plugin, "deepspeed_config", None) or {}).get("zero_optimization") or {}) if plugin else {}
    if str((zero.get("offload_optimizer") or {}).get("device", "none")).lower() == "nvme":
        return ("are not supported with DeepSpeed's NVMe optimizer offload (offload_optimizer_device: nvme); "
                "offload the optimizer to cpu or none")
    return None


def _checkpoint_event(zero: Any, name: str) -> None:
    """ZeRO-3's preparation / clean-up around reading or writing its state (engine.save_checkpoint's)."""
    hook = getattr(zero, name, None)
    if hook is not None:
        hook()


def _zero_partition(engine: Any) -> dict[str, Any]:
    """This rank's part of the ZeRO optimizer (fp32 master partition, Adam states), tensors and numbers."""
    from deepspeed.checkpoint.constants import LOSS_SCALER, PARAM_SLICE_MAPPINGS

    zero = engine.optimizer
    _checkpoint_event(zero, "checkpoint_event_prologue")  # ZeRO-3: parameters partitioned
    try:
        state = dict(zero.state_dict())
    finally:
        _checkpoint_event(zero, "checkpoint_event_epilogue")
    scaler = state.pop(LOSS_SCALER)
    state.pop(PARAM_SLICE_MAPPINGS, None)  # ZeRO-1/2: objects for universal checkpoints, unused here
    state = _plain(state)
    state["loss_scaler_numbers"] = {k: _plain(v) for k, v in vars(scaler).items()
                                    if isinstance(v, (bool, int, float)) or torch.is_tensor(v)}
    state["engine_counters"] = {k: int(getattr(engine, k)) for k in _ENGINE_COUNTERS if hasattr(engine, k)}
    return state


def state_files(accelerator: Any, model: nn.Module, optimizer: Any) -> dict[str, Any]:
    """The files this rank writes into a checkpoint folder: name -> tensors (``.safetensors``) or a state
    dict (``torch.save``). Every rank must call it: under ZeRO-3 and FSDP2 it gathers (collectives)."""
    main = accelerator.is_main_process
    version = fsdp_version(accelerator)
    if version == 2:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        weights = get_model_state_dict(model, options=_full_state_options())
        optim = get_optimizer_state_dict(model, _inner_optimizer(optimizer), options=_full_state_options())
        return {MODEL_FILE: weights, OPTIMIZER_FILE: optim} if main else {}
    if version is not None:
        raise ValueError("checkpoints under FSDP need fsdp_version: 2 in the accelerate config")
    if _zero_stage(accelerator) > 0:
        weights = accelerator.get_state_dict(model)  # ZeRO-3: gathered on rank 0 (zero3_save_16bit_model: true)
        files = {zero_optimizer_file(accelerator.process_index): _zero_partition(model)}
        if main:
            files[MODEL_FILE] = weights
        return files
    if not main:
        return {}
    return {MODEL_FILE: accelerator.unwrap_model(model).state_dict(), OPTIMIZER_FILE: optimizer.state_dict()}


def write_state_files(folder: Path, files: dict[str, Any]) -> None:
    """Write :func:`state_files`'s output into ``folder`` (a staging folder: no atomic writes needed)."""
    from safetensors.torch import save_file

    for name, content in files.items():
        if name.endswith(".safetensors"):
            save_file({k: v.detach().clone().contiguous() for k, v in content.items()}, str(folder / name))
        else:
            torch.save(content, folder / name)


def _require(path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"--resume_from_checkpoint {path.parent}: no {path.name}; the checkpoint is incomplete or was "
                        "written under another accelerate config (resume with the config that wrote it)")
    return path


def _load(path: Path) -> Any:
    return torch.load(_require(path), weights_only=True, map_location="cpu")


def load_state_files(accelerator: Any, model: nn.Module, optimizer: Any, folder: Path) -> None:
    """Put the weights and optimizer state of checkpoint ``folder`` back. Every rank must call it."""
    from safetensors.torch import load_file

    version, stage = fsdp_version(accelerator), _zero_stage(accelerator)
    if stage == 3:  # the weights come back with the fp32 master partitions
        _load_zero_partition(model, _load(folder / zero_optimizer_file(accelerator.process_index)))
        return
    weights = load_file(str(_require(folder / MODEL_FILE)))
    if stage > 0:  # ZeRO-1/2: whole weights on every rank, then this rank's optimizer partition
        partition = _load(folder / zero_optimizer_file(accelerator.process_index))
        accelerator.unwrap_model(model).load_state_dict(weights)
        _load_zero_partition(model, partition)
        return
    optim = _load(folder / OPTIMIZER_FILE)
    if version == 2:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        # Every rank holds the full state and keeps its shard (no broadcast needed).
        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, weights, options=options)
        set_optimizer_state_dict(model, _inner_optimizer(optimizer), optim, options=options)
        return
    accelerator.unwrap_model(model).load_state_dict(weights)
    optimizer.load_state_dict(optim)


def _load_zero_partition(engine: Any, state: dict[str, Any]) -> None:
    """Give the ZeRO optimizer its partition back (the path of ``engine.load_checkpoint``)."""
    import torch.distributed as dist
    from deepspeed.checkpoint.constants import LOSS_SCALER

    zero = engine.optimizer
    for name, value in state.pop("loss_scaler_numbers").items():
        setattr(zero.loss_scaler, name, value)
    for name, value in state.pop("engine_counters").items():
        setattr(engine, name, value)
    state[LOSS_SCALER] = zero.loss_scaler
    # load_state_dict takes every rank's state and uses its own (rank in the data-parallel group).
    states: list[dict[str, Any] | None] = [None] * dist.get_world_size(group=zero.dp_process_group)
    states[dist.get_rank(group=zero.dp_process_group)] = state
    _checkpoint_event(zero, "checkpoint_event_prologue")
    try:
        zero.load_state_dict(states, load_optimizer_states=True, load_from_fp32_weights=True)
    finally:
        _checkpoint_event(zero, "checkpoint_event_epilogue")
