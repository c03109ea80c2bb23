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
- :func:`make_accelerator` -- the one place an ``Accelerator`` is built. Launched with a DeepSpeed or
  FSDP config (``accelerate launch --config_file ...``) on a machine without a GPU it still shards:
  DeepSpeed runs on its CPU accelerator (``DS_ACCELERATOR=cpu``, gloo), and FSDP2 -- which accelerate
  only applies on GPUs -- is switched on in accelerate's state so that ``accelerator.prepare`` runs the
  same ``fully_shard`` wrapping as on GPUs (also called by ``rlhf sft`` / ``rlhf reward`` before TRL builds its own
  Accelerator).

Without a distributed backend (one process, or DDP) every helper reduces to the plain operation, so
the same code runs on a laptop CPU. The DeepSpeed and FSDP branches follow TRL 1.16's
``trl.models.utils`` and ``trl.distributed``; tests/test_rlhf_sharded*.py run them on 2 CPU processes
(ZeRO-2, ZeRO-3, FSDP2), see docs/scaling.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "all_processes_finished",
    "make_accelerator",
    "all_reduce_sum",
    "check_deepspeed_settings",
    "configure_deepspeed_batch",
    "describe_distribution",
    "make_accelerator",
    "prepare_trainer_arguments",
    "quiet_deepspeed_collectives",
    "sharded",
    "evaluate_before_training",
    "check_trainer_sharding",
    "requested_sharding",
    "is_deepspeed_zero3",
    "keep_deepspeed_unloaded",
    "fsdp_version",
    "full_model_for_saving",
    "masked_whiten_across_processes",
    "models_loaded_whole",
    "needs_synchronised_generation",
    "prepare_frozen_model",
    "unwrap_for_generation",
]


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

    In one process this matches ``classic_rl.core.losses.masked_whiten(x, mask, shift_mean, eps)`` (the
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
        # FSDP2 takes the first module to run forward as the root of its tree; the submodules called
        # below (policy, critic, a reward model's body) must not claim that role before the real root.
        root._get_fsdp_state()._lazy_init()
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


# ----------------------------------------------------------------------------- building the Accelerator
def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


# DeepSpeed's communication backend calls torch's deprecated names of these two collectives; torch warns
# at every call (hundreds of lines per run). Not the user's doing and nothing they can change.
_DEEPSPEED_DEPRECATED_COLLECTIVES = r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated"


def quiet_deepspeed_collectives() -> None:
    """Filter exactly torch's deprecation warnings of the collectives DeepSpeed calls (see above)."""
    import warnings

    warnings.filterwarnings("ignore", message=_DEEPSPEED_DEPRECATED_COLLECTIVES, category=FutureWarning)


def keep_deepspeed_unloaded() -> None:
    """Outside a DeepSpeed launch, keep accelerate from importing DeepSpeed just to ask whether a model is a
    DeepSpeed engine (``extract_model_from_parallel``, run by every ``save_pretrained``): the import costs
    most of a second and, without a GPU, logs DeepSpeed's "Setting accelerator to CPU" warning on every
    command. No DeepSpeed engine can exist in such a process, so the answer is the same. No-op once
    DeepSpeed is imported (a user's own code may use it)."""
    import sys

    if requested_sharding() == "deepspeed" or "deepspeed" in sys.modules:
        return
    import accelerate.utils.other

    accelerate.utils.other.is_deepspeed_available = lambda: False


def requested_sharding() -> str | None:
    """``"deepspeed"`` or ``"fsdp"`` when ``accelerate launch`` was given such a config (it exports
    ``ACCELERATE_USE_DEEPSPEED`` / ``ACCELERATE_USE_FSDP`` to the workers), else None."""
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    if _env_flag("ACCELERATE_USE_FSDP"):
        return "fsdp"
    return None


def _cpu_only() -> bool:
    return not torch.cuda.is_available() or _env_flag("ACCELERATE_USE_CPU")


def _cpu_backend(cpu: bool) -> tuple[bool, bool]:
    """``(cpu flag for the Accelerator, whether FSDP must be switched on by hand)`` for this launch.

    - DeepSpeed on a machine without a GPU: ``DS_ACCELERATOR=cpu`` (DeepSpeed's CPU accelerator, gloo)
      and ``cpu=False`` -- accelerate drops DeepSpeed silently whenever the CPU is forced.
    - FSDP on a machine without a GPU: accelerate 1.15 only enables its FSDP plugin for GPU-like
      devices, so the Accelerator is built on the CPU (gloo) and its process-wide state is then switched
      to FSDP with the plugin the launcher described (:func:`make_accelerator`).
    """
    sharding = requested_sharding()
    if sharding is None or not _cpu_only():
        return cpu, False
    if sharding == "deepspeed":
        if torch.cuda.is_available():
            raise ValueError(
                "DeepSpeed was launched with ACCELERATE_USE_CPU=true on a machine with GPUs; unset "
                "ACCELERATE_USE_CPU to train on the GPUs, or hide them (CUDA_VISIBLE_DEVICES=) to use the CPU"
            )
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        from accelerate.state import PartialState

        # Without a GPU accelerate finds no backend and would count ONE process (while DeepSpeed's own
        # group has them all): name gloo, so that process_index / num_processes are the real ones.
        PartialState(cpu=False, backend="gloo")
        return False, False
    return True, True


def _switch_to_fsdp(accelerator: Any) -> None:
    """Make accelerate's process-wide state FSDP (plugin from the launcher's FSDP_* variables), so that
    ``prepare`` runs accelerate's own FSDP2 wrapping (``fully_shard`` per transformer block) on the CPU,
    the code that runs on GPUs. Every Accelerator built later in this process (TRL's Trainer builds its
    own) shares the state."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if accelerator.num_processes < 2:
        return  # nothing to shard over: plain one-process training
    plugin = getattr(accelerator.state, "fsdp_plugin", None) or FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ValueError("FSDP on the CPU needs fsdp_version: 2 in the accelerate config (FSDP1 needs GPUs)")
    if accelerator.state.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.state.mixed_precision)
    for shared in (PartialState._shared_state, AcceleratorState._shared_state):
        shared["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin


def make_accelerator(cpu: bool, precision: str) -> Any:
    """The one place an ``Accelerator`` is built: this run's precision (``"bf16"``, ``"fp16"`` or
    ``"fp32"``), even if an earlier step in the same process (the pipeline's SFT or reward training)
    initialised accelerate's process-wide state with another one. Launched with a DeepSpeed or FSDP
    config on a machine without a GPU it still shards (DeepSpeed's CPU accelerator; FSDP2 switched on by
    hand, see ``_cpu_backend``). ``rlhf sft`` / ``rlhf reward`` call it before TRL builds its own
    Accelerator, which then shares this state."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if requested_sharding() == "deepspeed":
        quiet_deepspeed_collectives()
    cpu, fsdp_by_hand = _cpu_backend(cpu)
    mixed_precision = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[precision]
    try:
        accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision)
    except ValueError as err:
        if "already been initialized" not in str(err):
            raise
        AcceleratorState._reset_state()  # keeps the distributed set-up (PartialState), resets precision
        accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision)
    if fsdp_by_hand:
        _switch_to_fsdp(accelerator)
    return accelerator


