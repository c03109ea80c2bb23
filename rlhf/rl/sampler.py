"""Sampling responses: the sampler interface, the built-in KV-cache sampler, and the cut after the stop token.

A :class:`Sampler` turns token-id prompts into sampled response token ids, and may return the
engine's own log-probabilities of those tokens (the trainer recomputes them where they must match
its own forward). Training (``rlhf.rl.experience``) and evaluation (held-out rewards, the pipeline's
comparison, the label page) sample through the same interface, seeded by a ``torch.Generator``: the
same seed gives the same samples.

:class:`HFSampler` is the built-in implementation: the model's KV cache and inverse-CDF sampling
(:func:`sample_responses`), pure sampling from ``softmax(logits / T)`` -- no top-k, top-p or repetition
penalty, so the log-probabilities are those of the distribution the methods optimise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from rlhf.rl.forward import cache_keyword, left_pad, position_ids_from_mask, prefill

__all__ = [
    "HFSampler",
    "Samples",
    "Sampler",
    "SamplingSettings",
    "Truncated",
    "sample_from_logits",
    "sample_responses",
    "truncate_after_stop",
]


# ----------------------------------------------------------------------------- sampling
def sample_from_logits(
    logits: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """One token per row of ``logits (B, V)`` from ``softmax(logits / T)``, by inverse-CDF sampling.

    With ``c = cumsum(p)`` and one uniform ``u ~ U[0, c_V)`` per row, the token is the first ``a``
    with ``c_a > u`` (``searchsorted(c, u, right=True)``), so ``P(a) = (c_a - c_{a-1}) / c_V = p_a``:
    the distribution of ``torch.multinomial(p, 1)``, in one ``cumsum`` and one binary search instead
    of multinomial's slower sampler. Tokens of zero
    probability are never drawn (their ``c_a`` equals ``c_{a-1}``); scaling ``u`` by ``c_V`` absorbs
    the rounding of the float32 sum. Deterministic given ``generator``: one ``torch.rand((B, 1))`` per call.

    Returns the tokens ``(B,)`` and the log-probabilities ``(B, V)`` they were drawn from.
    """
    if temperature == 0:  # greedy; the log-probabilities of the untempered softmax
        logp = torch.log_softmax(logits.float(), dim=-1)
        return logp.argmax(dim=-1), logp
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    cdf = logp.exp().cumsum(dim=-1)
    u = torch.rand((cdf.shape[0], 1), generator=generator, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    token = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1).squeeze(1)
    return token, logp


@dataclass
class Sampled:
    """Generated responses ``(B, R')`` (R' <= max_new_tokens: generation stops once every sequence
    has its stop token) and the sampled tokens' logprobs under ``softmax(logits / T)``."""

    responses: Tensor
    logprobs: Tensor


@torch.no_grad()
def sample_responses(
    model: nn.Module,
    query_ids: Tensor,
    query_mask: Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    pad_token_id: int,
    stop_token_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
    all_finished: Callable[[Tensor], bool] | None = None,
    share_prompts: bool = False,
) -> Sampled:
    """Sample up to ``max_new_tokens`` tokens for a left-padded batch with the model's KV cache.

    Pure sampling from ``softmax(logits / temperature)`` (:func:`sample_from_logits`; no top-k,
    top-p or repetition penalty, so the logprobs are those of the distribution PPO optimises; the
    temperature is the only knob). Finished sequences (stop token seen) continue with
    ``pad_token_id``; the loop ends when ``all_finished(done)`` says so -- by default when every row
    of this batch is done. When the model's forward is a collective (FSDP, ZeRO-3 without gathering),
    pass a function that agrees over all processes (``rlhf.common.distributed.all_processes``), so every
    rank runs the same number of forwards and none waits forever (trlX #373). ``share_prompts``: each
    distinct prompt is prefilled once (:func:`prefill`); the same tokens for the same generator.
    """
    all_finished = all_finished or (lambda d: bool(d.all()))
    batch = query_ids.shape[0]
    device = query_ids.device
    stops = torch.as_tensor(list(stop_token_ids), dtype=torch.long, device=device)
    mask = query_mask.long()
    cache_arg = cache_keyword(model)
    logits, cache = prefill(model, query_ids, mask, share_prompts)
    next_position = position_ids_from_mask(mask)[:, -1:] + 1
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens, logprobs = [], []
    for step in range(max_new_tokens):
        token, logp = sample_from_logits(logits, temperature, generator)
        token = token.masked_fill(done, pad_token_id)
        tokens.append(token)
        logprobs.append(logp.gather(1, token.unsqueeze(1)).squeeze(1))
        if stops.numel():
            done = done | torch.isin(token, stops)
            if all_finished(done):
                break
        if step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(
            input_ids=token.unsqueeze(1),
            attention_mask=mask,
            position_ids=next_position,
            use_cache=True,
            **{cache_arg: cache},
        )
        logits, cache = out.logits[:, -1], out[cache_arg]
        next_position = next_position + 1
    return Sampled(torch.stack(tokens, dim=1), torch.stack(logprobs, dim=1))


