"""The vLLM sampler (``--use_vllm``): the :class:`rlhf.rl.sampler.Sampler` interface on a vLLM engine.

- ``--vllm_mode colocate``: one in-process engine per training process, on its device (TRL's colocate
  mode). Every rank gathers the policy's full weights after an update and loads them into its own engine.
- ``--vllm_mode server``: one ``rlhf vllm-serve`` for the whole job. Rank 0 pushes the weights; every rank
  waits for that before it samples again.

Seeds: each response gets its own vLLM seed, drawn from the trainer's ``torch.Generator``, so the same
seed (and the same checkpoint position) gives the same samples; the built-in sampler draws from the same
generator differently, so the two backends give different (equally distributed) samples.
The engine's log-probabilities are returned: the experience maker compares them with the trainer's own
(``sampling/sampling_logp_difference``) and corrects the losses by their ratio (``rlhf.rl.correction``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rlhf.common.errors import ConfigError
from rlhf.rl.sampler import Samples, SamplingSettings
from rlhf.rl.vllm_engine import EngineError, EngineOptions, LocalEngine, ServerEngine
from rlhf.rl.weight_sync import policy_weights

__all__ = ["EngineError", "VLLMSampler", "make_vllm_sampler"]

SEED_RANGE = 2**31 - 1  # vLLM's per-request seed is a 32-bit int


class VLLMSampler:
    """Samples with a vLLM engine; :meth:`sync_weights` copies the policy's weights into it."""

    name = "vllm"

    def __init__(self, engine, settings: SamplingSettings, device: torch.device | str, model: nn.Module,
                 accelerator: Any, pushes_weights: bool = True):
        """``model`` is the trainer's prepared trainable module (its ``.policy`` is sampled); ``pushes_weights``:
        this process loads the weights into the engine (every rank when colocated; rank 0 of a server's job)."""
        self.engine, self.settings, self.device = engine, settings, device
        self.model, self.accelerator, self.pushes_weights = model, accelerator, pushes_weights
        self.engine_weights_stale = False  # the engine slept (its weights freed): push them before sampling

    @torch.no_grad()
    def sample(self, prompt_ids: list[list[int]], generator: torch.Generator) -> Samples:
        s = self.settings
        seeds = torch.randint(0, SEED_RANGE, (len(prompt_ids),), generator=generator, device=generator.device).tolist()
        if self.engine_weights_stale:  # sleep mode discarded them (every rank samples here, so all join)
            self.sync_weights()
        self.engine.wake_up(tags=["kv_cache"])
        try:
            results = self.engine.generate(prompt_ids, seeds, s.temperature, s.max_new_tokens,
                                           () if s.stop_token_id is None else (s.stop_token_id,))
        finally:
            self._sleep()
        width = max(1, max(len(r.token_ids) for r in results))
        responses = torch.full((len(results), width), s.pad_token_id, dtype=torch.long)
        logprobs = torch.zeros((len(results), width), dtype=torch.float32)
        for row, result in enumerate(results):
            n = len(result.token_ids)
            responses[row, :n] = torch.tensor(result.token_ids, dtype=torch.long)
            logprobs[row, :n] = torch.tensor(result.logprobs, dtype=torch.float32)
        return Samples(responses.to(self.device), logprobs.to(self.device))

    def sync_weights(self) -> None:
        """Every rank calls this after every update (gathering sharded weights is a collective)."""
        with policy_weights(self.model, self.accelerator) as weights:
            if self.pushes_weights:
                self.engine.wake_up(tags=["weights"])
                self.engine.load_weights(weights)
        self.engine_weights_stale = False
        if self.accelerator.num_processes > 1:
            self.accelerator.wait_for_everyone()  # a server's weights are updated before any rank samples

    def _sleep(self) -> None:
        if getattr(self.engine, "options", None) is not None and self.engine.options.enable_sleep_mode:
            self.engine.sleep()
            self.engine_weights_stale = True

    def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.close()


def engine_dtype(config, precision: str) -> str:
    """The engine's dtype: the trainer's compute precision (bf16/fp16 mixed precision samples in that
    half type), else the weights' --dtype."""
    return {"bf16": "bfloat16", "fp16": "float16"}.get(precision, config.dtype)


def make_vllm_sampler(config, accelerator, model: nn.Module, settings: SamplingSettings, precision: str) -> VLLMSampler:
    """The sampler for ``--use_vllm`` (refusals first, one line each); the engine starts here."""
    device = accelerator.device
    on_gpu = torch.device(device).type == "cuda"
    if config.vllm_enable_sleep_mode and not on_gpu:
        raise ConfigError("--vllm_enable_sleep_mode needs a CUDA GPU (vLLM's CPU build has no sleep mode); drop the flag")
    if config.vllm_mode == "server":
        url = config.vllm_server_base_url or f"http://{config.vllm_server_host}:{config.vllm_server_port}"
        # Every rank sends its own prompts; rank 0 alone pushes the weights (they are the same on every rank).
        sampler = VLLMSampler(ServerEngine(url, config.vllm_server_timeout), settings, device, model, accelerator,
                              pushes_weights=accelerator.is_main_process)
    else:
        options = EngineOptions(
            model=config.model_name_or_path, dtype=engine_dtype(config, precision), seed=config.seed + accelerator.process_index,
            gpu_memory_utilization=config.vllm_gpu_memory_utilization, max_model_len=config.vllm_max_model_length,
            enable_sleep_mode=config.vllm_enable_sleep_mode, trust_remote_code=config.trust_remote_code,
            # Several launched processes: each its own engine in the job's process group (TRL's colocate mode).
            distributed_executor_backend="external_launcher" if accelerator.num_processes > 1 else None,
        )
        sampler = VLLMSampler(LocalEngine(options), settings, device, model, accelerator)
        accelerator.wait_for_everyone()  # engines start at different speeds; collectives follow
    # The engine loaded the checkpoint from disk; the policy may differ (a value head, LoRA, a resumed run
    # loads later and syncs again): start from the policy's own weights.
    sampler.sync_weights()
    return sampler
