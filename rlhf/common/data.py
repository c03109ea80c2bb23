"""Datasets for the rlhf commands: loading (hub id, local directory, local .jsonl/.json/.parquet file),
format detection and validation, and the text conventions shared by every step.

Accepted formats (one row per example):
  sft        {"prompt", "completion"}  or  {"messages": [{"role", "content"}, ...]}
  reward     {"prompt", "chosen", "rejected"}  or  {"prompt", "responses": [best, ..., worst]}
  ppo        {"prompt"}
A prompt may also be a list of chat messages; it is then rendered with the tokenizer's chat template.

Errors in the data are :class:`DataError` (a `UserError`: one line, exit status 2) naming the file and line
of a local .jsonl file (its original line, also after the held-out split shuffles the rows), or the row.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from classic_rl.safe_io import UserError
from rlhf.common.formats import FORMAT_COLUMNS, TASK_FORMATS, accepted_formats_text, task_of  # noqa: F401 (re-exported)
from rlhf.common.utils import is_main_process, read_jsonl_lines

# The formats each command accepts (first match wins) are in rlhf.common.formats, shared with --help.
_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DataError(UserError, ValueError):
    """A problem in a dataset's content; the message names the file and line (or row)."""


# Where the rows of datasets read from local .jsonl files came from: fingerprint -> (file, line of each row).
_SOURCE_LINES: dict[str, tuple[Path, list[int]]] = {}


def row_location(dataset: Dataset, row: int, name: str = "dataset") -> str:
    """'FILE:LINE' for a row of a dataset read from a local .jsonl file, else "NAME, row N"."""
    source = _SOURCE_LINES.get(getattr(dataset, "_fingerprint", ""))
    if source is not None and row < len(source[1]):
        return f"{source[0]}:{source[1][row]}"
    return f"{name}, row {row}"


def keep_row_locations(child: Dataset, parent: Dataset, rows: list[int] | None = None) -> Dataset:
    """Let :func:`row_location` name ``child``'s rows by ``parent``'s file lines: ``child`` holds ``parent``'s
    rows ``rows`` in that order (all of them if None: a renamed column, say). Returns ``child``."""
    source = _SOURCE_LINES.get(getattr(parent, "_fingerprint", ""))
    if source is not None:
        lines = source[1] if rows is None else [source[1][i] for i in rows]
        _SOURCE_LINES[child._fingerprint] = (source[0], lines)
    return child


def _split_rows(part: Dataset) -> list[int] | None:
    """The rows of the parent that a ``train_test_split`` part holds (datasets keeps them as an indices
    mapping), or None if this datasets version keeps them otherwise."""
    indices = getattr(part, "_indices", None)
    try:
        return indices.column("indices").to_pylist() if indices is not None else None
    except (AttributeError, KeyError):
        return None


def _kind(value: Any) -> str:
    return "null" if value is None else "list" if isinstance(value, list) else "object" if isinstance(value, dict) \
        else "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__


def read_jsonl_dataset(path: Path) -> Dataset:
    """A local .jsonl file as a Dataset, every error naming FILE:LINE (bad JSON, empty file, mixed types)."""
    lines = read_jsonl_lines(path)
    if not lines:
        raise DataError(f"{path}: the file is empty; it needs one JSON object per line")
    first_kind: dict[str, tuple[str, int]] = {}
    for number, row in lines:
        for key, value in row.items():
            kind = _kind(value)
            seen = first_kind.setdefault(key, (kind, number))
            if kind != seen[0] and "null" not in (kind, seen[0]):
                raise DataError(
                    f"{path}:{number}: '{key}' is a {kind}, but line {seen[1]} has a {seen[0]}; "
                    "every line needs the same type for a key"
                )
    try:
        dataset = Dataset.from_list([row for _, row in lines])
    except Exception as err:  # pyarrow's type errors (e.g. lists of mixed types)
        raise DataError(f"{path}: rows cannot form one table ({' '.join(str(err).split())[:200]})") from None
    _SOURCE_LINES[dataset._fingerprint] = (path, [number for number, _ in lines])
    return dataset


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
    return Path(__file__).resolve().parents[1] / "data"


