"""Datasets for the rlhf commands: loading (hub id, local directory, local .jsonl/.json/.parquet file),
format detection and validation, and the text conventions shared by every step.

Accepted formats (one row per example):
  sft        {"prompt", "completion"}  or  {"messages": [{"role", "content"}, ...]}
  reward     {"prompt", "chosen", "rejected"}  or  {"prompt", "responses": [best, ..., worst]}
  ppo        {"prompt"}
A prompt may also be a list of chat messages; it is then rendered with the tokenizer's chat template.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

# Column sets of each format, and the formats each command accepts (first match wins).
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "ranking": ("prompt", "responses"),
    "prompt": ("prompt",),
}
TASK_FORMATS: dict[str, tuple[str, ...]] = {
    "sft": ("prompt_completion", "messages"),
    "reward": ("preference", "ranking"),
    "ppo": ("prompt",),
}
_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_VALIDATE_ROWS = 100  # rows whose types are checked (the whole dataset may be large)


@dataclass
class DataArguments:
    """Which dataset to train on and which held-out data to evaluate on (TRL's `ScriptArguments` names)."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub id, local directory, or local .jsonl/.json/.parquet file of the training data."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name (hub datasets)."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(default="test", metadata={"help": "Split to evaluate on, if the dataset has it."})
    eval_dataset_name: str | None = field(
        default=None,
        metadata={"help": "Separate held-out dataset (same forms as dataset_name); overrides dataset_test_split."},
    )
    eval_holdout_fraction: float = field(
        default=0.1,
        metadata={"help": "Without held-out data, this fraction of the training data is held out (0 disables)."},
    )


def shipped_data_dir() -> Path:
    """The directory of the datasets shipped with the package (rlhf/data/)."""
    return Path(__file__).resolve().parent / "data"


def resolve_path(name: str) -> Path | None:
    """`name` as an existing local path: as given (relative to the working directory), or relative to the
    directory holding the installed `rlhf` package, so `rlhf/data/sft.jsonl` works from anywhere."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    beside_package = Path(__file__).resolve().parent.parent / name
    if not path.is_absolute() and beside_package.exists():
        return beside_package
    return None


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).suffix in _FILE_BUILDERS or name.count("/") > 1


def load_dataset_dict(name: str, config_name: str | None = None) -> DatasetDict:
    """Load every split of a dataset given as a hub id, a local directory or a local data file."""
    path = resolve_path(name)
    if path is not None:
        if path.is_file():
            builder = _FILE_BUILDERS.get(path.suffix)
            if builder is None:
                raise ValueError(
                    f"dataset '{name}': unsupported file type '{path.suffix}'; use one of "
                    f"{sorted(_FILE_BUILDERS)} or a directory"
                )
            return load_dataset(builder, data_files={"train": str(path)})
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            loaded = load_from_disk(str(path))
            return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
        return load_dataset(str(path), name=config_name)
    if _looks_local(name):
        raise FileNotFoundError(f"dataset '{name}': no such file or directory")
    try:
        return load_dataset(name, name=config_name)
    except Exception as err:  # the hub raises many types (connection, offline, not found)
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        reason = "the Hugging Face Hub cannot be reached offline (HF_HUB_OFFLINE=1 or no network)" if offline \
            else "it could not be loaded from the Hugging Face Hub"
        raise FileNotFoundError(
            f"dataset '{name}': not a local file or directory, and {reason}. Pass a local .jsonl/.json/.parquet "
            f"file or directory (the shipped task lives in {shipped_data_dir()}). Cause: {err}"
        ) from err


def load_train_eval(args: DataArguments, seed: int = 0) -> tuple[Dataset, Dataset | None]:
    """The training split and the held-out split of `args` (held out from training data if none is given)."""
    if not args.dataset_name:
        raise ValueError("dataset_name is required: a hub id, a local directory or a .jsonl/.json/.parquet file")
    data = load_dataset_dict(args.dataset_name, args.dataset_config)
    if args.dataset_train_split not in data:
        raise ValueError(
            f"dataset '{args.dataset_name}' has no split '{args.dataset_train_split}' "
            f"(dataset_train_split); available: {sorted(data)}"
        )
    train = data[args.dataset_train_split]
    if args.eval_dataset_name:
        evals = load_dataset_dict(args.eval_dataset_name, args.dataset_config)
        split = args.dataset_test_split if args.dataset_test_split in evals else args.dataset_train_split
        return train, evals[split] if split in evals else next(iter(evals.values()))
    if args.dataset_test_split in data and args.dataset_test_split != args.dataset_train_split:
        return train, data[args.dataset_test_split]
    if args.eval_holdout_fraction > 0 and len(train) >= 2:
        parts = train.train_test_split(test_size=args.eval_holdout_fraction, seed=seed)
        return parts["train"], parts["test"]
    return train, None


# ----------------------------------------------------------------------------------------------- formats
def accepted_formats_text(task: str) -> str:
    """Human-readable list of the formats a command accepts, e.g. '{prompt, completion} or {messages}'."""
    return " or ".join("{" + ", ".join(FORMAT_COLUMNS[f]) + "}" for f in TASK_FORMATS[task])


def detect_format(columns: list[str] | tuple[str, ...], task: str) -> str:
    """Name of the first format accepted by `task` whose columns are all present; ValueError otherwise."""
    if task not in TASK_FORMATS:
        raise ValueError(f"unknown task '{task}'; valid: {sorted(TASK_FORMATS)}")
    for fmt in TASK_FORMATS[task]:
        if all(c in columns for c in FORMAT_COLUMNS[fmt]):
            return fmt
    raise ValueError(
        f"the {task} dataset has columns {sorted(columns)} but needs {accepted_formats_text(task)}: "
        f"rename its columns to one of these formats"
    )


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _check_text(value: Any, column: str, row: int) -> None:
    if not (isinstance(value, str) or _is_messages(value)):
        raise ValueError(
            f"column '{column}', row {row}: expected a string or a list of {{role, content}} messages, "
            f"got {type(value).__name__}"
        )


def validate_dataset(dataset: Dataset, task: str, name: str = "dataset") -> str:
    """Check that `dataset` is non-empty and in a format `task` accepts; return the format's name."""
    if len(dataset) == 0:
        raise ValueError(f"{name} is empty: the {task} step needs at least one example of {accepted_formats_text(task)}")
    fmt = detect_format(dataset.column_names, task)
    for i, row in enumerate(dataset.select(range(min(len(dataset), _VALIDATE_ROWS)))):
        for column in FORMAT_COLUMNS[fmt]:
            value = row[column]
            if column == "messages":
                if not _is_messages(value) or not value:
                    raise ValueError(f"{name}, row {i}: 'messages' must be a non-empty list of {{role, content}} dicts")
            elif column == "responses":
                if not isinstance(value, list) or len(value) < 2:
                    raise ValueError(
                        f"{name}, row {i}: 'responses' must list at least 2 responses ordered best to worst"
                    )
                for response in value:
                    _check_text(response, column, i)
            else:
                _check_text(value, column, i)
    return fmt


# ----------------------------------------------------------------------------------------------- text
def render_prompt(prompt: str | list[dict[str, str]], tokenizer: Any) -> str:
    """Prompt text for the model: a plain string as is, a list of messages through the chat template."""
    if isinstance(prompt, str):
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("a conversational prompt needs a tokenizer with a chat template (chat_template is unset)")
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def response_text(response: str | list[dict[str, str]]) -> str:
    """Text of a response: a string as is, or the content of the assistant messages of a message list."""
    if isinstance(response, str):
        return response
    return "".join(m["content"] for m in response if m.get("role", "assistant") == "assistant")


def reward_text(prompt: str, response: str, eos_token: str | None) -> str:
    """What a reward model scores: prompt + response + EOS (the EOS is added once, as in training)."""
    text = prompt + response
    if eos_token and not text.endswith(eos_token):
        text += eos_token
    return text


def ranked_responses(example: dict[str, Any], fmt: str) -> list[Any]:
    """Responses of a reward example, best first: [chosen, rejected] for pairs, the ranking otherwise."""
    if fmt == "preference":
        return [example["chosen"], example["rejected"]]
    if fmt == "ranking":
        return list(example["responses"])
    raise ValueError(f"not a reward format: '{fmt}'; valid: preference, ranking")