def prepare_trainer_arguments(training_args: Any) -> None:
    """Before a Trainer-based command (``rlhf sft``, ``rlhf reward``) builds its Trainer: on a machine
    without a GPU launched with a DeepSpeed config, keep DeepSpeed (``use_cpu=False``: a forced CPU
    silently drops it), on DeepSpeed's CPU accelerator over gloo. No-op otherwise (FSDP is switched on
    after the Trainer exists, :func:`check_trainer_sharding`; on GPUs accelerate handles both)."""
    if requested_sharding() == "deepspeed":
        quiet_deepspeed_collectives()
    if requested_sharding() != "deepspeed" or not _cpu_only():
        return
    if torch.cuda.is_available():
        _cpu_backend(True)  # raises the explanation
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    training_args.use_cpu = False
    training_args.ddp_backend = "gloo"  # without a GPU accelerate finds no backend and counts one process


def check_trainer_sharding(trainer: Any) -> None:
    """After a Trainer-based command built its Trainer, before training: on a machine without a GPU
    launched with an FSDP config, switch the Trainer's Accelerator to FSDP (accelerate 1.15 ignores FSDP
    without a GPU), so that ``trainer.train()`` shards the model with accelerate's FSDP2 code; and refuse
    LoRA under ZeRO-3 / FSDP now rather than after training (saving merges the adapter on one rank)."""
    if requested_sharding() == "fsdp" and _cpu_only():
        _switch_to_fsdp(trainer.accelerator)
        trainer.is_fsdp_enabled = trainer.accelerator.num_processes > 1
    if sharded(trainer.accelerator) and hasattr(trainer.model, "peft_config"):
        raise ValueError(_PEFT_SHARDED)


_PEFT_SHARDED = (
    "--use_peft under DeepSpeed ZeRO-3 or FSDP is not supported by the rlhf commands (merging the LoRA adapter "
    "into the saved model needs the full weights on one rank); use DDP or ZeRO-2 "
    "(configs/accelerate/multi_gpu.yaml, deepspeed_zero2.yaml), where a LoRA model fits anyway"
)


