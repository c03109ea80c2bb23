"""The networks and reward sources of `rlhf ppo`.

- :class:`ValueModel` -- the critic: a transformer body with a scalar head read at every token,
  initialised from the reward model (N+ details, DeepSpeed-Chat, OpenRLHF).
- :class:`PolicyAndValue` -- the policy and its critic as one module, so accelerate prepares (and
  DDP synchronises) both with one wrapper; or the policy with a value head on its last hidden state
  (``--value_head_on_policy``, trlX).
- Reward sources: :class:`RewardModelScorer` (a sequence classifier scores ``prompt + response +
  EOS``, the text convention it was trained on) and :class:`RewardFunction` (a user's
  ``module:function`` called on the decoded texts). Both map ``(prompts, completions)`` to a float
  tensor ``(B,)``.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from torch import Tensor, nn

from rlhf.common.data import reward_text
from rlhf.rl.rollout import (
    left_pad,
    logits_for_responses,
    per_token_values,
    position_ids_from_mask,
    sequence_scores,
)

__all__ = [
    "PolicyAndValue",
    "RewardFunction",
    "RewardModelScorer",
    "ValueModel",
    "disable_dropout",
    "load_reward_function",
]


def disable_dropout(model: nn.Module) -> None:
    """Zero every dropout probability (N+ details: dropout off in policy, reference, RM and critic).

    Keeps train and eval mode numerically identical, so the rollout's logprobs and values match the
    update's first forward pass exactly.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


# ----------------------------------------------------------------------------- networks
class ValueModel(nn.Module):
    """Critic ``V(s_t)``: a transformer body and a scalar head applied at every position."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    @classmethod
    def from_sequence_classifier(cls, model: nn.Module, zero_head: bool = False) -> ValueModel:
        """Take the body and the ``score`` head of an ``AutoModelForSequenceClassification``.

        ``zero_head`` zeroes the head so every value starts at 0 (for a critic that does not come
        from a trained reward model).
        """
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        prefix = getattr(inner, "base_model_prefix", "model")
        backbone, head = getattr(inner, prefix, None), getattr(inner, "score", None)
        if backbone is None or head is None:
            raise ValueError(
                f"{type(inner).__name__} has no `{prefix}` body or `score` head; the critic needs a "
                "causal-LM sequence classifier (AutoModelForSequenceClassification with num_labels=1)"
            )
        if zero_head:
            with torch.no_grad():
                for p in head.parameters():
                    p.zero_()
        return cls(backbone, head)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Values ``(B, L)`` at every position."""
        return per_token_values(self.backbone, self.head, input_ids, attention_mask)


class PolicyAndValue(nn.Module):
    """The trainable pair: a causal-LM policy and either a separate critic or a value head on it."""

    def __init__(self, policy: nn.Module, critic: ValueModel | None = None):
        super().__init__()
        self.policy = policy
        self.critic = critic
        self.value_head: nn.Linear | None = None
        if critic is None:
            hidden = policy.config.get_text_config().hidden_size
            self.value_head = nn.Linear(hidden, 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    def forward(self, query_responses: Tensor, attention_mask: Tensor, context_length: int) -> tuple[Tensor, Tensor]:
        """Logits ``(B, R, V)`` predicting each response token and the values ``(B, R)`` of the states
        before them (columns ``P - 1 .. P + R - 2``)."""
        response_length = query_responses.shape[1] - context_length
        if self.critic is not None:
            logits = logits_for_responses(self.policy, query_responses, attention_mask, context_length)
            values = self.critic(query_responses, attention_mask)
        else:
            out = self.policy(
                input_ids=query_responses,
                attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask),
                use_cache=False,
                output_hidden_states=True,
            )
            logits = out.logits
            values = self.value_head(out.hidden_states[-1].to(self.value_head.weight.dtype)).squeeze(-1).float()
            logits = logits[:, -(response_length + 1) : -1]
        return logits, values[:, -(response_length + 1) : -1]


# ----------------------------------------------------------------------------- reward sources
def load_reward_function(spec: str) -> Callable[[list[str], list[str]], Sequence[float]]:
    """Import ``module:function`` (or ``path/to/file.py:function``) for ``--reward_fn``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--reward_fn {spec!r}: expected 'module:function' (e.g. rlhf.tasks.reviews:gold_reward)")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise ImportError(f"no file {path}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or the module itself failing on import
        raise ValueError(
            f"--reward_fn {spec!r}: cannot import module '{module_name}' ({type(err).__name__}: {err}); "
            "give an importable module (on PYTHONPATH) or a .py file, as module:function"
        ) from err
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ValueError(f"--reward_fn {spec!r}: module '{module_name}' has no callable '{attr}'")
    return fn


class RewardFunction:
    """A user's ``(prompts, completions) -> list[float]`` as a reward source with checked output."""

    def __init__(self, fn: Callable[[list[str], list[str]], Sequence[float]], name: str = "reward_fn"):
        self.fn = fn
        self.name = name

    def __call__(self, prompts: list[str], completions: list[str], device: torch.device | str = "cpu") -> Tensor:
        out = self.fn(list(prompts), list(completions))
        try:
            values = [float(v) for v in out]
        except (TypeError, ValueError) as err:
            raise ValueError(f"--reward_fn {self.name}: must return a list of floats, got {type(out).__name__}") from err
        if len(values) != len(completions):
            raise ValueError(
                f"--reward_fn {self.name}: returned {len(values)} scores for {len(completions)} completions; "
                "it must return one float per (prompt, completion) pair"
            )
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"--reward_fn {self.name}: returned a non-finite score (nan or inf)")
        return torch.tensor(values, dtype=torch.float32, device=device)


class RewardModelScorer:
    """Scores ``prompt + completion + EOS`` with a sequence-classification reward model.

    Texts are re-tokenized with the reward model's own tokenizer, exactly as `rlhf reward` saw them in
    training (`rlhf.common.data.reward_text`), so a reward model with another tokenizer works too.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        batch_size: int = 64,
        place: Callable[[], AbstractContextManager[nn.Module]] | None = None,
    ):
        """``place``, if given, returns a context manager yielding the model ready to call (e.g.
        ``rlhf.common.distributed.unwrap_for_generation`` of a ZeRO-3 or FSDP-wrapped reward model)."""
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.place = place or (lambda: nullcontext(self.model))
        self.name = getattr(getattr(model, "module", model).config, "_name_or_path", "reward_model")

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str], device: torch.device | str = "cpu") -> Tensor:
        texts = [reward_text(p, c, self.tokenizer.eos_token) for p, c in zip(prompts, completions)]
        ids = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        scores = []
        with self.place() as model:
            for start in range(0, len(ids), self.batch_size):
                chunk, mask = left_pad(ids[start : start + self.batch_size], self.tokenizer.pad_token_id, device)
                last = torch.full((chunk.shape[0],), chunk.shape[1] - 1, dtype=torch.long, device=device)
                scores.append(sequence_scores(model, chunk, mask, last))
        return torch.cat(scores).float()
