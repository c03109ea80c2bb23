"""`rlhf ppo`: PPO fine-tuning of a causal LM against a reward model or a reward function (InstructGPT step 3).

    rlhf ppo --model_name_or_path SFT (--reward_model_path RM | --reward_fn module:function)
             --dataset_name PROMPTS --output_dir OUT [--config FILE.yaml] [PPOConfig flags]

One PPO update (``PPOTrainer.step``):

1. Rollout (no grad): sample a response for each prompt of the batch with temperature T and the
   KV cache (``rlhf.rollout.sample_responses``), cut it after its first stop token, and compute in
   batched forwards the policy's logprobs, the frozen reference's logprobs and the critic's values.
2. Reward: the reward model's (or function's) score of prompt + truncated response, minus
   ``missing_eos_penalty`` when the response never stopped; per token ``-kl_coef * KL_t`` plus the
   score at the last real token (``rlhf.rollout.shape_rewards``).
3. GAE (gamma 1, lambda ``lam``), advantages whitened over the batch, then ``num_ppo_epochs`` x
   minibatches of the clipped policy and value losses -- all of it ``classic_rl.core.ppo`` (``gae``,
   ``masked_whiten``, ``ppo_update``); this module only supplies ``evaluate(minibatch)``, the LM
   forward pass.

Multi-process (``accelerate launch``): each rank samples its own prompts with its own seed, DDP
averages the gradients, metrics are averaged over ranks, rank 0 alone writes. OUT holds the policy
(``save_pretrained``; with LoRA the merged model and the adapter in OUT/adapter), the tokenizer,
``metrics.jsonl`` (TRL's metric names), ``summary.json`` and ``config.yaml``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from classic_rl.core.ppo import PolicyEvaluation, PPOUpdateConfig, gae, masked_mean, ppo_update
from rlhf.data import DataArguments, load_train_eval, render_prompt, validate_dataset
from rlhf.distributed import (
    all_processes_finished,
    check_deepspeed_settings,
    configure_deepspeed_batch,
    describe_distribution,
    make_accelerator,
    masked_whiten_across_processes,
    models_loaded_whole,
    needs_synchronised_generation,
    prepare_frozen_model,
    sharded,
    unwrap_for_generation,
)
from rlhf.models import load_causal_lm, load_reward_model, load_tokenizer
from rlhf.ppo_config import PPOConfig, parse_ppo_args
from rlhf.ppo_models import (
    PolicyAndValue,
    RewardFunction,
    RewardModelScorer,
    ValueModel,
    disable_dropout,
    load_reward_function,
)
from rlhf.rollout import (
    apply_missing_stop_penalty,
    kl_per_token,
    left_pad,
    logits_for_responses,
    logprobs_and_entropy,
    sample_responses,
    shape_rewards,
    token_logprobs,
    truncate_after_stop,
)
from rlhf.utils import (
    METRICS_FILE,
    SUMMARY_FILE,
    atomic_output_dir,
    seed_everything,
    write_config,
    write_json,
)

__all__ = ["AdaptiveKLController", "PPOTrainer", "Rollout", "main", "run_ppo"]


# ----------------------------------------------------------------------------- KL coefficient
class AdaptiveKLController:
    """Ziegler et al. (2019): ``beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon``.

    ``n`` is the number of episodes in the update; with ``adaptive=False`` beta stays fixed.
    """

    def __init__(self, init: float, target: float, horizon: int, adaptive: bool):
        self.value = init
        self.target, self.horizon, self.adaptive = target, horizon, adaptive

    def update(self, kl: float, n_steps: int) -> None:
        if not self.adaptive:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


# ----------------------------------------------------------------------------- rollout batch
@dataclass
class Rollout:
    """One batch of sampled responses with everything the PPO update needs (all on the device)."""

    prompts: list[str]
    completions: list[str]
    query_responses: Tensor  # (B, P + R)
    attention_mask: Tensor  # (B, P + R)
    context_length: int  # P
    responses: Tensor  # (B, R), pad after the stop token
    mask: Tensor  # (B, R) bool
    logprobs: Tensor  # (B, R), 0 on padding
    ref_logprobs: Tensor
    values: Tensor
    scores: Tensor  # (B,) after the missing-EOS penalty
    raw_scores: Tensor  # (B,) from the reward source
    has_stop: Tensor  # (B,) bool
    kl: Tensor  # (B, R) per-token KL estimate, 0 on padding


class _GradientAccumulation:
    """Stands in for the optimizer and the evaluate/backward/clip hooks of ``ppo_update`` so that ``k``
    consecutive minibatches of the core (TRL's micro batches) make one optimizer step.

    It drives accelerate's gradient state the way ``accelerator.accumulate`` does, so every backend
    accumulates correctly:

    - ``accelerator.sync_gradients`` is False for the first ``k - 1`` micro batches and True for the
      last: the prepared optimizer steps only then, and under DeepSpeed ``accelerator.backward`` marks
      the gradient-accumulation boundary and lets the engine step (and clip) only there.
    - The forward and backward of the first ``k - 1`` micro batches run under
      ``accelerator.no_sync(model)``, so DDP (and FSDP) reduce the gradients across processes once per
      optimizer step, on the last micro batch (``no_sync`` must cover the forward: DDP decides there).
    - ``accelerator.backward`` divides each loss by ``accelerator.gradient_accumulation_steps`` (set to
      ``k`` by the trainer; DeepSpeed divides by its own, checked equal), so one step sees the mean
      gradient of the ``k`` micro batches. Gradients are zeroed before the first micro batch and
      clipped after the last only.
    """

    def __init__(self, accelerator: Any, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int):
        if accelerator.gradient_accumulation_steps != steps:
            raise ValueError(
                f"accelerator.gradient_accumulation_steps is {accelerator.gradient_accumulation_steps} but "
                f"--gradient_accumulation_steps is {steps}; set both the same"
            )
        self.accelerator, self.model, self.optimizer, self.steps = accelerator, model, optimizer, steps
        self._deepspeed = getattr(accelerator.state, "deepspeed_plugin", None) is not None
        self._no_sync = ExitStack()
        self.calls = 0

    def _last(self) -> bool:
        return self.calls % self.steps == self.steps - 1

    def evaluate(self, fn: Callable[[dict[str, Tensor]], PolicyEvaluation]) -> Callable[[dict[str, Tensor]], PolicyEvaluation]:
        """``fn`` (the minibatch forward) preceded by this micro batch's synchronisation decision."""

        def wrapped(minibatch: dict[str, Tensor]) -> PolicyEvaluation:
            last = self._last()
            self.accelerator.sync_gradients = last
            if not last:
                self._no_sync.enter_context(self.accelerator.no_sync(self.model))
            return fn(minibatch)

        return wrapped

    def zero_grad(self, set_to_none: bool = True) -> None:
        # The prepared optimizer ignores zero_grad while sync_gradients is False, and ppo_update calls it
        # before backward: zero the wrapped optimizer directly, once per group. DeepSpeed's engine zeroes
        # its gradients itself after each step.
        if self.calls % self.steps == 0 and not self._deepspeed:
            getattr(self.optimizer, "optimizer", self.optimizer).zero_grad(set_to_none=set_to_none)

    def backward(self, loss: Tensor) -> None:
        try:
            self.accelerator.backward(loss)
        finally:
            self._no_sync.close()

    def clip_grad_norm(self, params: Iterable[nn.Parameter], max_norm: float) -> Tensor | None:
        return self.accelerator.clip_grad_norm_(params, max_norm) if self._last() else None

    def step(self) -> None:
        if self._last():
            self.optimizer.step()
        self.calls += 1

    def close(self) -> None:
        """Leave accelerate's gradient state as found (synchronising), whatever happened."""
        self._no_sync.close()
        self.accelerator.sync_gradients = True


# ----------------------------------------------------------------------------- the trainer
class PPOTrainer:
    """PPO for a causal LM on prompts; see the module docstring for one update."""

    def __init__(self, config: PPOConfig, accelerator=None):
        from rlhf.utils import hardware_defaults

        self.config = config.validate()
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
                "rlhf ppo: --use_peft under DeepSpeed ZeRO-3 or FSDP is not supported (merging the LoRA adapter "
                "into the saved policy needs the full weights on one rank); use DDP or ZeRO-2 "
                "(configs/accelerate/multi_gpu.yaml, deepspeed_zero2.yaml), where a LoRA policy fits anyway"
            )
        seed_everything(config.seed)  # same initial weights (value head) on every rank

        self.tokenizer = load_tokenizer(config.model_name_or_path, trust_remote_code=config.trust_remote_code)
        self.pad_id = self.tokenizer.pad_token_id
        self.stop_id = self._stop_token_id()
        self._load_data()
        with models_loaded_whole(acc):  # full weights at load; prepare() shards them
            self._build_models()

        # Fused AdamW: one kernel for all parameters (5x faster than the per-tensor loop on CPU).
        optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=config.learning_rate, eps=config.adam_epsilon, weight_decay=config.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.num_updates = config.num_updates(self.world_size, len(self.train_prompts))
        total = self.num_updates
        linear = config.lr_scheduler_type == "linear"
        # Stepped once per PPO update (as TRL did): the u-th update runs at lr * (1 - u / total).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: max(0.0, 1.0 - u / total) if linear else 1.0)
        # accelerate scales each loss by 1/k and DeepSpeed reads k from here when its config says "auto".
        acc.gradient_accumulation_steps = config.gradient_accumulation_steps
        configure_deepspeed_batch(acc, config.per_device_train_batch_size, config.gradient_accumulation_steps)
        self.model, self.optimizer = acc.prepare(self.model, optimizer)
        check_deepspeed_settings(acc, config.gradient_accumulation_steps, config.max_grad_norm)
        # Frozen models: one copy per device under DDP, sharded like the policy under ZeRO-3 / FSDP. The
        # reference keeps the policy's weight dtype, so pi == pi_ref gives KL exactly 0 at the start; the
        # reward model only scores, so it may run in half precision.
        if self.ref_policy is not None:
            self.ref_policy = prepare_frozen_model(self.ref_policy, acc)
        if self.reward_model is not None:
            half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
            self.reward_model = prepare_frozen_model(self.reward_model, acc, dtype=half)
            self.reward_source = RewardModelScorer(
                self.reward_model, self._rm_tokenizer, config.local_rollout_forward_batch_size,
                place=lambda: unwrap_for_generation(self.reward_model, acc, gather_deepspeed3_params=False),
            )
        # Token-by-token sampling must run the same number of forwards on every rank when a forward is a
        # collective (FSDP; ZeRO-3 without the one-off gather).
        self._sync_generation = needs_synchronised_generation(acc, config.ds3_gather_for_generation)

        self.kl_ctl = AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon, config.adaptive_kl)
        self.sample_generator = torch.Generator(device=self.device).manual_seed(config.seed + self.rank)
        self.shuffle_generator = torch.Generator().manual_seed(config.seed + 1000 + self.rank)
        self.data_generator = torch.Generator().manual_seed(config.seed)  # same order on every rank
        self._index_buffer: list[int] = []
        self.recompute_logprobs = (
            self.precision != "fp32" if config.recompute_rollout_logprobs is None else config.recompute_rollout_logprobs
        )
        self.episode = 0

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
        self.train_ids = self._tokenize(self.train_prompts)
        self.eval_ids = self._tokenize(self.eval_prompts)

    def _tokenize(self, prompts: list[str]) -> list[list[int]]:
        ids = self.tokenizer(prompts, add_special_tokens=True)["input_ids"]
        if self.config.max_prompt_length is not None:
            ids = [x[-self.config.max_prompt_length :] for x in ids]
        for prompt, x in zip(prompts, ids):
            if not x:
                raise ValueError(f"prompt {prompt!r} tokenizes to no tokens; remove empty prompts from the dataset")
        return ids

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
            self.reward_source = RewardFunction(load_reward_function(cfg.reward_fn), cfg.reward_fn)

        critic = None
        if not cfg.value_head_on_policy:
            source = cfg.value_model_path or cfg.reward_model_path or cfg.model_name_or_path
            if source == cfg.reward_model_path and not same_vocab:
                raise ValueError(
                    f"the reward model '{cfg.reward_model_path}' has another tokenizer than the policy, so it cannot "
                    "initialise the critic (which reads the policy's tokens); pass --value_model_path (e.g. the SFT "
                    "model) or --value_head_on_policy"
                )
            critic_model = load_reward_model(source, tokenizer=self.tokenizer, dtype=cfg.dtype, trust_remote_code=trust)
            from_reward_model = cfg.value_model_path is not None or cfg.reward_model_path is not None
            if cfg.use_peft:
                critic_model = self._with_lora(critic_model, "SEQ_CLS")
            critic = ValueModel.from_sequence_classifier(critic_model, zero_head=not from_reward_model)
        self.model = PolicyAndValue(policy, critic)
        for module in (self.model, self.ref_policy):
            if module is not None:
                disable_dropout(module)
        if cfg.gradient_checkpointing:
            kwargs = {"gradient_checkpointing_kwargs": {"use_reentrant": False}}
            policy.gradient_checkpointing_enable(**kwargs)
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
        """This rank's prompts for the next update: slices of one seeded order shared by all ranks."""
        local = self.config.local_batch_size
        need = local * self.world_size
        while len(self._index_buffer) < need:
            self._index_buffer += torch.randperm(len(self.train_prompts), generator=self.data_generator).tolist()
        chosen, self._index_buffer = self._index_buffer[:need], self._index_buffer[need:]
        mine = chosen[self.rank * local : (self.rank + 1) * local]
        return [self.train_prompts[i] for i in mine], [self.train_ids[i] for i in mine]

    # ------------------------------------------------------------------ rollout
    @property
    def policy(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model).policy

    def _reference_logits(
        self, query_responses: Tensor, attention_mask: Tensor, context_length: int, policy: nn.Module | None = None
    ) -> Tensor:
        """Logits of the frozen reference: its own model, or ``policy`` (default: the trained one) with
        the LoRA adapter disabled."""
        if self.ref_policy is not None:
            return logits_for_responses(self.ref_policy, query_responses, attention_mask, context_length)
        policy = self.policy if policy is None else policy
        with policy.disable_adapter():
            return logits_for_responses(policy, query_responses, attention_mask, context_length)

    @torch.no_grad()
    def generate(self, query_ids: list[list[int]], generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Left-padded queries ``(B, P)``, their mask, sampled responses ``(B, R)`` and their logprobs."""
        cfg = self.config
        queries, query_mask = left_pad(query_ids, self.pad_id, self.device)
        chunks = []
        self.model.eval()
        acc = self.accelerator
        all_finished = all_processes_finished if self._sync_generation else None
        # Under ZeRO-3 the policy's parameters are gathered once for the whole batch (not once per token).
        with unwrap_for_generation(self.model, acc, cfg.ds3_gather_for_generation) as unwrapped, acc.autocast():
            for start in range(0, queries.shape[0], cfg.local_rollout_forward_batch_size):
                end = start + cfg.local_rollout_forward_batch_size
                chunks.append(sample_responses(
                    unwrapped.policy, queries[start:end], query_mask[start:end],
                    max_new_tokens=cfg.response_length, temperature=cfg.temperature, pad_token_id=self.pad_id,
                    stop_token_ids=() if self.stop_id is None else (self.stop_id,), generator=generator,
                    all_finished=all_finished,
                ))
        width = max(c.responses.shape[1] for c in chunks)
        responses = torch.cat([nn.functional.pad(c.responses, (0, width - c.responses.shape[1]), value=self.pad_id) for c in chunks])
        logprobs = torch.cat([nn.functional.pad(c.logprobs, (0, width - c.logprobs.shape[1])) for c in chunks])
        return queries, query_mask, responses, logprobs

    @torch.no_grad()
    def rollout(self, prompts: list[str], query_ids: list[list[int]], generator: torch.Generator) -> Rollout:
        """Sample, truncate, score and evaluate one batch (see step 1 and 2 of the module docstring)."""
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
        with unwrap_for_generation(self.model, acc, gather_deepspeed3_params=False) as unwrapped, acc.autocast():
            for start in range(0, queries.shape[0], step):
                qr, am, resp = (t[start : start + step] for t in (query_responses, attention_mask, cut.responses))
                if self.recompute_logprobs or unwrapped.critic is None:
                    logits, value = unwrapped(qr, am, context_length)
                    logprobs.append(token_logprobs(logits, resp, cfg.temperature))
                    del logits
                else:
                    value = unwrapped.critic(qr, am)[:, context_length - 1 : -1]
                    logprobs.append(gen_logprobs[start : start + step])
                values.append(value.float())
                ref_logits = self._reference_logits(qr, am, context_length, unwrapped.policy)
                ref_logprobs.append(token_logprobs(ref_logits, resp, cfg.temperature))
                del ref_logits
        valid = cut.mask.float()
        logprobs = torch.cat(logprobs) * valid
        ref_logprobs = torch.cat(ref_logprobs) * valid
        values = torch.cat(values) * valid

        completions = self.tokenizer.batch_decode(cut.responses.masked_fill(~cut.mask, self.pad_id), skip_special_tokens=True)
        with self.accelerator.autocast():
            raw_scores = self.reward_source(prompts, completions, device=self.device)
        scores = raw_scores
        if cfg.score_clip is not None:
            scores = scores.clamp(-cfg.score_clip, cfg.score_clip)
        scores = apply_missing_stop_penalty(scores, cut.has_stop, cfg.missing_eos_penalty if self.stop_id is not None else None)
        kl = kl_per_token(logprobs, ref_logprobs, cfg.kl_estimator) * valid
        return Rollout(
            prompts, completions, query_responses, attention_mask, context_length, cut.responses, cut.mask,
            logprobs, ref_logprobs, values, scores, raw_scores, cut.has_stop, kl,
        )

    @property
    def model_uses_value_head(self) -> bool:
        return self.accelerator.unwrap_model(self.model).critic is None

    # ------------------------------------------------------------------ update
    def _evaluate(self, minibatch: dict[str, Tensor]) -> PolicyEvaluation:
        """The LM forward of ``ppo_update``: new logprobs, values and (detached) entropy per token."""
        logits, values = self.model(minibatch["query_responses"], minibatch["attention_mask"], self.context_length)
        logprobs, entropy = logprobs_and_entropy(logits, minibatch["responses"], self.config.temperature)
        return PolicyEvaluation(logprobs, values.float(), entropy)

    def step(self, prompts: list[str], query_ids: list[list[int]]) -> tuple[dict[str, float], Rollout]:
        """One PPO update: rollout, reward shaping, GAE and ``classic_rl.core.ppo.ppo_update``."""
        cfg = self.config
        t0 = time.perf_counter()
        batch = self.rollout(prompts, query_ids, self.sample_generator)
        t1 = time.perf_counter()
        rewards, non_score = shape_rewards(batch.scores, batch.kl, batch.mask, batch.mask.sum(1) - 1, self.kl_ctl.value, cfg.whiten_rewards)
        valid = batch.mask.float()
        advantages, returns = gae(rewards, batch.values, mask=valid, gamma=cfg.gamma, lam=cfg.lam)
        # Whitened with the statistics of every rank's batch, so N processes x b sequences take the
        # same step as one process with N x b (tests/test_rlhf_dataparallel.py).
        advantages = masked_whiten_across_processes(advantages, valid)

        self.context_length = batch.context_length
        tensors = {
            "query_responses": batch.query_responses, "attention_mask": batch.attention_mask,
            "responses": batch.responses, "logprobs": batch.logprobs, "values": batch.values,
            "advantages": advantages, "returns": returns, "mask": valid,
        }
        update_config = PPOUpdateConfig(
            num_epochs=cfg.num_ppo_epochs, num_minibatches=cfg.num_mini_batches * cfg.gradient_accumulation_steps,
            clip_range=cfg.cliprange, clip_range_value=cfg.cliprange_value, vf_coef=cfg.vf_coef, ent_coef=0.0,
            max_grad_norm=cfg.max_grad_norm, target_kl=None, normalize_advantages=False,
        )
        accumulate = _GradientAccumulation(self.accelerator, self.model, self.optimizer, cfg.gradient_accumulation_steps)
        self.model.train()
        try:
            stats = ppo_update(
                tensors, accumulate.evaluate(self._evaluate), accumulate, self.model.parameters(), update_config,
                generator=self.shuffle_generator, backward=accumulate.backward, clip_grad_norm=accumulate.clip_grad_norm,
            )
        finally:
            accumulate.close()
        self.model.eval()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        t2 = time.perf_counter()

        kl_sum = batch.kl.sum(1)
        local = {
            "objective/kl": kl_sum.mean(),
            "objective/entropy": (-batch.logprobs).sum(1).mean(),
            "objective/non_score_reward": non_score.sum(1).mean(),
            "objective/rlhf_reward": (batch.scores + non_score.sum(1)).mean(),
            "objective/scores": batch.scores.mean(),
            "objective/raw_scores": batch.raw_scores.mean(),
            "policy/approxkl_avg": stats["policy/approxkl"],
            "policy/clipfrac_avg": stats["policy/clipfrac"],
            "policy/entropy_avg": stats["loss/entropy"],
            "loss/policy_avg": stats["loss/policy"],
            "loss/value_avg": stats["loss/value"],
            "val/clipfrac_avg": stats["val/clipfrac"],
            "val/ratio": stats["policy/ratio"],
            "val/num_eos_tokens": batch.has_stop.float().sum() * self.world_size,  # mean x ranks = total
            "val/no_eos_frac": (~batch.has_stop).float().mean(),
            "val/response_length": batch.mask.float().sum(1).mean(),
            "val/values": masked_mean(batch.values, valid),
            "val/advantages_abs": masked_mean(advantages.abs(), valid),
        }
        metrics = self._mean_over_ranks(local)
        self.kl_ctl.update(metrics["objective/kl"], cfg.local_batch_size * self.world_size)
        self.episode += cfg.local_batch_size * self.world_size
        metrics.update({
            "objective/kl_coef": self.kl_ctl.value, "lr": lr, "episode": self.episode,
            "time/rollout": t1 - t0, "time/update": t2 - t1, "time/step": t2 - t0,
            "eps": cfg.local_batch_size * self.world_size / (t2 - t0),
        })
        return metrics, batch

    def _mean_over_ranks(self, values: dict[str, Any]) -> dict[str, float]:
        """Average scalar metrics over all processes (one collective, the same on every rank)."""
        keys = list(values)
        local = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        mean = self.accelerator.reduce(local, reduction="mean") if self.world_size > 1 else local
        return dict(zip(keys, mean.tolist()))

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
    def train(self, output_dir: Path | None = None) -> dict[str, Any]:
        """Run all updates; write metrics.jsonl into ``output_dir`` (rank 0) and return the summary."""
        from tqdm.auto import tqdm

        cfg = self.config
        main = self.accelerator.is_main_process
        before = self.evaluate_reward()
        metrics_path = output_dir / METRICS_FILE if (output_dir is not None and main) else None
        sample_every = max(1, self.num_updates // cfg.num_sample_generations) if cfg.num_sample_generations else 0
        bar = tqdm(total=self.num_updates, desc="ppo", disable=not main or cfg.disable_tqdm, dynamic_ncols=True)
        start = time.perf_counter()
        last: dict[str, float] = {}
        for update in range(1, self.num_updates + 1):
            metrics, batch = self.step(*self.next_batch())
            metrics["time/total"] = time.perf_counter() - start
            last = metrics
            if metrics_path is not None and (update % cfg.logging_steps == 0 or update == self.num_updates):
                with metrics_path.open("a") as f:
                    f.write(json.dumps({"step": update, **metrics}) + "\n")
            if main and sample_every and (update % sample_every == 0 or update == 1):
                self._print_samples(update, batch)
            bar.set_postfix(score=f"{metrics['objective/scores']:.3f}", kl=f"{metrics['objective/kl']:.3f}")
            bar.update(1)
        bar.close()
        train_runtime = time.perf_counter() - start
        after = self.evaluate_reward()
        return {
            "command": "ppo",
            "model_name_or_path": cfg.model_name_or_path,
            "reward_source": cfg.reward_model_path or cfg.reward_fn,
            "dataset_name": cfg.dataset_name,
            "num_train_prompts": len(self.train_prompts),
            "num_eval_prompts": len(self.eval_prompts),
            "reward_mean_before": before["reward_mean"],
            "reward_mean_after": after["reward_mean"],
            "score_mean_before": before["score_mean"],
            "score_mean_after": after["score_mean"],
            "eos_fraction_before": before["eos_fraction"],
            "eos_fraction_after": after["eos_fraction"],
            "kl_mean": after["kl_mean"],
            "kl_coef_final": self.kl_ctl.value,
            "train_objective_kl_last": last.get("objective/kl"),
            "train_runtime": train_runtime,
            "num_updates": self.num_updates,
            "episodes": self.episode,
            "episodes_per_second": self.episode / max(train_runtime, 1e-9),
            **describe_distribution(self.accelerator),  # distributed_type, zero_stage, world_size
            "precision": self.precision,
            "use_peft": cfg.use_peft,
            "seed": cfg.seed,
        }

    def _print_samples(self, update: int, batch: Rollout, count: int = 3) -> None:
        from tqdm.auto import tqdm

        tqdm.write(f"[ppo] samples at update {update}/{self.num_updates}:")
        for prompt, completion, score in list(zip(batch.prompts, batch.completions, batch.raw_scores.tolist()))[:count]:
            tqdm.write(f"  {prompt!r} -> {completion!r}  (score {score:+.3f})")

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


def run_ppo(config: PPOConfig) -> dict[str, Any]:
    """Train with ``config``; write OUT atomically (nothing at ``output_dir`` on error); return the summary."""
    config.validate()
    trainer = PPOTrainer(config)
    with atomic_output_dir(config.output_dir) as tmp:
        summary = trainer.train(tmp)
        summary["output_dir"] = str(config.output_dir)
        trainer.save(tmp)
        if trainer.accelerator.is_main_process:
            write_config(tmp, {"ppo": config})
            write_json(tmp / SUMMARY_FILE, summary)
    if trainer.accelerator.is_main_process:
        print(
            f"ppo: reward {summary['reward_mean_before']:+.3f} -> {summary['reward_mean_after']:+.3f}, "
            f"KL {summary['kl_mean']:.3f}, {summary['train_runtime']:.1f}s, world size {summary['world_size']} "
            f"-> {config.output_dir}"
        )
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`rlhf ppo` entry point (also `python -m rlhf.ppo`)."""
    return run_ppo(parse_ppo_args(argv))


if __name__ == "__main__":
    main()