def evaluate_before_training(trainer: Any) -> dict[str, float]:
    """``trainer.evaluate()`` before ``trainer.train()``, safe under DeepSpeed (any stage).

    A Trainer that evaluates first wraps its model in a DeepSpeed *inference* engine, and ``train()``
    then finds the model already wrapped, prepares only the optimizer and fails at the first backward
    (accelerate has no training engine). The inference wrapping is undone here, so ``train()`` builds
    the training engine around the same module (under ZeRO-3 its parameters stay partitioned)."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    if getattr(trainer, "is_deepspeed_enabled", False) and plugin is not None and int(plugin.zero_stage) < 3:
        # transformers refuses a DeepSpeed inference engine below stage 3 ("ZeRO inference only makes
        # sense with ZeRO Stage 3"); the parameters are whole on every rank, so evaluate the plain model.
        trainer.is_deepspeed_enabled = False
        try:
            metrics = trainer.evaluate()
        finally:
            trainer.is_deepspeed_enabled = True
    else:
        metrics = trainer.evaluate()
    if getattr(trainer, "is_deepspeed_enabled", False):
        trainer.model_wrapped = trainer.model
        trainer.deepspeed = None
        trainer.accelerator._models.clear()
    return metrics


def sharded(accelerator: Any) -> bool:
    """Whether trained parameters are sharded over the ranks (ZeRO-3 or FSDP): saving must gather."""
    return is_deepspeed_zero3(accelerator) or fsdp_version(accelerator) is not None


def full_model_for_saving(trainer: Any) -> nn.Module | None:
    """Under ZeRO-3 or FSDP: a plain copy of a Trainer's model holding the full trained weights, on rank 0
    (None on the other ranks); None without sharding (save ``trainer.model`` itself). Every rank must call
    it: the weights are gathered with ``accelerator.get_state_dict`` (a collective; DeepSpeed needs
    ``zero3_save_16bit_model: true``). Saving the sharded model from rank 0 alone would write empty
    placeholders (ZeRO-3) or hang in a collective (FSDP)."""
    accelerator = trainer.accelerator
    if not sharded(accelerator):
        return None
    model = trainer.model
    if hasattr(model, "peft_config"):
        raise ValueError(_PEFT_SHARDED)
    wrapped = getattr(trainer, "model_wrapped", None) if is_deepspeed_zero3(accelerator) else model
    state_dict = accelerator.get_state_dict(wrapped if wrapped is not None else model)
    if not accelerator.is_main_process:
        return None
    with models_loaded_whole():  # rank 0 alone: no deepspeed.zero.Init (some classes build submodels from config)
        plain = type(model)(model.config)
    missing, unexpected = plain.load_state_dict(state_dict, strict=False)
    plain.tie_weights()
    tied = {name for name, _ in plain.named_parameters(remove_duplicate=False)} - {n for n, _ in plain.named_parameters()}
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"gathered weights do not fit {type(model).__name__}: missing {missing}, unexpected {unexpected}")
    return plain.eval()


def configure_deepspeed_batch(accelerator: Any, micro_batch_size: int, gradient_accumulation_steps: int) -> None:
    """Give DeepSpeed the batch sizes it insists on when ``prepare`` sees no dataloader (TRL's PPOTrainer
    did the same): ``train_micro_batch_size_per_gpu`` and a consistent ``train_batch_size``. No-op
    without DeepSpeed."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    config = plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    if config.get("gradient_accumulation_steps", "auto") == "auto":
        config["gradient_accumulation_steps"] = gradient_accumulation_steps
    config["train_batch_size"] = micro_batch_size * int(config["gradient_accumulation_steps"]) * accelerator.num_processes


def describe_distribution(accelerator: Any) -> dict[str, Any]:
    """What summary.json records about the process layout: accelerate's ``distributed_type`` name (NO,
    MULTI_GPU, MULTI_CPU, DEEPSPEED, FSDP), ``zero_stage`` under DeepSpeed, ``fsdp_version`` under FSDP,
    and ``world_size``."""
    distributed_type = accelerator.distributed_type
    out: dict[str, Any] = {
        "distributed_type": getattr(distributed_type, "value", str(distributed_type)),
        "world_size": accelerator.num_processes,
    }
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        out["zero_stage"] = int(plugin.zero_stage)
    version = fsdp_version(accelerator)
    if version is not None:
        out["fsdp_version"] = int(version)
    return out


@contextmanager
def models_loaded_whole(accelerator: Any = None) -> Iterator[None]:
    """Load models with full parameters in this block even under ZeRO-3.

    accelerate (and TrainingArguments) register the DeepSpeed config with transformers whatever
    ``zero3_init_flag`` says, and under stage 3 ``from_pretrained`` then partitions every model while
    loading (``deepspeed.zero.Init``, a collective): parameters become empty placeholders, so
    initialising a score or value head from the loaded weights fails, and a load on rank 0 alone hangs.
    ``accelerator.prepare`` / :func:`prepare_frozen_model` / the Trainer shard the models afterwards.
    With ``zero3_init_flag: true`` in ``accelerator``'s DeepSpeed config the caller is refused (it would
    have to cope with partitioned parameters). No-op without ZeRO-3.
    """
    import transformers.integrations.deepspeed as hf_deepspeed

    plugin = getattr(accelerator.state, "deepspeed_plugin", None) if accelerator is not None else None
    if plugin is not None and int(plugin.zero_stage) == 3 and plugin.zero3_init_flag:
        raise ValueError(
            "zero3_init_flag: true in the accelerate config's deepspeed_config is not supported: the rlhf "
            "commands initialise score and value heads from loaded weights; set zero3_init_flag: false "
            "(ZeRO-3 still shards every model when it is prepared)"
        )
    if not hf_deepspeed.is_deepspeed_zero3_enabled():
        yield
        return
    registered = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = registered
