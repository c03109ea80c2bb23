"""The shared machinery of `rlhf ppo`, `rlhf grpo` and `rlhf rloo`: everything but the loss and the advantages.

:class:`RLTrainer` owns the accelerator, data, models (policy, frozen reference, reward sources, LoRA),
sampling and scoring (:meth:`RLTrainer.rollout`), held-out evaluation, the training loop with
logging, divergence checks, checkpoints and exact resume, and saving. A method subclasses it and
writes :meth:`RLTrainer.update_policy`: its advantages (``classic_rl.core.advantages``) and its loss
on a micro batch (from ``classic_rl.core.losses``), which :meth:`RLTrainer.optimize_on_batch` runs over
the batch (epochs / iterations x micro batches, gradient accumulation through ``accelerator.accumulate``
and :meth:`RLTrainer.optimizer_step`).

One update (:meth:`RLTrainer.step`): this rank's prompts (:meth:`next_batch`; each prompt repeated
``num_generations`` times for the group methods), a rollout (sample, cut after the stop token, score,
reference log-probs, KL), the method's update, the learning-rate schedule, metrics averaged over ranks.

Checkpoints (``--save_steps``): ``OUTPUT_DIR/checkpoint-<update>/`` holds the trained weights
(``model.safetensors``, full even when sharded), optimizer and scheduler (``torch.save``, read back with
``weights_only=True``; under DeepSpeed ZeRO one optimizer partition per rank, see
``rlhf.rl.training_state``), every rank's RNG states, the data position, the method's own state (e.g. the
adaptive KL coefficient) and the metrics so far; ``--resume_from_checkpoint`` continues so that the run
ends with the weights and metrics of the uninterrupted run, under DDP, DeepSpeed ZeRO and FSDP2 alike.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from classic_rl.safe_io import UserError, atomic_write_text, dumps_strict
from rlhf.common.checkpoints import (
    checkpoint_writer,
    prepare_output_dir,
    prune_checkpoints,
    resolve_resume_path,
)
from rlhf.common.data import DataArguments, load_train_eval, render_prompt, validate_dataset
from rlhf.common.distributed import (
    all_processes_finished,
    check_deepspeed_settings,
    configure_deepspeed_batch,
    describe_distribution,
    make_accelerator,
    models_loaded_whole,
    needs_synchronised_generation,
    prepare_frozen_model,
    sharded,
    unwrap_for_generation,
)
from rlhf.common.errors import ConfigError, TrainingDiverged
from rlhf.common.models import load_causal_lm, load_reward_model, load_tokenizer
from rlhf.common.utils import (
    METRICS_FILE,
    SUMMARY_FILE,
    seed_everything,
    staged_output,
    to_plain,
    write_config,
    write_json,
)
from rlhf.rl.config import RLConfig
from rlhf.rl.experience import RewardSources, Rollout
from rlhf.rl.rollout import (
    apply_missing_stop_penalty,
    kl_per_token,
    left_pad,
    logits_for_responses,
    sample_responses,
    token_logprobs,
    truncate_after_stop,
)
from rlhf.rl.trainable import RewardFunction, RewardModelScorer, disable_dropout, load_reward_function
from rlhf.rl.training_state import checkpoint_refusal, load_state_files, state_files, write_state_files

__all__ = ["PolicyOnly", "RLTrainer", "run_trainer"]

TRAINER_STATE = "trainer_state.json"


class PolicyOnly(nn.Module):
    """The trainable module of the critic-free methods (GRPO, RLOO): the policy alone, with the interface
    of ``rlhf.rl.trainable.PolicyAndValue`` (``.policy``, ``.critic``; forward gives logits and no values)."""

    def __init__(self, policy: nn.Module, share_prompts: bool = False):
        super().__init__()
        self.policy = policy
        self.critic = None
        self.share_prompts = share_prompts  # run each distinct prompt once (rlhf.rl.rollout.logits_for_responses)

    def forward(self, query_responses: Tensor, attention_mask: Tensor, context_length: int) -> tuple[Tensor, None]:
        logits = logits_for_responses(self.policy, query_responses, attention_mask, context_length, self.share_prompts)
        return logits, None


class RLTrainer:
    """Data, models, sampling, evaluation, loop, checkpoints and saving shared by the RL methods."""

    uses_critic = False

    def __init__(self, config: RLConfig, accelerator=None):
        from rlhf.common.utils import hardware_defaults

        self.config = config.validate()
        self.command = config.command
        hw = hardware_defaults()
        use_cpu = hw["use_cpu"] if config.use_cpu is None else config.use_cpu
        bf16 = (hw["bf16"] and not use_cpu) if config.bf16 is None else config.bf16
        fp16 = (hw["fp16"] and not use_cpu and not bf16) if config.fp16 is None else config.fp16
        self.precision = "bf16" if bf16 else "fp16" if fp16 else "fp32"
        self.accelerator = accelerator or make_accelerator(use_cpu, self.precision)
        acc = self.accelerator
        self.rank, self.world_size, self.device = acc.process_index, acc.num_processes, acc.device
        if config.use_peft and sharded(acc):
            raise ValueError(
                "--use_peft under DeepSpeed ZeRO-3 or FSDP is not supported (merging the LoRA "
                "adapter into the saved policy needs the full weights on one rank); use DDP or ZeRO-2 "
                "(configs/accelerate/multi_gpu.yaml, deepspeed_zero2.yaml), where a LoRA policy fits anyway"
            )
        refusal = checkpoint_refusal(acc) if (config.save_steps or config.resume_from_checkpoint) else None
        if refusal is not None:
            raise ConfigError(f"--save_steps / --resume_from_checkpoint {refusal}; or drop the flags")
        self.repeats = getattr(config, "num_generations", 1)  # completions per prompt
        # Repeated prompts are computed once in sampling and no-grad forwards; not when a forward is a
        # collective (ZeRO-3, FSDP), where every rank must run the same forwards whatever its prompts.
        self.share_prompts = self.repeats > 1 and not sharded(acc)
        if (config.local_batch_size * self.world_size) % self.repeats:
            raise ConfigError(
                "the generation batch (per_device_train_batch_size x gradient_accumulation_steps x "
                f"{self.world_size} processes = {config.local_batch_size * self.world_size} completions) must be a "
                f"multiple of --num_generations {self.repeats}"
            )
        seed_everything(config.seed)  # same initial weights (value head) on every rank

        self.tokenizer = load_tokenizer(config.model_name_or_path, trust_remote_code=config.trust_remote_code)
        self.pad_id = self.tokenizer.pad_token_id
        self.stop_id = self._stop_token_id()
        self._load_data()
        with models_loaded_whole(acc):  # full weights at load; prepare() shards them
            self._build_models()

        # Fused AdamW: one kernel for all parameters instead of a loop over tensors.
        optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=config.learning_rate, eps=config.adam_epsilon, weight_decay=config.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.num_updates = config.num_updates(self.world_size, len(self.train_prompts))
        total = self.num_updates
        linear = config.lr_scheduler_type == "linear"
        # Stepped once per update (as TRL's PPO did): the u-th update runs at lr * (1 - u / total).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: max(0.0, 1.0 - u / total) if linear else 1.0)
        # accelerate scales each loss by 1/k and DeepSpeed reads k from here when its config says "auto".
        acc.gradient_accumulation_steps = config.gradient_accumulation_steps
        configure_deepspeed_batch(acc, config.per_device_train_batch_size, config.gradient_accumulation_steps)
        self.model, self.optimizer = acc.prepare(self.model, optimizer)
        # The wrapper (DDP, a DeepSpeed engine) never changes after prepare, so unwrap once: accelerate's
        # unwrap_model costs milliseconds a call (and imports DeepSpeed on the first).
        self._plain_model = acc.unwrap_model(self.model)
        self._sharded = sharded(acc)
        check_deepspeed_settings(acc, config.gradient_accumulation_steps, config.max_grad_norm)
        # Frozen models: one copy per device under DDP, sharded like the policy under ZeRO-3 / FSDP. The
        # reference keeps the policy's weight dtype, so pi == pi_ref gives KL exactly 0 at the start; the
        # reward model only scores, so it may run in half precision.
        if self.ref_policy is not None:
            self.ref_policy = prepare_frozen_model(self.ref_policy, acc)
        if self.reward_model is not None:
            half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
            self.reward_model = prepare_frozen_model(self.reward_model, acc, dtype=half)
            scorer = RewardModelScorer(
                self.reward_model, self._rm_tokenizer, config.local_rollout_forward_batch_size,
                place=lambda: unwrap_for_generation(self.reward_model, acc, gather_deepspeed3_params=False),
            )
            self.reward_source = RewardSources([(config.reward_model_path, scorer)])
        # Token-by-token sampling must run the same number of forwards on every rank when a forward is a
        # collective (FSDP; ZeRO-3 without the one-off gather).
        self._sync_generation = needs_synchronised_generation(acc, config.ds3_gather_for_generation)

        self.sample_generator = torch.Generator(device=self.device).manual_seed(config.seed + self.rank)
        self.shuffle_generator = torch.Generator().manual_seed(config.seed + 1000 + self.rank)
        self.data_generator = torch.Generator().manual_seed(config.seed)  # same order on every rank
        self._index_buffer: list[int] = []
        self.recompute_logprobs = (
            self.precision != "fp32" if config.recompute_rollout_logprobs is None else config.recompute_rollout_logprobs
        )
        self.episode = 0
        self.update = 0  # updates completed
        self.history: list[dict[str, Any]] = []  # logged metrics rows so far
        self.before: dict[str, float] | None = None
        self.elapsed = 0.0  # training seconds before this process (resumed runs)
        self._written_checkpoints: list[Path] = []

    # ------------------------------------------------------------------ what a method provides
    def update_policy(self, batch: Rollout) -> dict[str, Any]:
        """Advantages and the optimisation of one update; return this rank's scalar metrics (averaged
        over ranks by the caller)."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        """Method state a checkpoint must keep besides weights, optimizer and RNGs (JSON-able)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`extra_state`."""

    def summary_extras(self, last: dict[str, float]) -> dict[str, Any]:
        """Method-specific entries of summary.json."""
        return {}

    def build_trainable(self, policy: nn.Module, same_vocab: bool) -> nn.Module:
        """The trained module (policy, and for PPO its critic); default: the policy alone."""
        return PolicyOnly(policy)

    # ------------------------------------------------------------------ setup
    def _stop_token_id(self) -> int | None:
        cfg = self.config
        if cfg.stop_token_id is not None:
            return cfg.stop_token_id
        if cfg.stop_token is None:
            return None
        if cfg.stop_token == "eos":
            return self.tokenizer.eos_token_id
        token_id = self.tokenizer.convert_tokens_to_ids(cfg.stop_token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"--stop_token {cfg.stop_token!r} is not a token of the tokenizer; use 'eos' or a vocabulary token")
        return token_id

    def _load_data(self) -> None:
        cfg = self.config
        data_args = DataArguments(
            dataset_name=cfg.dataset_name, dataset_config=cfg.dataset_config,
            dataset_train_split=cfg.dataset_train_split, dataset_test_split=cfg.dataset_test_split,
            eval_dataset_name=cfg.eval_dataset_name, eval_holdout_fraction=cfg.eval_holdout_fraction,
        )
        train, held_out = load_train_eval(data_args, seed=cfg.seed)
        field = cfg.dataset_text_field
        if field != "prompt":  # a prompt column under another name (TRL's dataset_text_field)
            if field not in train.column_names:
                raise ValueError(f"--dataset_text_field '{field}' is not a column of '{cfg.dataset_name}' "
                                 f"(columns: {train.column_names})")
            train = train.rename_column(field, "prompt")
            if held_out is not None and field in held_out.column_names:
                held_out = held_out.rename_column(field, "prompt")
        validate_dataset(train, "ppo", f"dataset '{cfg.dataset_name}'")
        if held_out is None or len(held_out) == 0:
            raise ValueError(
                f"dataset '{cfg.dataset_name}' leaves no held-out prompts for reward_mean_before/after: give "
                "--eval_dataset_name, a dataset with a test split, or --eval_holdout_fraction > 0"
            )
        validate_dataset(held_out, "ppo", "held-out prompts")
        self.train_prompts = [render_prompt(p, self.tokenizer) for p in train["prompt"]]
        self.eval_prompts = [render_prompt(p, self.tokenizer) for p in held_out["prompt"][: cfg.num_eval_prompts]]
        self._context_limit = self._prompt_token_limit()
        self.train_ids = self._tokenize(self.train_prompts, "training")
        self.eval_ids = self._tokenize(self.eval_prompts, "held-out")

    def _prompt_token_limit(self) -> int | None:
        """Prompt tokens that fit before ``max_new_tokens`` in the model's context (None: unknown)."""
        from transformers import AutoConfig

        try:
            model_config = AutoConfig.from_pretrained(self.config.model_name_or_path, trust_remote_code=self.config.trust_remote_code)
        except (OSError, ValueError):
            return None
        context = getattr(model_config.get_text_config(), "max_position_embeddings", None)
        if context is None:
            return None
        limit = int(context) - self.config.max_new_tokens
        if limit < 1:
            raise ConfigError(
                f"the model's context is {context} tokens, which leaves no room for a prompt "
                f"before {self.config.max_new_tokens} new tokens; lower the completion length"
            )
        return limit

    def _tokenize(self, prompts: list[str], which: str) -> list[list[int]]:
        ids = self.tokenizer(prompts, add_special_tokens=True)["input_ids"]
        if self.config.max_prompt_length is not None:
            ids = [x[-self.config.max_prompt_length :] for x in ids]
        limit = self._context_limit
        if limit is not None:
            too_long = sum(len(x) > limit for x in ids)
            if too_long:
                warnings.warn(
                    f"rlhf {self.command}: {too_long} of {len(ids)} {which} prompts are longer than the {limit} tokens "
                    f"that fit before {self.config.max_new_tokens} new tokens in the model's context; keeping their "
                    "last tokens (set --max_prompt_length to choose)", stacklevel=2,
                )
                ids = [x[-limit:] for x in ids]
        for prompt, x in zip(prompts, ids):
            if not x:
                raise ValueError(f"prompt {prompt!r} tokenizes to no tokens; remove empty prompts from the dataset")
        return ids

    def _reward_functions(self) -> RewardSources:
        cfg = self.config
        names = getattr(cfg, "reward_fn_names", None) or [cfg.reward_fn]
        sources = [(name, RewardFunction(load_reward_function(name), name)) for name in names]
        return RewardSources(sources, getattr(cfg, "reward_weights", None))

    def _build_models(self) -> None:
        cfg = self.config
        trust = cfg.trust_remote_code
        policy = load_causal_lm(cfg.model_name_or_path, tokenizer=self.tokenizer, dtype=cfg.dtype, trust_remote_code=trust)
        self.peft_reference = False
        if cfg.use_peft:
            policy = self._with_lora(policy, "CAUSAL_LM")
            self.peft_reference = cfg.reference_from_disabled_adapter
        self.ref_policy = None
        if not self.peft_reference:
            self.ref_policy = load_causal_lm(
                cfg.model_name_or_path, tokenizer=self.tokenizer, dtype=cfg.dtype, trust_remote_code=trust
            )
            self.ref_policy.requires_grad_(False).eval()

        self.reward_model = None
        same_vocab = True
        if cfg.reward_model_path is not None:
            rm_tokenizer = load_tokenizer(cfg.reward_model_path, trust_remote_code=trust)
            same_vocab = rm_tokenizer.get_vocab() == self.tokenizer.get_vocab()
            self.reward_model = load_reward_model(cfg.reward_model_path, tokenizer=rm_tokenizer, trust_remote_code=trust)
            self.reward_model.requires_grad_(False).eval()
            disable_dropout(self.reward_model)
            self._rm_tokenizer = rm_tokenizer  # the scorer is built once the model is placed (__init__)
        else:
            self.reward_source = self._reward_functions()

        self.model = self.build_trainable(policy, same_vocab)
        for module in (self.model, self.ref_policy):
            if module is not None:
                disable_dropout(module)
        if cfg.gradient_checkpointing:
            kwargs = {"gradient_checkpointing_kwargs": {"use_reentrant": False}}
            policy.gradient_checkpointing_enable(**kwargs)
            critic = getattr(self.model, "critic", None)
            if critic is not None and hasattr(critic.backbone, "gradient_checkpointing_enable"):
                critic.backbone.gradient_checkpointing_enable(**kwargs)
        self.model.eval()

    def _with_lora(self, model: nn.Module, task_type: str) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        cfg = self.config
        lora = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, task_type=task_type,
            target_modules=cfg.lora_target_modules or "all-linear",
        )
        return get_peft_model(model, lora)

    # ------------------------------------------------------------------ data
    def next_batch(self) -> tuple[list[str], list[list[int]]]:
        """This rank's prompts for the next update: slices of one seeded order shared by all ranks. With
        ``num_generations`` G each prompt appears G times in a row (its group), groups laid out over the
        ranks in order, so the global batch is the same whatever the world size."""
        local = self.config.local_batch_size
        need = local * self.world_size // self.repeats
        while len(self._index_buffer) < need:
            self._index_buffer += torch.randperm(len(self.train_prompts), generator=self.data_generator).tolist()
        chosen, self._index_buffer = self._index_buffer[:need], self._index_buffer[need:]
        rows = [i for i in chosen for _ in range(self.repeats)]
        mine = rows[self.rank * local : (self.rank + 1) * local]
        return [self.train_prompts[i] for i in mine], [self.train_ids[i] for i in mine]

    # ------------------------------------------------------------------ rollout
    @property
    def policy(self) -> nn.Module:
        return self._plain_model.policy

    def _unwrapped(self, gather_deepspeed3_params: bool) -> AbstractContextManager[nn.Module]:
        """The trainable module for many small forwards: ``rlhf.common.distributed.unwrap_for_generation`` when the
        parameters are sharded (ZeRO-3, FSDP), else the plain module (all that function would do)."""
        if self._sharded:
            return unwrap_for_generation(self.model, self.accelerator, gather_deepspeed3_params)
        return nullcontext(self._plain_model)

    def _reference_logits(
        self, query_responses: Tensor, attention_mask: Tensor, context_length: int, policy: nn.Module | None = None
    ) -> Tensor:
        """Logits of the frozen reference: its own model, or ``policy`` (default: the trained one) with
        the LoRA adapter disabled."""
        args = (query_responses, attention_mask, context_length, self.share_prompts)
        if self.ref_policy is not None:
            return logits_for_responses(self.ref_policy, *args)
        policy = self.policy if policy is None else policy
        with policy.disable_adapter():
            return logits_for_responses(policy, *args)

    @torch.no_grad()
    def generate(self, query_ids: list[list[int]], generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Left-padded queries ``(B, P)``, their mask, sampled responses ``(B, R)`` and their logprobs."""
        cfg = self.config
        queries, query_mask = left_pad(query_ids, self.pad_id, self.device)
        chunks = []
        if self.model.training:  # a transformers model's train()/eval() is not free; only switch when needed
            self.model.eval()
        acc = self.accelerator
        all_finished = all_processes_finished if self._sync_generation else None
        # Under ZeRO-3 the policy's parameters are gathered once for the whole batch (not once per token).
        with self._unwrapped(cfg.ds3_gather_for_generation) as unwrapped, acc.autocast():
            for start in range(0, queries.shape[0], cfg.local_rollout_forward_batch_size):
                end = start + cfg.local_rollout_forward_batch_size
                chunks.append(sample_responses(
                    unwrapped.policy, queries[start:end], query_mask[start:end],
                    max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, pad_token_id=self.pad_id,
                    stop_token_ids=() if self.stop_id is None else (self.stop_id,), generator=generator,
                    all_finished=all_finished, share_prompts=self.share_prompts,
                ))
        width = max(c.responses.shape[1] for c in chunks)
        responses = torch.cat([nn.functional.pad(c.responses, (0, width - c.responses.shape[1]), value=self.pad_id) for c in chunks])
        logprobs = torch.cat([nn.functional.pad(c.logprobs, (0, width - c.logprobs.shape[1])) for c in chunks])
        return queries, query_mask, responses, logprobs

    @torch.no_grad()
    def rollout(self, prompts: list[str], query_ids: list[list[int]], generator: torch.Generator) -> Rollout:
        """Sample, truncate, score and evaluate one batch: the policy's and the reference's logprobs of
        the sampled tokens, the critic's values (PPO), the reward sources' scores, the per-token KL."""
        cfg = self.config
        queries, query_mask, responses, gen_logprobs = self.generate(query_ids, generator)
        cut = truncate_after_stop(responses, self.stop_id, self.pad_id)
        context_length = queries.shape[1]
        query_responses = torch.cat([queries, cut.responses], dim=1)
        attention_mask = torch.cat([query_mask, cut.mask.long()], dim=1)

        logprobs, ref_logprobs, values = [], [], []
        step = cfg.local_rollout_forward_batch_size
        # No one-off gather here (one forward per chunk); under FSDP the root's own parameters are
        # materialised so the policy's and critic's submodules can be called directly.
        acc = self.accelerator
        with self._unwrapped(gather_deepspeed3_params=False) as unwrapped, acc.autocast():
            # A value head on the policy needs the full forward anyway; a separate critic does not.
            head_on_policy = self.uses_critic and unwrapped.critic is None
            for start in range(0, queries.shape[0], step):
                qr, am, resp = (t[start : start + step] for t in (query_responses, attention_mask, cut.responses))
                if self.recompute_logprobs or head_on_policy:
                    logits, value = unwrapped(qr, am, context_length)
                    logprobs.append(token_logprobs(logits, resp, cfg.temperature))
                    del logits
                else:
                    logprobs.append(gen_logprobs[start : start + step])
                    value = unwrapped.critic(qr, am)[:, context_length - 1 : -1] if self.uses_critic else None
                values.append(torch.zeros_like(resp, dtype=torch.float32) if value is None else value.float())
                ref_logits = self._reference_logits(qr, am, context_length, unwrapped.policy)
                ref_logprobs.append(token_logprobs(ref_logits, resp, cfg.temperature))
                del ref_logits
        valid = cut.mask.float()
        logprobs = torch.cat(logprobs) * valid
        ref_logprobs = torch.cat(ref_logprobs) * valid
        values = torch.cat(values) * valid

        completions = self.tokenizer.batch_decode(cut.responses.masked_fill(~cut.mask, self.pad_id), skip_special_tokens=True)
        with self.accelerator.autocast():
            raw_scores, per_source = self.reward_source(
                prompts, completions, device=self.device, where=f"the batch of update {self.update + 1} (rank {self.rank})"
            )
        scores = raw_scores
        score_clip = getattr(cfg, "score_clip", None)
        if score_clip is not None:
            scores = scores.clamp(-score_clip, score_clip)
        scores = apply_missing_stop_penalty(scores, cut.has_stop, cfg.missing_eos_penalty if self.stop_id is not None else None)
        kl = kl_per_token(logprobs, ref_logprobs, getattr(cfg, "kl_estimator", "k1")) * valid
        return Rollout(
            prompts, completions, query_responses, attention_mask, context_length, cut.responses, cut.mask,
            logprobs, ref_logprobs, values, scores, raw_scores, cut.has_stop, kl, per_source,
        )

    # ------------------------------------------------------------------ the update
    def micro_batches(self, tensors: dict[str, Tensor], shuffle: bool) -> list[dict[str, Tensor]]:
        """``tensors`` (this rank's rollout batch) split into micro batches of per_device_train_batch_size
        rows, in an order drawn from the seeded shuffle generator when ``shuffle``."""
        n = next(iter(tensors.values())).shape[0]
        size = self.config.per_device_train_batch_size
        order = torch.randperm(n, generator=self.shuffle_generator) if shuffle else torch.arange(n)
        order = order.to(self.device)
        return [{k: v[order[start : start + size]] for k, v in tensors.items()} for start in range(0, n, size)]

    def optimize_on_batch(
        self, tensors: dict[str, Tensor], passes: int, shuffle: bool,
        loss_fn: Callable[[dict[str, Tensor]], tuple[Tensor, dict[str, Tensor]]],
    ) -> tuple[list[dict[str, Tensor]], list[float]]:
        """``passes`` times over this rank's batch (PPO epochs, GRPO/RLOO iterations), in micro batches:
        each micro batch's ``loss_fn`` is backpropagated inside ``accelerator.accumulate``, which decides
        when the gradients are synchronised and the optimizer steps. Returns every micro batch's
        statistics and the gradient norm of every optimizer step."""
        stats: list[dict[str, Tensor]] = []
        grad_norms: list[float] = []
        for _pass in range(passes):
            for micro in self.micro_batches(tensors, shuffle):
                with self.accelerator.accumulate(self.model):
                    loss, micro_stats = loss_fn(micro)
                    self.accelerator.backward(loss)
                    norm = self.optimizer_step()
                stats.append(micro_stats)
                if norm is not None:
                    grad_norms.append(norm)
        return stats, grad_norms

    def optimizer_step(self) -> float | None:
        """Inside ``accelerator.accumulate`` after ``accelerator.backward``: on the last micro batch of an
        optimizer step (``sync_gradients``), clip the synchronised gradients, stop on a non-finite norm,
        step and zero. Returns the gradient norm on that micro batch, None on the others."""
        acc = self.accelerator
        norm = None
        if acc.sync_gradients:
            limit = self.config.max_grad_norm or float("inf")  # None or 0: no clipping, the norm still checked
            total = acc.clip_grad_norm_(self.model.parameters(), limit)
            if total is not None:
                norm = float(total)
                if not math.isfinite(norm):
                    raise TrainingDiverged(
                        f"the gradient norm is {norm} at update {self.update + 1}; the run stops before "
                        "this step (weights not updated, nothing saved). Lower --learning_rate, check the reward scale, "
                        f"or resume from the last checkpoint in {self.config.output_dir}"
                    )
        self.optimizer.step()
        self.optimizer.zero_grad()
        return norm

    def step(self, prompts: list[str], query_ids: list[list[int]]) -> tuple[dict[str, float], Rollout]:
        """One update: rollout, the method's :meth:`update_policy`, the schedule, metrics over ranks."""
        cfg = self.config
        t0 = time.perf_counter()
        batch = self.rollout(prompts, query_ids, self.sample_generator)
        t1 = time.perf_counter()
        self.model.train()
        try:
            local = self.update_policy(batch)
        finally:
            self.model.eval()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        t2 = time.perf_counter()
        metrics = self._mean_over_ranks(local)
        metrics.update(self.after_update(metrics))
        self.episode += cfg.local_batch_size * self.world_size
        metrics.update({
            "lr": lr, "episode": self.episode, "time/rollout": t1 - t0, "time/update": t2 - t1, "time/step": t2 - t0,
            "eps": cfg.local_batch_size * self.world_size / (t2 - t0),
        })
        return metrics, batch

    def after_update(self, metrics: dict[str, float]) -> dict[str, float]:
        """Hook after the metrics are averaged over ranks (PPO's adaptive KL); extra metrics to log."""
        return {}

    def _mean_over_ranks(self, values: dict[str, Any]) -> dict[str, float]:
        """Average scalar metrics over all processes (one collective, the same on every rank)."""
        keys = list(values)
        local = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        mean = self.accelerator.reduce(local, reduction="mean") if self.world_size > 1 else local
        return dict(zip(keys, mean.tolist()))

    def gather(self, x: Tensor) -> Tensor:
        """Every rank's ``x`` concatenated in rank order (``x`` itself in one process)."""
        return self.accelerator.gather(x.contiguous()) if self.world_size > 1 else x

    def _check_finite(self, metrics: dict[str, float]) -> None:
        """Stop on a non-finite metric (loss, reward, ...) or weight; metrics are averaged over ranks and
        weights are equal on every rank, so every rank takes the same decision."""
        bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
        if not bad:
            params = [p for p in self.model.parameters() if p.requires_grad]
            total = torch.stack([p.detach().float().sum() for p in params]).sum()
            if not bool(torch.isfinite(total)):
                bad = ["weights"]
        if bad:
            raise TrainingDiverged(
                f"non-finite {', '.join(bad[:4])} at update {self.update}; the run stops "
                "without saving this update's model. Lower --learning_rate, check the reward scale, or resume from "
                f"the last checkpoint in {self.config.output_dir}"
            )

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate_reward(self) -> dict[str, float]:
        """Mean reward-source score, KL to the reference and EOS rate on the held-out prompts, sampled
        as in training (same temperature) with a fixed seed, so before/after see the same randomness."""
        generator = torch.Generator(device=self.device).manual_seed(self.config.seed + 10_000 + self.rank)
        # Every rank gets ceil(N / world) prompts, the missing ones repeated with weight 0, so all ranks
        # run the same number of rollouts (and collectives, under ZeRO-3 / FSDP) when N is not a multiple.
        mine = list(range(self.rank, len(self.eval_ids), self.world_size))
        per_rank = math.ceil(len(self.eval_ids) / self.world_size)
        weights = torch.tensor([1.0] * len(mine) + [0.0] * (per_rank - len(mine)), dtype=torch.float64, device=self.device)
        mine += [mine[-1] if mine else 0] * (per_rank - len(mine))
        ids = [self.eval_ids[i] for i in mine]
        prompts = [self.eval_prompts[i] for i in mine]
        sums = torch.zeros(5, dtype=torch.float64, device=self.device)
        for start in range(0, len(ids), self.config.local_batch_size):
            end = start + self.config.local_batch_size
            batch = self.rollout(prompts[start:end], ids[start:end], generator)
            w = weights[start:end]
            sums += torch.stack([
                batch.raw_scores.double() @ w, batch.scores.double() @ w,
                kl_per_token(batch.logprobs, batch.ref_logprobs, "k1").mul(batch.mask).sum(1).double() @ w,
                batch.has_stop.double() @ w, w.sum(),
            ])
        if self.world_size > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
        raw, penalised, kl, stopped, n = sums.tolist()
        n = max(n, 1.0)
        return {"reward_mean": raw / n, "score_mean": penalised / n, "kl_mean": kl / n, "eos_fraction": stopped / n}

    # ------------------------------------------------------------------ the run
    def train(self, output_dir: Path | None = None, resume_from: Path | None = None) -> dict[str, Any]:
        """Run all updates (from ``resume_from``'s position if given); write metrics.jsonl, checkpoints and
        tracker logs into ``output_dir`` (rank 0) and return the summary."""
        from tqdm.auto import tqdm

        cfg = self.config
        main = self.accelerator.is_main_process
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        else:
            self.before = self.evaluate_reward()
        metrics_path = output_dir / METRICS_FILE if (output_dir is not None and main) else None
        if metrics_path is not None:  # the rows so far (none, or the checkpoint's), replacing any older file
            atomic_write_text(metrics_path, "".join(dumps_strict(to_plain(r)) + "\n" for r in self.history))
        tracker = Tracker(cfg.report_to, output_dir, cfg, self.update) if (output_dir is not None and main) else None
        sample_every = max(1, self.num_updates // cfg.num_sample_generations) if cfg.num_sample_generations else 0
        bar = tqdm(total=self.num_updates, initial=self.update, desc=self.command,
                   disable=not main or cfg.disable_tqdm, dynamic_ncols=True)
        start = time.perf_counter() - self.elapsed
        last: dict[str, float] = dict(self.history[-1]) if self.history else {}
        try:
            for update in range(self.update + 1, self.num_updates + 1):
                metrics, batch = self.step(*self.next_batch())
                self.update = update
                metrics["time/total"] = time.perf_counter() - start
                self._check_finite(metrics)
                last = metrics
                if update % cfg.logging_steps == 0 or update == self.num_updates:
                    row = {"step": update, **metrics}
                    self.history.append(row)
                    if metrics_path is not None:
                        with metrics_path.open("a") as f:
                            f.write(dumps_strict(to_plain(row)) + "\n")
                    if tracker is not None:
                        tracker.log(metrics, update)
                if main and sample_every and (update % sample_every == 0 or update == 1):
                    self._print_samples(update, batch)
                bar.set_postfix(self.progress(metrics))
                bar.update(1)
                if output_dir is not None and cfg.save_steps and update % cfg.save_steps == 0 and update < self.num_updates:
                    self.elapsed = time.perf_counter() - start
                    self.save_checkpoint(output_dir)
        finally:
            bar.close()
            if tracker is not None:
                tracker.close()
        train_runtime = time.perf_counter() - start
        after = self.evaluate_reward()
        before = self.before or {}
        return {
            "command": self.command,
            "model_name_or_path": cfg.model_name_or_path,
            "reward_source": cfg.reward_model_path or cfg.reward_fn,
            "dataset_name": cfg.dataset_name,
            "num_train_prompts": len(self.train_prompts),
            "num_eval_prompts": len(self.eval_prompts),
            "reward_mean_before": before.get("reward_mean"),
            "reward_mean_after": after["reward_mean"],
            "score_mean_before": before.get("score_mean"),
            "score_mean_after": after["score_mean"],
            "eos_fraction_before": before.get("eos_fraction"),
            "eos_fraction_after": after["eos_fraction"],
            "kl_mean": after["kl_mean"],
            "train_runtime": train_runtime,
            "num_updates": self.num_updates,
            "episodes": self.episode,
            "episodes_per_second": self.episode / max(train_runtime, 1e-9),
            **describe_distribution(self.accelerator),  # distributed_type, zero_stage, world_size
            "precision": self.precision,
            "use_peft": cfg.use_peft,
            "seed": cfg.seed,
            "resumed_from": str(resume_from) if resume_from is not None else None,
            **self.summary_extras(last),
        }

    def progress(self, metrics: dict[str, float]) -> dict[str, str]:
        """What the progress bar shows."""
        return {}

    def _print_samples(self, update: int, batch: Rollout, count: int = 3) -> None:
        from tqdm.auto import tqdm

        tqdm.write(f"[{self.command}] samples at update {update}/{self.num_updates}:")
        for prompt, completion, score in list(zip(batch.prompts, batch.completions, batch.raw_scores.tolist()))[:count]:
            tqdm.write(f"  {prompt!r} -> {completion!r}  (score {score:+.3f})")

    # ------------------------------------------------------------------ checkpoints
    def _rng_state(self) -> dict[str, Any]:
        state = {
            "sample": self.sample_generator.get_state(), "shuffle": self.shuffle_generator.get_state(),
            "data": self.data_generator.get_state(), "torch": torch.get_rng_state(), "python": random.getstate(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        self.sample_generator.set_state(state["sample"])
        self.shuffle_generator.set_state(state["shuffle"])
        self.data_generator.set_state(state["data"])
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def save_checkpoint(self, output_dir: Path) -> Path | None:
        """Write ``output_dir/checkpoint-<update>`` (complete or not at all); prune per --save_total_limit.

        Every rank joins: under ZeRO-3 / FSDP2 the weights (and FSDP2's optimizer state) are gathered, and
        under DeepSpeed ZeRO each rank writes its own optimizer partition (``rlhf.rl.training_state``) into
        the staging folder before rank 0 renames it into place."""
        from accelerate.utils import gather_object

        acc = self.accelerator
        main = acc.is_main_process
        rng_states = gather_object([self._rng_state()]) if self.world_size > 1 else [self._rng_state()]
        files = state_files(acc, self.model, self.optimizer)  # collectives under ZeRO-3 / FSDP2
        barrier = acc.wait_for_everyone if self.world_size > 1 else None
        with checkpoint_writer(output_dir, self.update, main=main, barrier=barrier) as tmp:
            write_state_files(tmp, files)
            if main:
                torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
                for rank, state in enumerate(rng_states):
                    torch.save(state, tmp / f"rng_state_{rank}.pth")
                write_json(tmp / TRAINER_STATE, {
                    "command": self.command, "update": self.update, "num_updates": self.num_updates,
                    "episode": self.episode, "world_size": self.world_size, "index_buffer": self._index_buffer,
                    "before": self.before, "elapsed": self.elapsed, "extra": self.extra_state(),
                    "distribution": describe_distribution(acc),
                })
                atomic_write_text(tmp / METRICS_FILE, "".join(dumps_strict(to_plain(r)) + "\n" for r in self.history))
        path = None
        if main:
            path = output_dir / f"checkpoint-{self.update}"
            self._written_checkpoints.append(path)
            self._written_checkpoints = prune_checkpoints(self._written_checkpoints, self.config.save_total_limit)
        acc.wait_for_everyone()
        return path

    def load_checkpoint(self, path: Path) -> None:
        """Continue from ``path`` (a folder written by :meth:`save_checkpoint` with the same settings and the
        same accelerate config). Every rank joins (under ZeRO-3 / FSDP2 each keeps its shard)."""
        state_file = path / TRAINER_STATE
        if not state_file.is_file():
            raise UserError(f"--resume_from_checkpoint {path}: no {TRAINER_STATE}; not a checkpoint of rlhf {self.command}")
        state = json.loads(state_file.read_text())
        if state.get("command") != self.command:
            raise UserError(f"--resume_from_checkpoint {path}: written by rlhf {state.get('command')}, not rlhf {self.command}")
        if state["world_size"] != self.world_size:
            raise UserError(
                f"--resume_from_checkpoint {path}: saved by {state['world_size']} processes, now {self.world_size}; "
                f"resume with {state['world_size']} processes (exact resume needs every rank's random state)"
            )
        saved_layout = state.get("distribution")  # absent in checkpoints of earlier versions (unsharded)
        sharding, now = _sharding_name(saved_layout or {}), _sharding_name(describe_distribution(self.accelerator))
        if sharding != now:  # each backend stores the optimizer state in its own layout
            raise UserError(f"--resume_from_checkpoint {path}: saved under {sharding}, now {now}; "
                            "resume with the accelerate config that wrote the checkpoint")
        if state["num_updates"] != self.num_updates:
            raise UserError(f"--resume_from_checkpoint {path}: the run had {state['num_updates']} updates, these flags give "
                            f"{self.num_updates}; resume with the flags of the saved run")
        load_state_files(self.accelerator, self.model, self.optimizer, path)
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True, map_location="cpu"))
        self._set_rng_state(torch.load(path / f"rng_state_{self.rank}.pth", weights_only=True, map_location="cpu"))
        self.update, self.episode = state["update"], state["episode"]
        self._index_buffer = list(state["index_buffer"])
        self.before, self.elapsed = state["before"], state["elapsed"]
        self.history = [json.loads(line) for line in (path / METRICS_FILE).read_text().splitlines() if line.strip()]
        self.load_extra_state(state["extra"])

    # ------------------------------------------------------------------ saving
    def save(self, output_dir: Path) -> None:
        """Save the policy (merged if LoRA; adapter in OUT/adapter) and the tokenizer, from rank 0 only."""
        acc = self.accelerator
        acc.wait_for_everyone()
        # Under ZeRO-3 / FSDP each rank holds a shard: gather the full weights first (a collective that
        # every rank joins; DeepSpeed needs zero3_save_16bit_model, set in the shipped config).
        state_dict = acc.get_state_dict(self.model) if sharded(acc) else None
        if not acc.is_main_process:
            return
        policy = self.policy
        if state_dict is not None:
            state_dict = {k.removeprefix("policy."): v for k, v in state_dict.items() if k.startswith("policy.")}
            policy.save_pretrained(output_dir, state_dict=state_dict)
            self.tokenizer.save_pretrained(output_dir)
            return
        if hasattr(policy, "merge_and_unload"):
            policy.save_pretrained(output_dir / "adapter")
            policy = policy.merge_and_unload()
        if self.config.gradient_checkpointing:
            policy.gradient_checkpointing_disable()
        policy.save_pretrained(output_dir)
        self.tokenizer.save_pretrained(output_dir)


def _sharding_name(layout: dict[str, Any]) -> str:
    """How a run (``describe_distribution``) shards its model, in words; DDP and one process alike."""
    if "zero_stage" in layout:
        return f"DeepSpeed ZeRO-{layout['zero_stage']}"
    if "fsdp_version" in layout:
        return f"FSDP{layout['fsdp_version']}"
    return "no sharding (DDP or one process)"


# ----------------------------------------------------------------------------- trackers
class Tracker:
    """Sends the metrics.jsonl numbers to --report_to (tensorboard, wandb, trackio; none: nothing)."""

    def __init__(self, report_to: str, output_dir: Path, config: RLConfig, start_step: int = 0):
        self.kind = report_to
        self.run = None
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run logged after the checkpoint it resumes from.
            self.run = SummaryWriter(log_dir=str(output_dir / "runs"), purge_step=start_step + 1 if start_step else None)
        elif report_to in ("wandb", "trackio"):
            module = __import__(report_to)
            self.run = module.init(project=os.environ.get("WANDB_PROJECT", "rlhf"), config=to_plain(config),
                                   name=Path(output_dir).name)
            self.module = module

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.kind == "tensorboard":
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.run.add_scalar(key, value, step)
        elif self.run is not None:
            self.module.log(metrics, step=step)

    def close(self) -> None:
        if self.kind == "tensorboard":
            self.run.close()
        elif self.run is not None:
            self.module.finish()


# ----------------------------------------------------------------------------- the command
def run_trainer(trainer_class: type[RLTrainer], config: RLConfig) -> dict[str, Any]:
    """Train with ``config``; OUT gets checkpoints while training and the final files at the end.

    An existing non-empty --output_dir is refused unless --overwrite_output_dir or
    --resume_from_checkpoint. A run that fails before writing anything leaves no folder behind; a run
    that fails later keeps its checkpoints and metrics.jsonl, never a model of a failed update."""
    from rlhf.common.utils import check_ranges, command_options, is_main_process

    config.validate()
    check_ranges(config)  # also: --report_to a tracker that is not installed
    resume = resolve_resume_path(config.resume_from_checkpoint, config.output_dir)
    existed = Path(config.output_dir).expanduser().exists()
    overwrite = command_options().overwrite_output_dir
    out = prepare_output_dir(config.output_dir, overwrite=overwrite, resume=resume is not None)
    try:
        trainer = trainer_class(config)
        summary = trainer.train(out, resume)
        summary["output_dir"] = str(config.output_dir)
        save_final(trainer, out, summary)
    except BaseException:
        if is_main_process() and not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # our own empty folder: a failed start leaves nothing behind
        raise
    if trainer.accelerator.is_main_process:
        print(
            f"{config.command}: reward {summary['reward_mean_before']:+.3f} -> {summary['reward_mean_after']:+.3f}, "
            f"KL {summary['kl_mean']:.3f}, {summary['train_runtime']:.1f}s, world size {summary['world_size']} "
            f"-> {config.output_dir}"
        )
    return summary


def save_final(trainer: RLTrainer, out: Path, summary: dict[str, Any]) -> None:
    """The model, tokenizer, config.yaml and summary.json into OUT, through the same staging folder as
    sft and reward (``rlhf.common.utils.staged_output``): OUT never holds a half-written model file."""
    main = trainer.accelerator.is_main_process
    with staged_output(out) as staging:
        trainer.save(staging)  # every rank joins (the gather under ZeRO-3 / FSDP); rank 0 writes
        if main:
            write_config(staging, {trainer.command: trainer.config})
    if main:
        write_json(out / SUMMARY_FILE, summary)
