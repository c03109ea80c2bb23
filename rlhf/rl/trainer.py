"""The RL trainer `rlhf ppo`, `grpo`, `rloo` and `reinforce_pp` share: everything but the method's
advantages and loss, composed from one module per job.

    setup           rlhf.rl.setup           precision, tokenizer, policy, reference, reward sources, optimizer
    prompt stream   rlhf.rl.prompts         training / held-out prompts and the seeded order of batches
    experience      rlhf.rl.experience      sampler -> completions -> rewards -> log-probs -> Rollout
    sampler         rlhf.rl.sampler         the Sampler interface and the built-in KV-cache sampler
    optimiser loop  rlhf.rl.optimizer_loop  passes x micro batches, accumulation, clipping
    trainer state   rlhf.rl.state           checkpoints, RNGs, exact resume
    metrics sink    rlhf.rl.metrics         metrics.jsonl, the tracker, the reduction over ranks
    runner          rlhf.rl.runner          the command: output folder, final model, summary.json

A method (``rlhf.methods``) subclasses :class:`RLTrainer` and writes :meth:`update_policy`: its
advantages (``classic_rl.core.advantages``) and its loss on a micro batch (``classic_rl.core.losses``),
run by :meth:`optimize_on_batch`. One update (:meth:`step`): this rank's prompts, a rollout, the
method's update, the learning-rate schedule, metrics averaged over ranks.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from classic_rl.seeding import seed_everything
from rlhf.common.console import write_above_bars
from rlhf.common.distributed import (
    all_processes_finished,
    make_accelerator,
    needs_synchronised_generation,
    sharded,
    unwrap_for_generation,
)
from rlhf.common.errors import ConfigError
from rlhf.common.metrics import MetricsSink
from rlhf.common.models import load_tokenizer
from rlhf.common.stopping import RunStopped, stop_pending, stop_signals
from rlhf.rl.config import RLConfig
from rlhf.rl.correction import reduce_mismatch_metrics
from rlhf.rl.experience import ExperienceMaker, Rollout, RolloutSettings
from rlhf.rl.forward import logits_for_responses
from rlhf.rl.metrics import check_finite, mean_over_ranks
from rlhf.rl.optimizer_loop import LossFn, OptimizerLoop
from rlhf.rl.prompts import HELD_OUT_SEED_OFFSET, PromptStream
from rlhf.rl.runner import run_summary, run_trainer, save_policy
from rlhf.rl.sampler import HFSampler, Sampler, SamplingSettings
from rlhf.rl.setup import build_components, choose_precision, refuse_unsupported
from rlhf.rl.state import Progress, TrainerState
from rlhf.rl.trainable import PolicyOnly

__all__ = ["PolicyOnly", "RLTrainer", "run_trainer"]


class RLTrainer:
    """The loop, evaluation and the composition of the shared components; a method adds its update."""

    uses_critic = False

    def __init__(self, config: RLConfig, accelerator=None):
        self.config = config.validate()
        self.command = config.command
        use_cpu, self.precision = choose_precision(config)
        self.accelerator = acc = accelerator or make_accelerator(use_cpu, self.precision)
        self.rank, self.world_size, self.device = acc.process_index, acc.num_processes, acc.device
        refuse_unsupported(config, acc)
        self.repeats = config.completions_per_prompt
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
        self.prompts = self.make_prompt_stream()
        self.num_updates = config.num_updates(self.world_size, len(self.prompts.train_prompts))
        parts = build_components(config, acc, self.tokenizer, self.build_trainable, lambda: self.num_updates, self.precision)
        self.stop_id, self.model, self._plain_model = parts.stop_id, parts.model, parts.plain_model
        self.ref_policy, self.reward_model, self.reward_source = parts.ref_policy, parts.reward_model, parts.reward_source
        self.optimizer, self.scheduler = parts.optimizer, parts.scheduler
        self._sharded = sharded(acc)

        self.sample_generator = torch.Generator(device=self.device).manual_seed(config.seed + self.rank)
        self.shuffle_generator = torch.Generator().manual_seed(config.seed + 1000 + self.rank)
        self.sampler = self.make_sampler()
        recompute = self.precision != "fp32" if config.recompute_rollout_logprobs is None else config.recompute_rollout_logprobs
        # vLLM's log-probs are not the trainer's: the loss's old log-probs are recomputed, the two compared (TRL)
        vllm = config.use_vllm
        self.experience = self.make_experience_maker(
            self.sampler,
            RolloutSettings(config.temperature, config.local_rollout_forward_batch_size, self.stop_id, self.pad_id,
                            config.missing_eos_penalty, config.reward_clip, config.rollout_kl_estimator,
                            self.uses_critic, recompute or vllm, measure_sampling_mismatch=vllm,
                            importance_sampling_correction=vllm and config.vllm_importance_sampling_correction,
                            importance_sampling_cap=config.vllm_importance_sampling_cap),
            self.tokenizer, self.reward_source, lambda: self._unwrapped(gather_deepspeed3_params=False),
            self._reference_logits, self.device, acc.autocast,
        )
        self.optimizer_loop = OptimizerLoop(acc, self.model, self.optimizer, config.per_device_train_batch_size,
                                            config.max_grad_norm, self.shuffle_generator, config.output_dir)
        self.progress_state = Progress()
        self._batch: Rollout | None = None  # the rollout being optimised (its importance weights)
        self.metrics = MetricsSink(None, acc.is_main_process, config.report_to, config)
        self.state = TrainerState(acc, self.command, self.model, self.optimizer, self.scheduler,
                                  {"sample": self.sample_generator, "shuffle": self.shuffle_generator,
                                   "data": self.prompts.generator},
                                  self.prompts, self.metrics, config.save_total_limit, config=config)

    # ------------------------------------------------------------------ what a method provides
    def update_policy(self, batch: Rollout) -> dict[str, Any]:
        """Advantages and the optimisation of one update; return this rank's scalar metrics (averaged
        over ranks by the caller)."""
        raise NotImplementedError

    def build_trainable(self, policy: nn.Module, same_vocab: bool) -> nn.Module:
        """The trained module (policy, and for PPO its critic); default: the policy alone."""
        return PolicyOnly(policy)

    def after_update(self, metrics: dict[str, float]) -> dict[str, float]:
        """Hook after the metrics are averaged over ranks (PPO's adaptive KL); extra metrics to log."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Method state a checkpoint must keep besides weights, optimizer and RNGs (JSON-able)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`extra_state`."""

    def summary_extras(self, last: dict[str, float]) -> dict[str, Any]:
        """Method-specific entries of summary.json."""
        return {}

    def progress(self, metrics: dict[str, float]) -> dict[str, str]:
        """What the progress bar shows."""
        return {}

    # ------------------------------------------------------------------ the seam: data and experience
    def make_prompt_stream(self):
        """Where each update's batch comes from: the prompt stream, or with --env the env-seed stream
        (reset seeds; ``rlhf.envs.seeds``). Either's position is part of every checkpoint."""
        if self.config.env:
            from rlhf.envs.seeds import EnvSeedStream

            return EnvSeedStream(self.config, self.rank, self.world_size)
        return PromptStream(self.config, self.tokenizer, self.rank, self.world_size)

    def make_experience_maker(self, *args) -> ExperienceMaker:
        """One batch -> a Rollout: prompts and one sampled response each, or with --env multi-turn episodes
        (``rlhf.envs.experience``: the same Rollout, the env's text masked out of the loss)."""
        if self.config.env:
            from rlhf.envs.experience import EnvExperienceMaker

            sync = needs_synchronised_generation(self.accelerator, self.config.ds3_gather_for_generation)
            return EnvExperienceMaker(self.config, *args, all_finished=all_processes_finished if sync else None)
        return ExperienceMaker(*args)

    # ------------------------------------------------------------------ the seam: sampling
    def make_sampler(self) -> Sampler:
        """The sampler training and evaluation use: the built-in one, or vLLM's (``--use_vllm``)."""
        cfg = self.config
        # Token-by-token sampling must run the same number of forwards on every rank when a forward is a
        # collective (FSDP; ZeRO-3 without the one-off gather).
        sync = needs_synchronised_generation(self.accelerator, cfg.ds3_gather_for_generation)
        settings = SamplingSettings(cfg.max_new_tokens, cfg.temperature, self.pad_id, self.stop_id,
                                    cfg.local_rollout_forward_batch_size)
        if cfg.use_vllm:
            from rlhf.rl.vllm_sampler import make_vllm_sampler  # imports vLLM only when asked for

            return make_vllm_sampler(cfg, self.accelerator, self.model, settings, self.precision)
        return HFSampler(self._policy_for_sampling, settings, self.device, autocast=self.accelerator.autocast,
                         all_finished=all_processes_finished if sync else None, share_prompts=self.share_prompts)

    @contextmanager
    def _policy_for_sampling(self):
        if self.model.training:  # a transformers model's train()/eval() is not free; only switch when needed
            self.model.eval()
        # Under ZeRO-3 the policy's parameters are gathered once for the whole batch (not once per token).
        with self._unwrapped(self.config.ds3_gather_for_generation) as unwrapped:
            yield unwrapped.policy

    @property
    def policy(self) -> nn.Module:
        return self._plain_model.policy

    def _unwrapped(self, gather_deepspeed3_params: bool) -> AbstractContextManager[nn.Module]:
        """The trainable module for many small forwards: ``unwrap_for_generation`` when the parameters are
        sharded (ZeRO-3, FSDP), else the plain module (all that function would do)."""
        if self._sharded:
            return unwrap_for_generation(self.model, self.accelerator, gather_deepspeed3_params)
        return nullcontext(self._plain_model)

    def _reference_logits(self, query_responses: Tensor, attention_mask: Tensor, context_length: int,
                          policy: nn.Module | None = None) -> Tensor:
        """Logits of the frozen reference: its own model, or ``policy`` (default: the trained one) with
        the LoRA adapter disabled."""
        args = (query_responses, attention_mask, context_length, self.share_prompts)
        if self.ref_policy is not None:
            return logits_for_responses(self.ref_policy, *args)
        policy = self.policy if policy is None else policy
        with policy.disable_adapter():
            return logits_for_responses(policy, *args)

    def rollout(self, prompts: list[str], query_ids: list[list[int]], generator: torch.Generator) -> Rollout:
        where = f"the batch of update {self.update + 1} (rank {self.rank})"
        return self.experience.make(prompts, query_ids, generator, where)

    def next_batch(self) -> tuple[list[str], list[list[int]]]:
        return self.prompts.next_batch()

    # ------------------------------------------------------------------ one update
    def optimize_on_batch(self, tensors: dict[str, Tensor], passes: int, shuffle: bool, loss_fn: LossFn
                          ) -> tuple[list[dict[str, Tensor]], list[float]]:
        self.optimizer_loop.update = self.update + 1
        # The one place the sampling correction joins every method's tensors (the losses multiply by it:
        # rlhf.rl.correction.apply_importance_weight); absent without vLLM, so nothing changes there.
        for key in ("importance_weight", "sequence_importance_weight"):
            weight = getattr(self._batch, key, None)
            if weight is not None:
                tensors = {**tensors, key: weight}
        return self.optimizer_loop.run(tensors, passes, shuffle, loss_fn)

    def step(self, prompts: list[str], query_ids: list[list[int]]) -> tuple[dict[str, float], Rollout]:
        """One update: rollout, the method's :meth:`update_policy`, the schedule, metrics over ranks."""
        cfg = self.config
        t0 = time.perf_counter()
        batch = self.rollout(prompts, query_ids, self.sample_generator)
        t1 = time.perf_counter()
        self.model.train()
        self._batch = batch
        try:
            local = self.update_policy(batch)
        finally:
            self.model.eval()
            self._batch = None
        if hasattr(batch, "env_metrics"):  # episodes: return, success, turns, env steps
            local.update(batch.env_metrics())
        self.sampler.sync_weights()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        t2 = time.perf_counter()
        metrics = mean_over_ranks(self.accelerator, local)
        if batch.sampling_stats is not None:  # min/max over every rank's tokens, not a mean of extremes
            metrics.update(reduce_mismatch_metrics(self.accelerator, batch.sampling_stats))
        metrics.update(self.after_update(metrics))
        self.progress_state.episode += cfg.local_batch_size * self.world_size
        metrics.update({
            "lr": lr, "episode": self.episode, "time/rollout": t1 - t0, "time/update": t2 - t1, "time/step": t2 - t0,
            "eps": cfg.local_batch_size * self.world_size / (t2 - t0),
        })
        return metrics, batch

    def gather(self, x: Tensor) -> Tensor:
        """Every rank's ``x`` concatenated in rank order (``x`` itself in one process)."""
        return self.accelerator.gather(x.contiguous()) if self.world_size > 1 else x

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate_reward(self) -> dict[str, float]:
        """Mean reward-source score, KL to the reference and EOS rate on the held-out prompts, sampled
        as in training (same sampler, same temperature) with a fixed seed, so before/after see the same
        randomness."""
        generator = torch.Generator(device=self.device).manual_seed(self.config.seed + HELD_OUT_SEED_OFFSET + self.rank)
        if self.config.env:  # the mean undiscounted return (and success rate) on held-out env seeds
            from rlhf.envs.evaluation import evaluate_held_out_episodes

            return evaluate_held_out_episodes(self, generator)
        prompts, ids, weight_list = self.prompts.held_out_for_rank()
        weights = torch.tensor(weight_list, dtype=torch.float64, device=self.device)
        sums = torch.zeros(5, dtype=torch.float64, device=self.device)
        for start in range(0, len(ids), self.config.local_batch_size):
            end = start + self.config.local_batch_size
            batch = self.rollout(prompts[start:end], ids[start:end], generator)
            w = weights[start:end]
            kl = (batch.logprobs - batch.ref_logprobs).mul(batch.loss_mask).sum(1)  # k1, summed over the tokens
            sums += torch.stack([batch.raw_scores.double() @ w, batch.scores.double() @ w, kl.double() @ w,
                                 batch.has_stop.double() @ w, w.sum()])
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

        cfg, main = self.config, self.accelerator.is_main_process
        self.metrics.attach(output_dir)
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        else:
            self.progress_state.before = self.evaluate_reward()
        self.metrics.open(self.update)
        sample_every = max(1, self.num_updates // cfg.num_sample_generations) if cfg.num_sample_generations else 0
        bar = tqdm(total=self.num_updates, initial=self.update, desc=self.command,
                   disable=not main or cfg.disable_tqdm, dynamic_ncols=True)
        start = time.perf_counter() - self.progress_state.elapsed
        last: dict[str, float] = dict(self.metrics.history[-1]) if self.metrics.history else {}
        # Ctrl-C / SIGTERM: a flag checked after each update; a second one stops at once (rlhf.common.stopping)
        signals = stop_signals()
        signals.__enter__()
        try:
            for update in range(self.update + 1, self.num_updates + 1):
                metrics, batch = self.step(*self.next_batch())
                self.progress_state.update = update
                metrics["time/total"] = time.perf_counter() - start
                check_finite(metrics, self.model, update, cfg.output_dir)
                last = metrics
                if update % cfg.logging_steps == 0 or update == self.num_updates:
                    self.metrics.log(update, metrics)
                if main and sample_every and (update % sample_every == 0 or update == 1):
                    self._print_samples(update, batch, write_above_bars)
                bar.set_postfix(self.progress(metrics))
                bar.update(1)
                saves = output_dir is not None and cfg.save_steps and update % cfg.save_steps == 0
                if saves and update < self.num_updates:
                    self.progress_state.elapsed = time.perf_counter() - start
                    self.save_checkpoint(output_dir)
                if update < self.num_updates and (signal_name := stop_pending()) is not None:
                    self._stop(signal_name, output_dir, already_saved=saves, elapsed=time.perf_counter() - start)
        finally:
            bar.close()
            self.metrics.close()
            signals.__exit__(None, None, None)
        train_runtime = time.perf_counter() - start
        return run_summary(self, self.progress_state.before or {}, self.evaluate_reward(), train_runtime, last, resume_from)

    def _stop(self, signal_name: str, output_dir: Path | None, already_saved: bool, elapsed: float) -> None:
        """Save the state after this update (unless just saved) and raise :class:`RunStopped`."""
        where = f"after update {self.update}/{self.num_updates}"
        if output_dir is None:
            raise RunStopped(signal_name, where + " (no output folder: nothing saved)", "")
        if not already_saved:
            self.progress_state.elapsed = elapsed
            self.save_checkpoint(output_dir)
        raise RunStopped(signal_name, f"{where}; checkpoint saved in {output_dir / f'checkpoint-{self.update}'}")

    def _print_samples(self, update: int, batch: Rollout, write, count: int = 3) -> None:
        lines = [f"[{self.command}] samples at update {update}/{self.num_updates}:"]
        for prompt, completion, score in list(zip(batch.prompts, batch.completions, batch.raw_scores.tolist()))[:count]:
            lines.append(f"  {prompt!r} -> {completion!r}  (score {score:+.3f})")
        write("\n".join(lines))  # one write: the progress bar is cleared and redrawn once around them

    # ------------------------------------------------------------------ state, checkpoints, saving
    @property
    def update(self) -> int:
        return self.progress_state.update

    @property
    def episode(self) -> int:
        return self.progress_state.episode

    def save_checkpoint(self, output_dir: Path) -> Path | None:
        return self.state.save(output_dir, self.progress_state, self.num_updates, self.extra_state())

    def load_checkpoint(self, path: Path) -> None:
        self.progress_state, extra = self.state.load(path, self.num_updates)
        self.load_extra_state(extra)
        self.sampler.sync_weights()  # a separate engine (vLLM) still holds the weights it started with

    def save(self, output_dir: Path) -> None:
        save_policy(self, output_dir)