def resolve_path(name: str) -> Path | None:
    """`name` as an existing local path: as given (relative to the working directory), or relative to the
    directory holding the installed `rlhf` package, so `rlhf/data/sft.jsonl` works from anywhere."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    beside_package = Path(__file__).resolve().parents[2] / name
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
                raise DataError(
                    f"dataset '{name}': unsupported file type '{path.suffix}'; use one of "
                    f"{sorted(_FILE_BUILDERS)} or a directory"
                )
            if path.suffix == ".jsonl":
                return DatasetDict({"train": read_jsonl_dataset(path)})
            if path.stat().st_size == 0:
                raise DataError(f"{path}: the file is empty")
            try:
                return load_dataset(builder, data_files={"train": str(path)})
            except Exception as err:  # datasets/pyarrow raise many types for a malformed file
                raise DataError(
                    f"{path}: cannot be read as {path.suffix[1:]} ({' '.join(str(err).split())[:200]})"
                ) from None
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


Check = Callable[[Dataset, str], Dataset]


def load_train_eval(
    args: DataArguments, seed: int = 0, task: str | None = None, check: Check | None = None
) -> tuple[Dataset, Dataset | None]:
    """The training split and the held-out split of `args` (held out from training data if none is given).

    With `task`, both are validated (:func:`validate_dataset`) before the held-out split shuffles the rows,
    so an error names the original file line. `check(dataset, name)` (e.g. a length check needing the
    tokenizer) runs at the same point and returns the dataset to use (it may drop rows).
    """
    if not args.dataset_name:
        raise ValueError("dataset_name is required: a hub id, a local directory or a .jsonl/.json/.parquet file")

    def checked(dataset: Dataset, name: str) -> Dataset:
        if task is not None:
            validate_dataset(dataset, task, name)
        return check(dataset, name) if check is not None else dataset

    data = load_dataset_dict(args.dataset_name, args.dataset_config)
    if args.dataset_train_split not in data:
        raise ValueError(
            f"dataset '{args.dataset_name}' has no split '{args.dataset_train_split}' "
            f"(dataset_train_split); available: {sorted(data)}"
        )
    train = checked(data[args.dataset_train_split], f"dataset '{args.dataset_name}'")
    if args.eval_dataset_name:
        evals = load_dataset_dict(args.eval_dataset_name, args.dataset_config)
        split = args.dataset_test_split if args.dataset_test_split in evals else args.dataset_train_split
        held_out = evals[split] if split in evals else next(iter(evals.values()))
        return train, checked(held_out, f"eval dataset '{args.eval_dataset_name}'")
    if args.dataset_test_split in data and args.dataset_test_split != args.dataset_train_split:
        return train, checked(data[args.dataset_test_split], f"dataset '{args.dataset_name}' split {args.dataset_test_split}")
    if args.eval_holdout_fraction > 0 and len(train) >= 2:
        parts = train.train_test_split(test_size=args.eval_holdout_fraction, seed=seed)
        for part in parts.values():  # errors found later (tokenizing) still name the file line
            rows = _split_rows(part)
            if rows is not None:
                keep_row_locations(part, train, rows)
        return parts["train"], parts["test"]
    return train, None


# ----------------------------------------------------------------------------------------------- formats
def detect_format(columns: list[str] | tuple[str, ...], task: str) -> str:
    """Name of the first format accepted by `task` whose columns are all present; ValueError otherwise."""
    if task_of(task) not in TASK_FORMATS:
        raise ValueError(f"unknown task '{task}'; valid: {sorted(TASK_FORMATS)}")
    for fmt in TASK_FORMATS[task_of(task)]:
        if all(c in columns for c in FORMAT_COLUMNS[fmt]):
            return fmt
    raise DataError(
        f"the {task} dataset has columns {sorted(columns)} but needs {accepted_formats_text(task)}: "
        f"rename its columns to one of these formats"
    )


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _check_text(value: Any, column: str, where: str) -> None:
    if not (isinstance(value, str) or _is_messages(value)):
        raise DataError(
            f"{where}: column '{column}': expected a string or a list of {{role, content}} messages, "
            f"got {type(value).__name__}"
        )


def validate_dataset(dataset: Dataset, task: str, name: str = "dataset") -> str:
    """Check that `dataset` is non-empty and in a format `task` accepts, every row; return the format's name.

    Errors name the row as FILE:LINE for a local .jsonl file (see :func:`row_location`).
    """
    if len(dataset) == 0:
        raise DataError(f"{name} is empty: the {task} step needs at least one example of {accepted_formats_text(task)}")
    fmt = detect_format(dataset.column_names, task)
    for column in FORMAT_COLUMNS[fmt]:
        for i, value in enumerate(dataset[column]):
            where = row_location(dataset, i, name)
            if column == "messages":
                if not _is_messages(value) or not value:
                    raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} dicts")
            elif column == "responses":
                if not isinstance(value, list) or len(value) < 2:
                    raise DataError(f"{where}: 'responses' must list at least 2 responses ordered best to worst")
                for response in value:
                    _check_text(response, column, where)
            else:
                _check_text(value, column, where)
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


# ----------------------------------------------------------------------------------------------- lengths
def load_checked_train_eval(data_args: Any, training_args: Any, task: str, model: Any, tokenizer: Any
                            ) -> tuple[Dataset, Dataset | None, str]:
    """The training and held-out splits of a Trainer-based step (sft, reward), their lengths checked
    against the model's context (``training_args.max_length`` is capped to it), and the data format."""
    limit = context_limit(model, training_args.max_length)
    training_args.max_length = limit  # never train or score past the model's context window
    train, held_out = load_train_eval(
        data_args, seed=training_args.seed, task=task,
        check=lambda data, name: check_lengths(data, name, task, tokenizer, limit),
    )
    return train, held_out, detect_format(train.column_names, task)


