"""Where rewards come from and how they are shaped.

Reward sources map ``(prompts, completions)`` to a float tensor ``(B,)``: :class:`RewardFunction` (a
user's ``module:function`` called on the decoded texts -- ``--reward_fn`` imports that module as code,
so only name modules you trust) and :class:`RewardModelScorer` (a sequence classifier scores
``prompt + completion + EOS``, the text convention `rlhf reward` trained it on; the one scorer of
reward models, used in training, evaluation and the reward model's calibration). :class:`RewardSources`
sums weighted sources and names the one that fails.

Reward shaping (Ziegler et al. 2019; InstructGPT)::

    r_t = -beta * KL_t               for every trained response token t
    r_T += score(prompt, response)   at the last trained token T (the stop token, if any)

with ``KL_t`` from ``classic_rl.core.losses.kl_penalty``.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from torch import Tensor, nn

from classic_rl.core.losses import masked_whiten
from classic_rl.safe_io import UserError
from rlhf.common.data import reward_text
from rlhf.rl.forward import left_pad, sequence_scores

__all__ = [
    "RewardError",
    "RewardFunction",
    "RewardModelScorer",
    "RewardSources",
    "apply_missing_stop_penalty",
    "load_reward_function",
    "shape_rewards",
]


class RewardError(UserError, ValueError):
    """A reward function failed or returned something unusable; the message names it and the batch."""


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
        values = self._real_numbers(out)
        if len(values) != len(completions):
            raise ValueError(
                f"--reward_fn {self.name}: returned {len(values)} scores for {len(completions)} completions; "
                "it must return one float per (prompt, completion) pair"
            )
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"--reward_fn {self.name}: returned a non-finite score (nan or inf)")
        return torch.tensor(values, dtype=torch.float32, device=device)

    def _real_numbers(self, out: object) -> list[float]:
        """``out`` as floats if it is a sequence of real numbers or a 1-D tensor/array; else one line saying what
        came back. A dict, a string or a list of strings would convert (keys, characters, "1.5") and train on
        nonsense, so they are refused."""
        if hasattr(out, "tolist") and hasattr(out, "ndim"):  # a torch tensor or a numpy array
            kind = str(out.dtype)
            if out.ndim != 1 or not ("float" in kind or "int" in kind):
                raise ValueError(f"--reward_fn {self.name}: returned a {out.ndim}-D {type(out).__name__} of {kind}; "
                                 "return one real number per completion")
            out = out.tolist()
        if isinstance(out, (str, bytes, Mapping)) or not isinstance(out, Sequence):
            raise ValueError(f"--reward_fn {self.name}: must return a list of floats, one per completion; "
                             f"returned {_preview(out)}")
        bad = next((v for v in out if isinstance(v, bool) or not isinstance(v, numbers.Real)), None)
        if bad is not None:
            raise ValueError(f"--reward_fn {self.name}: must return a list of floats, one per completion; "
                             f"an element is {_preview(bad)}")
        return [float(v) for v in out]


def _preview(value: object) -> str:
    """``type: repr`` cut to 60 characters: enough to recognise, never the whole value."""
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


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


class RewardSources:
    """Scores ``(prompts, completions)`` with weighted reward functions or one reward model.

    Each source maps ``(prompts, completions, device=...)`` to a float tensor ``(B,)``
    (``rlhf.rl.trainable.RewardFunction`` / ``RewardModelScorer``); the reward is
    ``sum_k weight_k * score_k``.
    """

    def __init__(self, sources: Sequence[tuple[str, Callable[..., Tensor]]], weights: Sequence[float] | None = None):
        if not sources:
            raise ValueError("RewardSources: no reward source")
        self.names = [name for name, _ in sources]
        self.sources = [source for _, source in sources]
        self.weights = list(weights) if weights is not None else [1.0] * len(self.sources)

    def __call__(self, prompts: list[str], completions: list[str], device: torch.device | str = "cpu",
                 where: str = "a batch") -> tuple[Tensor, Tensor]:
        """``(weighted sum (B,), per-source scores (B, K))``; :class:`RewardError` names a failing source."""
        columns = []
        for name, source in zip(self.names, self.sources):
            try:
                scores = source(prompts, completions, device=device)
            except Exception as err:
                first = prompts[0] if prompts else ""
                raise RewardError(
                    f"reward source {name} failed on {where} ({len(completions)} completions, first prompt "
                    f"{first[:60]!r}): {type(err).__name__}: {err}"
                ) from err
            if not bool(torch.isfinite(scores).all()):
                raise RewardError(f"reward source {name} returned a non-finite score (nan or inf) on {where}")
            columns.append(scores.float())
        per_source = torch.stack(columns, dim=1)
        weights = torch.tensor(self.weights, dtype=per_source.dtype, device=per_source.device)
        return per_source @ weights, per_source


# ----------------------------------------------------------------------------- reward shaping
def apply_missing_stop_penalty(scores: Tensor, has_stop: Tensor, penalty: float | None) -> Tensor:
    """``score - penalty`` for responses that never emitted the stop token (TRL's missing_eos_penalty)."""
    if penalty is None:
        return scores
    return scores - penalty * (~has_stop).to(scores.dtype)


def shape_rewards(
    scores: Tensor,
    kl: Tensor,
    mask: Tensor,
    last_index: Tensor,
    kl_coef: float,
    whiten: bool = False,
) -> tuple[Tensor, Tensor]:
    """Per-token rewards ``-kl_coef * KL_t`` plus the score at the last real token.

    Returns ``(rewards, non_score_rewards)``, both ``(B, R)`` and 0 on padding. ``whiten`` rescales
    the rewards by their masked std without shifting the mean (N+ details).
    """
    valid = mask.to(kl.dtype)
    non_score = -kl_coef * kl * valid
    rewards = non_score.clone()
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_index] += scores.to(rewards.dtype)
    if whiten:
        rewards = masked_whiten(rewards, valid, shift_mean=False)
    return rewards, non_score
