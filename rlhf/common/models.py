"""Loading models and tokenizers (hub id or local directory) with clear errors, and pad-token handling.

The same code serves the offline tiny model and a real checkpoint (e.g. `EleutherAI/pythia-160m`).
Never `trust_remote_code` unless the user asks; weights load through `from_pretrained` (safetensors).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from classic_rl.safe_io import UserError

PAD_TOKEN = "<|pad|>"
SCORE_BIAS_KEY = "score_bias"  # config attribute: constant added to a reward model's score (see load_reward_model)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def broken_weight_file(folder: Path) -> tuple[Path, str] | None:
    """The first weight file in `folder` that cannot be opened (truncated, corrupt), with the reason."""
    for path in sorted(folder.glob("*.safetensors")):
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # reading each tensor's bytes finds a file cut short
                    f.get_slice(key)
        except Exception as err:  # safetensors raises its own error types
            return path, " ".join(str(err).split())[:160]
    return None


class _NoTensorParallelNotes(logging.Filter):
    """transformers checks a model's tensor-parallel plan on every load, with or without tensor
    parallelism, and warns "The following layers were not sharded" for layers the plan leaves alone. The
    rlhf commands never shard by tensor parallelism (they pass no tp_plan), so the note is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("The following layers were not sharded",
                                       "The following TP rules were not applied"))


_TP_LOGGER = logging.getLogger("transformers.distributed.tensor_parallel")
_TP_FILTER = _NoTensorParallelNotes()


def _load(loader: Any, name: str, what: str, **kwargs: Any) -> Any:
    """`loader.from_pretrained(name)`, turning a missing local path, an unreachable hub or a truncated weight
    file into a clear error."""
    _TP_LOGGER.addFilter(_TP_FILTER)  # idempotent: a logger holds a filter once
    try:
        return loader.from_pretrained(name, **kwargs)
    except Exception as err:
        local = Path(name).expanduser()
        if local.is_dir():
            broken = broken_weight_file(local)
            if broken is not None:
                raise UserError(
                    f"{what} '{name}': weight file {broken[0]} cannot be read ({broken[1]}); it is probably "
                    "truncated (an interrupted copy or save): copy or re-create it"
                ) from err
        if not isinstance(err, (OSError, ValueError)) or local.exists():
            raise
        reason = (
            "the Hugging Face Hub cannot be reached offline (HF_HUB_OFFLINE=1 or no network)"
            if hub_offline()
            else "it could not be fetched from the Hugging Face Hub"
        )
        raise FileNotFoundError(
            f"{what} '{name}': no such local directory, and {reason}. Pass a directory saved with "
            f"save_pretrained (build an offline one with `rlhf tiny-model --output_dir DIR`). Cause: {err}"
        ) from err


def torch_dtype(name: str | None) -> torch.dtype | str | None:
    """'bfloat16' -> torch.bfloat16, 'auto' stays 'auto', None stays None (fp32 weights)."""
    if name in (None, "auto"):
        return name
    valid = ("float32", "float16", "bfloat16", "auto")
    if name not in valid:
        raise ValueError(f"dtype '{name}' is not valid; use one of {valid}")
    return getattr(torch, name)


# Files of which a saved tokenizer has at least one (transformers' fast and slow tokenizers, tiktoken).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.tiktoken", "tiktoken.model")


def _missing_tokenizer(folder: Path) -> str | None:
    """Why a local model folder cannot give a tokenizer (it holds none of its files), or None."""
    if not folder.is_dir() or any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    found = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
    return (f"tokenizer '{folder}': the folder has no tokenizer (none of tokenizer.json, tokenizer.model, "
            f"vocab.json, vocab.txt; it holds {found}); save the tokenizer there too "
            "(tokenizer.save_pretrained(FOLDER)), or copy its files from the model it was trained from")