def context_limit(model: Any, max_length: int | None) -> int | None:
    """The longest sequence a step may train on: `max_length`, capped by the model's context window."""
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    limits = [n for n in (max_length, context) if isinstance(n, int) and n > 0]
    return min(limits) if limits else None


def check_lengths(dataset: Dataset, name: str, task: str, tokenizer: Any, limit: int | None) -> Dataset:
    """Refuse prompts that fill the whole `limit` (nothing left to learn from: :class:`DataError` naming the
    line); warn, with a count, about examples that will be truncated (sft) or dropped (reward)."""
    import sys

    if limit is None or len(dataset) == 0:
        return dataset
    fmt = detect_format(dataset.column_names, task)
    if fmt == "messages":
        texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in dataset["messages"]]
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        over = sum(n > limit for n in lengths)
        if over == len(dataset):
            raise DataError(f"{name}: every conversation is longer than {limit} tokens; raise --max_length "
                            "(up to the model's context) or shorten them")
        if over and is_main_process():
            print(f"warning: {over} of {len(dataset)} conversations in {name} are longer than {limit} tokens "
                  "and are truncated", file=sys.stderr, flush=True)
        return dataset
    prompts = [render_prompt(p, tokenizer) for p in dataset["prompt"]]
    prompt_lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    for i, n in enumerate(prompt_lengths):
        if n >= limit:
            raise DataError(
                f"{row_location(dataset, i, name)}: the prompt is {n} tokens, which fills the {limit}-token limit "
                "(--max_length, capped by the model's context) and leaves nothing to train on; shorten it or "
                "raise --max_length"
            )
    if task == "sft":
        completions = [response_text(c) for c in dataset["completion"]]
        completion_lengths = [len(ids) for ids in tokenizer(completions, add_special_tokens=False)["input_ids"]]
        over = sum(p + c + 1 > limit for p, c in zip(prompt_lengths, completion_lengths))
        action = "truncated (the end of their completions is not trained on)"
    else:
        longest = [
            max(len(ids) for ids in tokenizer([response_text(r) for r in ranked_responses(ex, fmt)],
                                              add_special_tokens=False)["input_ids"])
            for ex in dataset
        ]
        over = sum(p + r + 1 > limit for p, r in zip(prompt_lengths, longest))
        action = "dropped (a reward model must see a response's end)"
    if over and is_main_process():
        print(f"warning: {over} of {len(dataset)} examples in {name} are longer than {limit} tokens and are {action}",
              file=sys.stderr, flush=True)
    return dataset
