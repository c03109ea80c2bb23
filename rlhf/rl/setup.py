"""Setup of an RL run: the hardware and precision, then the components every method trains with --
tokenizer, policy (LoRA), frozen reference, reward sources, the trained module (the method's), the
optimizer and the learning-rate schedule -- placed and wrapped by accelerate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rlhf.common.distributed import (
    check_deepspeed_settings,
    configure_deepspeed_batch,
    models_loaded_whole,
    prepare_frozen_model,
    sharded,
    unwrap_for_generation,
)
from rlhf.common.errors import ConfigError
from rlhf.common.models import load_causal_lm, load_reward_model, load_tokenizer
from rlhf.common.utils import hardware_defaults
from rlhf.rl.config import RLConfig
from rlhf.rl.rewards import RewardFunction, RewardModelScorer, RewardSources, load_reward_function
from rlhf.rl.trainable import disable_dropout

__all__ = ["Components", "build_components", "choose_precision", "stop_token_id", "with_lora"]

# (policy, same_vocab) -> the trained module: PolicyOnly or PolicyAndValue (the method decides)
BuildTrainable = Callable[[nn.Module, bool], nn.Module]


@dataclass
class Components:
    """What one RL run trains with, prepared by accelerate."""

    tokenizer: Any
    stop_id: int | None
    model: nn.Module  # the trained module, wrapped (DDP, DeepSpeed engine, FSDP)
    plain_model: nn.Module  # the same, unwrapped once
    ref_policy: nn.Module | None  # None: the policy with its LoRA adapter disabled is the reference
    reward_model: nn.Module | None
    reward_source: RewardSources
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def choose_precision(config: RLConfig) -> tuple[bool, str]:
    """``(use_cpu, "bf16" | "fp16" | "fp32")`` from the flags, else from the hardware."""
    hw = hardware_defaults()
    use_cpu = hw["use_cpu"] if config.use_cpu is None else config.use_cpu
    bf16 = (hw["bf16"] and not use_cpu) if config.bf16 is None else config.bf16
    fp16 = (hw["fp16"] and not use_cpu and not bf16) if config.fp16 is None else config.fp16
    return use_cpu, "bf16" if bf16 else "fp16" if fp16 else "fp32"


def stop_token_id(config: RLConfig, tokenizer) -> int | None:
    """The id responses are cut after (``--stop_token_id``, else ``--stop_token``); None: no cut."""
    if config.stop_token_id is not None:
        return config.stop_token_id
    if config.stop_token is None:
        return None
    if config.stop_token == "eos":
        return tokenizer.eos_token_id
    token_id = tokenizer.convert_tokens_to_ids(config.stop_token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"--stop_token {config.stop_token!r} is not a token of the tokenizer; use 'eos' or a vocabulary token")
    return token_id


def with_lora(config: RLConfig, model: nn.Module, task_type: str) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, task_type=task_type,
        target_modules=config.lora_target_modules or "all-linear",
    )
    return get_peft_model(model, lora)


def build_components(
    config: RLConfig, accelerator, tokenizer, build_trainable: BuildTrainable, num_updates: Callable[[], int],
    precision: str,
) -> Components:
    """Load, wrap and place every model; the optimizer and a schedule over ``num_updates()`` updates."""
    acc = accelerator
    stop_id = stop_token_id(config, tokenizer)
    with models_loaded_whole(acc):  # full weights at load; prepare() shards them
        model, ref_policy, reward_model, rm_tokenizer = _load_models(config, tokenizer, build_trainable)
    # With --env the environment's rewards are the reward (rlhf.envs): no reward source.
    reward_source = None if reward_model is not None or config.env else _reward_functions(config)

    # Fused AdamW: one kernel for all parameters instead of a loop over tensors.
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.learning_rate, eps=config.adam_epsilon, weight_decay=config.weight_decay,
        fused=acc.device.type in ("cpu", "cuda"),
    )
    total = num_updates()
    linear = config.lr_scheduler_type == "linear"
    # Stepped once per update (as TRL's PPO did): the u-th update runs at lr * (1 - u / total).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: max(0.0, 1.0 - u / total) if linear else 1.0)
    # accelerate scales each loss by 1/k and DeepSpeed reads k from here when its config says "auto".
    acc.gradient_accumulation_steps = config.gradient_accumulation_steps
    configure_deepspeed_batch(acc, config.per_device_train_batch_size, config.gradient_accumulation_steps)
    model, optimizer = acc.prepare(model, optimizer)
    check_deepspeed_settings(acc, config.gradient_accumulation_steps, config.max_grad_norm)
    # Frozen models: one copy per device under DDP, sharded like the policy under ZeRO-3 / FSDP. The
    # reference keeps the policy's weight dtype, so pi == pi_ref gives KL exactly 0 at the start; the
    # reward model only scores, so it may run in half precision.
    if ref_policy is not None:
        ref_policy = prepare_frozen_model(ref_policy, acc)
    if reward_model is not None:
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        reward_model = prepare_frozen_model(reward_model, acc, dtype=half)
        placed = reward_model
        scorer = RewardModelScorer(
            placed, rm_tokenizer, config.local_rollout_forward_batch_size,
            place=lambda: unwrap_for_generation(placed, acc, gather_deepspeed3_params=False),
        )
        reward_source = RewardSources([(config.reward_model_path, scorer)])
    # The wrapper (DDP, a DeepSpeed engine) never changes after prepare, so unwrap once: accelerate's
    # unwrap_model costs milliseconds a call (and imports DeepSpeed on the first).
    return Components(tokenizer, stop_id, model, acc.unwrap_model(model), ref_policy, reward_model,
                      reward_source, optimizer, scheduler)


def _reward_functions(config: RLConfig) -> RewardSources:
    pairs = config.reward_functions
    sources = [(name, RewardFunction(load_reward_function(name), name)) for name, _ in pairs]
    return RewardSources(sources, [weight for _, weight in pairs])


def _load_models(config: RLConfig, tokenizer, build_trainable: BuildTrainable):
    cfg = config
    trust = cfg.trust_remote_code
    policy = load_causal_lm(cfg.model_name_or_path, tokenizer=tokenizer, dtype=cfg.dtype, trust_remote_code=trust)
    peft_reference = False
    if cfg.use_peft:
        policy = with_lora(cfg, policy, "CAUSAL_LM")
        peft_reference = cfg.reference_from_disabled_adapter
    ref_policy = None
    if not peft_reference:
        ref_policy = load_causal_lm(cfg.model_name_or_path, tokenizer=tokenizer, dtype=cfg.dtype, trust_remote_code=trust)
        ref_policy.requires_grad_(False).eval()

    reward_model = rm_tokenizer = None
    same_vocab = True
    if cfg.reward_model_path is not None:
        rm_tokenizer = load_tokenizer(cfg.reward_model_path, trust_remote_code=trust)
        same_vocab = rm_tokenizer.get_vocab() == tokenizer.get_vocab()
        reward_model = load_reward_model(cfg.reward_model_path, tokenizer=rm_tokenizer, trust_remote_code=trust)
        reward_model.requires_grad_(False).eval()
        disable_dropout(reward_model)

    model = build_trainable(policy, same_vocab)
    for module in (model, ref_policy):
        if module is not None:
            disable_dropout(module)
    if cfg.gradient_checkpointing:
        kwargs = {"gradient_checkpointing_kwargs": {"use_reentrant": False}}
        policy.gradient_checkpointing_enable(**kwargs)
        critic = getattr(model, "critic", None)
        if critic is not None and hasattr(critic.backbone, "gradient_checkpointing_enable"):
            critic.backbone.gradient_checkpointing_enable(**kwargs)
    model.eval()
    return model, ref_policy, reward_model, rm_tokenizer


def refuse_unsupported(config: RLConfig, accelerator) -> None:
    """Settings this accelerate layout cannot run, refused before any model is loaded."""
    from rlhf.rl.training_state import checkpoint_refusal

    if config.use_peft and sharded(accelerator):
        raise ValueError(
            "--use_peft under DeepSpeed ZeRO-3 or FSDP is not supported (merging the LoRA "
            "adapter into the saved policy needs the full weights on one rank); use DDP or ZeRO-2 "
            "(configs/accelerate/multi_gpu.yaml, deepspeed_zero2.yaml), where a LoRA policy fits anyway"
        )
    refusal = checkpoint_refusal(accelerator) if (config.save_steps or config.resume_from_checkpoint) else None
    if refusal is not None:
        raise ConfigError(f"--save_steps / --resume_from_checkpoint {refusal}; or drop the flags")