# ----------------------------------------------------------------------------- truncation
@dataclass
class Truncated:
    """Responses cut after their first stop token."""

    responses: Tensor
    """(B, R) with pad after the first stop token."""
    mask: Tensor
    """(B, R) bool, True on real tokens (up to and including the first stop token)."""
    last_index: Tensor
    """(B,) column of the last real token (where the score goes)."""
    has_stop: Tensor
    """(B,) bool, whether the response contains the stop token."""


def truncate_after_stop(responses: Tensor, stop_token_id: int | None, pad_token_id: int) -> Truncated:
    """Replace every token after the first ``stop_token_id`` with pad and build the response mask.

    The mask comes from the stop position, never from ``== pad`` (the model may sample the pad id).
    """
    if stop_token_id is None:
        mask = torch.ones_like(responses, dtype=torch.bool)
        has_stop = torch.zeros(responses.shape[0], dtype=torch.bool, device=responses.device)
        return Truncated(responses, mask, torch.full_like(has_stop, responses.shape[1] - 1, dtype=torch.long), has_stop)
    is_stop = responses == stop_token_id
    after_stop = (is_stop.long().cumsum(1) - is_stop.long()) > 0
    mask = ~after_stop
    return Truncated(
        responses.masked_fill(after_stop, pad_token_id), mask, mask.long().sum(1) - 1, is_stop.any(1)
    )


# ----------------------------------------------------------------------------- the sampler interface
@dataclass
class SamplingSettings:
    """What every sampler must honour, so backends are interchangeable."""

    max_new_tokens: int
    temperature: float  # 0: greedy
    pad_token_id: int
    stop_token_id: int | None  # None: every response runs to max_new_tokens
    batch_size: int = 64  # prompts per forward (the built-in sampler's chunk)


@dataclass
class Samples:
    """What a sampler returns for ``B`` prompts."""

    responses: Tensor
    """(B, R) sampled token ids; R <= max_new_tokens; pad after a row's stop token (cut again by the caller)."""
    logprobs: Tensor | None
    """(B, R) the engine's log-probabilities of those tokens under ``softmax(logits / T)``; None if it gives none."""


@runtime_checkable
class Sampler(Protocol):
    """A backend that samples responses: the built-in :class:`HFSampler`; a vLLM engine plugs in here."""

    name: str  # recorded in summary.json as generation_backend

    def sample(self, prompt_ids: list[list[int]], generator: torch.Generator) -> Samples:
        """One response per prompt (repeat a prompt for several); deterministic given ``generator``'s state."""
        ...

    def sync_weights(self) -> None:
        """Called after every update, so the next :meth:`sample` uses the updated weights."""
        ...

    def close(self) -> None:
        """Free the engine (processes, memory); the sampler is not used after."""
        ...


class HFSampler:
    """The built-in sampler: the policy's own forward with its KV cache (:func:`sample_responses`).

    ``policy`` is the model, or a function returning a context manager that yields it ready to call (the
    trainer's: under ZeRO-3 the parameters are gathered once for the whole batch, not once per token).
    It samples from the live weights, so :meth:`sync_weights` has nothing to do.
    """

    name = "hf"

    def __init__(
        self,
        policy: nn.Module | Callable[[], AbstractContextManager[nn.Module]],
        settings: SamplingSettings,
        device: torch.device | str,
        *,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
        all_finished: Callable[[Tensor], bool] | None = None,
        share_prompts: bool = False,
    ):
        self.policy = (lambda: nullcontext(policy)) if isinstance(policy, nn.Module) else policy
        self.settings, self.device, self.autocast = settings, device, autocast
        self.all_finished, self.share_prompts = all_finished, share_prompts

    @torch.no_grad()
    def sample(self, prompt_ids: list[list[int]], generator: torch.Generator) -> Samples:
        s = self.settings
        queries, query_mask = left_pad(prompt_ids, s.pad_token_id, self.device)
        chunks = []
        with self.policy() as policy, self.autocast():
            for start in range(0, queries.shape[0], s.batch_size):
                end = start + s.batch_size
                chunks.append(sample_responses(
                    policy, queries[start:end], query_mask[start:end],
                    max_new_tokens=s.max_new_tokens, temperature=s.temperature, pad_token_id=s.pad_token_id,
                    stop_token_ids=() if s.stop_token_id is None else (s.stop_token_id,), generator=generator,
                    all_finished=self.all_finished, share_prompts=self.share_prompts,
                ))
        width = max(c.responses.shape[1] for c in chunks)
        responses = torch.cat([nn.functional.pad(c.responses, (0, width - c.responses.shape[1]), value=s.pad_token_id) for c in chunks])
        logprobs = torch.cat([nn.functional.pad(c.logprobs, (0, width - c.logprobs.shape[1])) for c in chunks])
        return Samples(responses, logprobs)

    def sync_weights(self) -> None:
        pass

    def close(self) -> None:
        pass
