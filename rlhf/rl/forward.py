"""Forward passes of causal LMs on whole batches of prompt + response tokens: log-probabilities,
entropies, values and reward-model scores.

Layout of a batch of ``B`` sequences::

    query_responses  (B, P + R)   left-padded prompts (P columns), then R response columns
    responses        (B, R)       the response region: sampled tokens (and, in a multi-turn episode,
                                  the environment's tokens between turns); pad at the end

Prompts are left-padded so every response starts in column P; forwards get ``position_ids``
recomputed from the attention mask (``cumsum(mask) - 1``), so a padded batch gives the same
numbers as each sequence alone. The logits that predict response token t sit in column
``P - 1 + t`` (the last prompt token predicts the first response token).

Shared prompts (GRPO, RLOO: ``num_generations`` completions of each prompt): with ``share_prompts=True``
each distinct prompt row goes through the model once and its KV cache is copied to the rows that repeat
it, then only the response tokens are run against that cache -- the same logits (and gradients: the
copy is an index, so each prompt's activations collect the gradients of all its completions) for
about ``1 / num_generations`` of the prompt's compute.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "distinct_rows",
    "entropy_from_logits",
    "left_pad",
    "logits_for_responses",
    "logprobs_and_entropy",
    "per_token_values",
    "position_ids_from_mask",
    "cache_keyword",
    "prefill",
    "sequence_scores",
    "token_logprobs",
]


# ----------------------------------------------------------------------------- padding and positions
def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Left-pad token id lists into ``(ids, attention_mask)``, both ``(B, max_len)`` long tensors."""
    if not sequences:
        raise ValueError("left_pad: no sequences")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if len(seq) == 0:
            raise ValueError("left_pad: a prompt tokenized to zero tokens; remove empty prompts from the dataset")
        ids[i, width - len(seq):] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[i, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """``cumsum(mask) - 1`` clamped at 0: position 0 is each sequence's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def distinct_rows(query_ids: Tensor, query_mask: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """The distinct rows of a left-padded prompt batch ``(ids, mask)`` and, for every row, the index of
    its distinct row (``ids[i] == distinct_ids[index[i]]``); None when no row repeats another."""
    width = query_ids.shape[1]
    rows = torch.cat([query_ids, query_mask.to(query_ids.dtype)], dim=1)
    unique, index = torch.unique(rows, dim=0, return_inverse=True)
    if unique.shape[0] == rows.shape[0]:
        return None
    return unique[:, :width], unique[:, width:].to(query_mask.dtype), index


def cache_keyword(model: nn.Module) -> str:
    """The KV cache's keyword: transformers >= 5.x names it `cache`; earlier versions `past_key_values`."""
    return "cache" if _accepts(model, "cache") else "past_key_values"


def prefill(model: nn.Module, query_ids: Tensor, query_mask: Tensor, share_prompts: bool = False) -> tuple[Tensor, object]:
    """Run the prompts once: the logits at the last prompt column ``(B, V)`` (they predict the first new
    token) and the KV cache of all ``B`` rows. With ``share_prompts`` each distinct prompt is computed once
    and its cache rows copied to its repeats (:func:`distinct_rows`; differentiable)."""
    kwargs = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    cache_arg = cache_keyword(model)
    distinct = distinct_rows(query_ids, query_mask) if share_prompts else None
    ids, mask = (query_ids, query_mask) if distinct is None else distinct[:2]
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=True, **kwargs)
    logits, cache = out.logits[:, -1], out[cache_arg]
    if distinct is not None:
        index = distinct[2]
        cache.reorder_cache(index)  # every layer's keys and values: index_select over the batch
        logits = logits[index]
    return logits, cache