def load_tokenizer(
    name_or_path: str,
    revision: str | None = None,
    trust_remote_code: bool = False,
    padding_side: str | None = None,
) -> PreTrainedTokenizerBase:
    """Load a tokenizer and make sure it has a pad token distinct from EOS (see `ensure_pad_token`).

    A local folder without tokenizer files is one line naming the folder and what is missing (transformers
    would suggest installing sentencepiece or tiktoken to convert a tokenizer that is not there)."""
    try:
        tokenizer = _load(
            AutoTokenizer, name_or_path, "tokenizer", revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        missing = _missing_tokenizer(Path(name_or_path).expanduser())
        if missing is not None:
            raise UserError(missing) from err
        raise
    if tokenizer.eos_token is None:
        raise ValueError(f"tokenizer '{name_or_path}' has no eos_token; set one (e.g. tokenizer.eos_token = '</s>')")
    ensure_pad_token(tokenizer)
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    return tokenizer


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Give the tokenizer a dedicated pad token if it lacks one, or if its pad token is the EOS token.

    Padding with EOS and masking the padding teaches a policy never to stop, so a new `<|pad|>` special
    token is added instead (the model's embeddings must then grow: `align_model_with_tokenizer`).
    Returns True when a token was added.
    """
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return True


def align_model_with_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Grow the embeddings to the tokenizer's size if needed and copy the pad/eos ids into the model configs."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    for config in (model.config.get_text_config(), getattr(model, "generation_config", None)):
        if config is not None:
            config.pad_token_id = tokenizer.pad_token_id
            config.eos_token_id = tokenizer.eos_token_id


def _model_kwargs(revision: str | None, dtype: str | None, trust_remote_code: bool, **extra: Any) -> dict:
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code, **extra}
    if dtype is not None:
        kwargs["dtype"] = torch_dtype(dtype)
    return kwargs


def load_causal_lm(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    revision: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a causal LM; with `tokenizer`, align its vocabulary and pad/eos ids to the tokenizer."""
    model = _load(
        AutoModelForCausalLM, name_or_path, "model", **_model_kwargs(revision, dtype, trust_remote_code, **kwargs)
    )
    if tokenizer is not None:
        align_model_with_tokenizer(model, tokenizer)
    return model


def init_score_head(model: PreTrainedModel) -> None:
    """Reward head init of the RLHF reproductions: weight ~ N(0, 1/sqrt(d_model + 1)), bias 0."""
    head = model.score
    d_model = head.weight.shape[1]
    with torch.no_grad():
        head.weight.normal_(0.0, 1.0 / math.sqrt(d_model + 1))
        if head.bias is not None:
            head.bias.zero_()


def is_sequence_classifier(name_or_path: str) -> bool:
    """True if a local checkpoint's config names a *ForSequenceClassification architecture."""
    config = Path(name_or_path) / "config.json"
    return config.exists() and "ForSequenceClassification" in config.read_text()


def load_reward_model(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    revision: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    announce_new_head: bool = True,
    **kwargs: Any,
) -> PreTrainedModel:
    """A one-scalar sequence classifier (reward model or critic) from a reward model or from a causal LM.

    From a causal LM the score head is new and gets the reward-head init, said in one line unless
    ``announce_new_head`` is False (PPO's critic from the SFT model: its head is zeroed, no reward model). A checkpoint written by
    `rlhf reward` stores the bias shift that centres the SFT policy's scores in `config.score_bias`
    (transformers' score heads have no bias); it is installed here as the bias of the score layer, so
    `model(...).logits` already includes it.
    """
    local = Path(name_or_path).expanduser()
    new_head = not (local.exists() and is_sequence_classifier(str(local)))
    with _quiet_load_report(new_head):
        model, info = _load(
            AutoModelForSequenceClassification,
            name_or_path,
            "reward model",
            num_labels=1,
            output_loading_info=True,
            **_model_kwargs(revision, dtype, trust_remote_code, **kwargs),
        )
    if new_head:
        init_score_head(model)
        others = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("score."))
        note = f"; other weights not in the checkpoint, initialised at random: {others}" if others else ""
        if announce_new_head or others:
            print(f"new reward head initialised (score) on {name_or_path}{note}", file=sys.stderr, flush=True)
    if tokenizer is not None:
        align_model_with_tokenizer(model, tokenizer)
    offset = float(getattr(model.config, SCORE_BIAS_KEY, 0.0) or 0.0)
    if offset:
        set_score_bias(model, offset)
    return model


@contextlib.contextmanager
def _quiet_load_report(quiet: bool) -> Iterator[None]:
    """Silence transformers' load report (a red table listing the new score head as MISSING) when a reward
    model is built from a causal LM on purpose; the caller prints one plain line instead."""
    logger = logging.getLogger("transformers.modeling_utils")
    level = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class OffsetScore(torch.nn.Linear):
    """A bias-free score head plus a constant offset: `w.h + offset`.

    transformers' sequence-classification heads have no bias, so the calibration shift lives in
    `config.score_bias` and in this non-persistent buffer: the saved weights stay exactly those of the
    architecture (a plain `from_pretrained` loads them without warnings, only without the offset).
    """

    def __init__(self, head: torch.nn.Linear, offset: float = 0.0):
        super().__init__(head.in_features, head.out_features, bias=False, device="meta")
        self.weight = head.weight
        self.register_buffer("offset", torch.tensor(offset, dtype=head.weight.dtype, device=head.weight.device), persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden) + self.offset


def get_score_bias(model: PreTrainedModel) -> float:
    """The constant added to the score: the offset, the head's own bias, or 0."""
    head = model.score
    if isinstance(head, OffsetScore):
        return float(head.offset)
    return float(head.bias.item()) if head.bias is not None else 0.0


def set_score_bias(model: PreTrainedModel, bias: float) -> None:
    """Make the score head compute `w.h + bias` (its own bias parameter if it has one, else an offset)."""
    head = model.score
    with torch.no_grad():
        if head.bias is not None and not isinstance(head, OffsetScore):
            head.bias.fill_(bias)
            return
        if not isinstance(head, OffsetScore):
            head = model.score = OffsetScore(head)
        head.offset.fill_(bias)
    setattr(model.config, SCORE_BIAS_KEY, float(bias))
