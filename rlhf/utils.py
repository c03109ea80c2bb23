"""Shared plumbing of the rlhf commands: hardware-chosen precision, seeding, process info, argument parsing
with `--config FILE.yaml`, and the run directory (metrics.jsonl, summary.json, config.yaml) written
atomically by rank 0 only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from classic_rl.safe_io import atomic_write_json, dumps_strict

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"


# ----------------------------------------------------------------------------------------------- hardware
def hardware_defaults() -> dict[str, bool]:
    """Training-argument defaults that fit this machine, so one config runs on CPU and GPU.

    CUDA: bf16 where the GPU supports it, else fp16; gradient checkpointing on (memory-lean).
    CPU: `use_cpu=True`, full fp32, gradient checkpointing off (it only costs time there). TRL's configs
    default to bf16 and refuse a GPU-less machine, hence these defaults. Flags given by the user win.
    """
    forced_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if torch.cuda.is_available() and not forced_cpu:
        bf16 = torch.cuda.is_bf16_supported()
        return {"use_cpu": False, "bf16": bf16, "fp16": not bf16, "gradient_checkpointing": True}
    return {"use_cpu": True, "bf16": False, "fp16": False, "gradient_checkpointing": False}


def precision_name(args: Any) -> str:
    """'bf16', 'fp16' or 'fp32' for a TrainingArguments-like object."""
    return "bf16" if getattr(args, "bf16", False) else "fp16" if getattr(args, "fp16", False) else "fp32"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for a deterministic run."""
    from transformers import set_seed

    random.seed(seed)
    set_seed(seed)


def world_size() -> int:
    """Number of processes training together (1 without a distributed launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_rank() -> int:
    """Global rank of this process (0 without a distributed launcher)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return process_rank() == 0


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------------------------- arguments
def parse_args(
    dataclass_types: Sequence[type],
    argv: list[str] | None,
    defaults: dict[str, Any] | None = None,
    description: str | None = None,
) -> tuple[Any, ...]:
    """Parse `argv` into instances of `dataclass_types` with TRL's parser (HF flag names, `--config FILE.yaml`).

    Precedence, lowest first: dataclass defaults, `defaults` (e.g. `hardware_defaults()`), the YAML file
    given with `--config`, the command line.
    """
    from trl import TrlParser

    parser = TrlParser(list(dataclass_types), description=description)
    if defaults:
        known = {action.dest for action in parser._actions}
        parser.set_defaults(**{k: v for k, v in defaults.items() if k in known})
    with warnings.catch_warnings():
        # TRL's configs default the deprecated alias `gradient_checkpointing`; not the user's doing.
        warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
        return parser.parse_args_and_config(args=argv)


def to_plain(obj: Any) -> Any:
    """A JSON/YAML-safe copy of a (nested) config value."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if hasattr(obj, "to_dict"):
            return to_plain(obj.to_dict())
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON: NaN/Infinity are not JSON numbers
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


# ----------------------------------------------------------------------------------------------- run directory
def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Strict JSON (non-finite numbers as null), written atomically."""
    atomic_write_json(path, to_plain(data), indent=2, sort_keys=True)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_config(output_dir: str | Path, sections: dict[str, Any]) -> None:
    """Write every resolved setting, section by section, to OUT/config.yaml."""
    import yaml

    with open(Path(output_dir) / CONFIG_FILE, "w") as f:
        yaml.safe_dump(to_plain(sections), f, sort_keys=False)


class JsonlMetricsCallback(TrainerCallback):
    """Append one JSON line per `Trainer` log event (train and eval) to OUT/metrics.jsonl, on rank 0 only."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / METRICS_FILE

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch, **logs}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(dumps_strict(to_plain(row)) + "\n")


def _partial_dir(output_dir: Path) -> Path:
    return output_dir.parent / f".{output_dir.name}.partial"


@contextlib.contextmanager
def atomic_output_dir(output_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to `output_dir`; on success rank 0 renames it to `output_dir`.

    On an exception the temporary directory is deleted and any earlier `output_dir` is left untouched,
    so no half-written run is ever found at `output_dir`. The temporary name is the same on every rank
    (`.NAME.partial`), so all processes of a distributed run agree on it without communicating; a stale
    one from a killed run is removed at the start.
    """
    final = Path(output_dir).expanduser().resolve()
    tmp = _partial_dir(final)
    if is_main_process():
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        if is_main_process():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()  # every rank is done with the temporary directory before it moves
    if is_main_process():
        old = final.parent / f".{final.name}.old"
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