def _accepts(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` (of the innermost model under peft/DDP wrappers) takes ``name``."""
    inner = model
    for attr in ("module", "get_base_model"):
        if hasattr(inner, attr):
            inner = getattr(inner, attr)() if attr == "get_base_model" else getattr(inner, attr)
    try:
        return name in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------- logprobs
def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """``log softmax(logits / T)[token]`` per position, in float32, without a (B, T, V) log-softmax copy."""
    scaled = logits.float() / temperature
    picked = scaled.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(scaled, dim=-1)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy ``-sum_a p(a) log p(a)`` of ``softmax(logits / T)`` per position."""
    scaled = logits.float() / temperature
    logp = torch.log_softmax(scaled, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def logprobs_and_entropy(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """:func:`token_logprobs` (differentiable) and :func:`entropy_from_logits` (detached) in one pass.

    With ``z = logits / T`` and ``lse = logsumexp(z)``: ``log p(token) = z[token] - lse`` and
    ``H = lse - sum_a softmax(z)_a z_a``, so both share the scaling and the logsumexp (about a third
    less time than the two functions for a PPO minibatch's forward and backward).
    """
    scaled = logits.float() / temperature
    lse = torch.logsumexp(scaled, dim=-1)
    logprobs = scaled.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse
    with torch.no_grad():
        entropy = lse - (torch.softmax(scaled, dim=-1) * scaled).sum(-1)
    return logprobs, entropy


def logits_for_responses(
    model: nn.Module, query_responses: Tensor, attention_mask: Tensor, context_length: int,
    share_prompts: bool = False, **forward_kwargs
) -> Tensor:
    """Logits ``(B, R, V)`` that predict each response token (columns ``P - 1 .. P + R - 2``).

    Only the last ``R + 1`` positions go through the LM head when the model supports
    ``logits_to_keep``; pad columns are never read (left pads are before P - 1, right pads are masked
    by the caller). ``share_prompts``: each distinct prompt runs once (see the module docstring; not
    with gradient checkpointing, which turns the KV cache off in training).
    """
    if share_prompts and not forward_kwargs:
        shared = _logits_with_shared_prompts(model, query_responses, attention_mask, context_length)
        if shared is not None:
            return shared
    response_length = query_responses.shape[1] - context_length
    kwargs = dict(forward_kwargs)
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = response_length + 1
    out = model(
        input_ids=query_responses,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        **kwargs,
    )
    return out.logits[:, -(response_length + 1) : -1]


def _logits_with_shared_prompts(
    model: nn.Module, query_responses: Tensor, attention_mask: Tensor, context_length: int
) -> Tensor | None:
    """:func:`logits_for_responses` with each distinct prompt computed once (None: no prompt repeats)."""
    P = context_length
    if distinct_rows(query_responses[:, :P], attention_mask[:, :P]) is None:
        return None
    first, cache = prefill(model, query_responses[:, :P], attention_mask[:, :P], share_prompts=True)
    if query_responses.shape[1] - P == 1:
        return first.unsqueeze(1)
    # Response tokens 0 .. R-2 against the prompts' cache predict tokens 1 .. R-1.
    mask = attention_mask[:, :-1]
    out = model(
        input_ids=query_responses[:, P:-1], attention_mask=mask, position_ids=position_ids_from_mask(mask)[:, P:],
        use_cache=True, **{cache_keyword(model): cache},
    )
    return torch.cat([first.unsqueeze(1), out.logits], dim=1)


# ----------------------------------------------------------------------------- values and scores
def _backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer body and the scalar head of an ``AutoModelForSequenceClassification``."""
    model = getattr(model, "module", model)  # a DeepSpeed inference engine or an FSDP1 / DDP wrapper
    backbone = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    if backbone is None or head is None:
        raise ValueError(
            f"{type(model).__name__} is not a causal-LM sequence classifier with a `score` head; "
            "give a reward model saved by `rlhf reward` (AutoModelForSequenceClassification, num_labels=1)"
        )
    return backbone, head


def _last_hidden(backbone: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    return backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state


def per_token_values(backbone: nn.Module, head: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The scalar head applied at every position: ``(B, L)`` in float32."""
    return head(_last_hidden(backbone, input_ids, attention_mask)).squeeze(-1).float()


def sequence_scores(reward_model: nn.Module, input_ids: Tensor, attention_mask: Tensor, last_index: Tensor) -> Tensor:
    """Reward-model score ``(B,)`` read at column ``last_index`` (the last real token) of each row."""
    backbone, head = _backbone_and_head(reward_model)
    hidden = _last_hidden(backbone, input_ids, attention_mask)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return head(hidden[rows, last_index]).squeeze(-1).float()
