"""Shared plumbing of the rlhf commands: hardware-chosen precision, seeding, process info, argument parsing
(`--config FILE.yaml` with per-command sections, short `--help` and `--help-all`, range checks), strict
YAML/JSONL readers whose errors name the file and line, and the run directory (metrics.jsonl, summary.json,
config.yaml) written atomically by rank 0 only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from classic_rl.safe_io import (
    DEBUG_ENV,
    UserError,
    atomic_write_json,
    atomic_write_text,
    read_yaml,
)
from rlhf.common.errors import pop_debug_flag
from rlhf.methods.registry import RL_METHODS

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


# ----------------------------------------------------------------------------------------------- YAML / JSONL
def load_yaml(path: str | Path, flag: str = "--config") -> Any:
    """Parse a YAML file (``classic_rl.safe_io.read_yaml``: a bad one is a one-line error naming file and line)."""
    return read_yaml(path, flag)


def yaml_key_lines(path: str | Path) -> dict[tuple[str, ...], int]:
    """1-based line of every mapping key of a YAML file, by its path of keys (for error messages)."""
    import yaml

    lines: dict[tuple[str, ...], int] = {}

    def walk(node: Any, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = (*prefix, str(key.value))
                lines[name] = key.start_mark.line + 1
                walk(value, name)

    try:
        walk(yaml.compose(Path(path).read_text()), ())
    except (OSError, yaml.YAMLError):
        pass
    return lines


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (blank lines skipped); see :func:`read_jsonl_lines`."""
    return [row for _, row in read_jsonl_lines(path)]


def read_jsonl_lines(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for every non-blank line of a JSON-lines file.

    A line that is not a JSON object is a :class:`UserError` naming ``FILE:LINE`` and the JSON problem.
    """
    path = Path(path)
    rows: list[tuple[int, dict[str, Any]]] = []
    try:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UserError(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})") from None
                if not isinstance(value, dict):
                    raise UserError(
                        f"{path}:{number}: expected a JSON object {{...}} per line, got {type(value).__name__}"
                    )
                rows.append((number, value))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}); save the file as UTF-8") from None
    return rows


# ----------------------------------------------------------------------------------------------- arguments
@dataclasses.dataclass
class CommandOptions:
    """Flags every rlhf command accepts, beyond its own dataclasses (see :func:`parse_args`). `--debug` is
    one too, taken out of the arguments before parsing (:func:`pop_debug_flag`)."""

    overwrite_output_dir: bool = dataclasses.field(
        default=False,
        metadata={"help": "Write into an existing non-empty --output_dir: only the files this command writes are "
                  "replaced, nothing else there is deleted. Without it such a folder is refused."},
    )


_state: dict[str, Any] = {"command": None, "options": CommandOptions()}

# Shown by the short `--help` after the command's own flags (only those the command has), in this order.
MAIN_FLAGS = (
    "model_name_or_path", "dataset_name", "eval_dataset_name", "output_dir", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type",
    "warmup_steps", "max_length", "logging_steps", "eval_strategy", "eval_steps", "save_steps",
    "save_total_limit", "resume_from_checkpoint", "report_to", "seed", "use_peft", "lora_r", "bf16", "use_cpu",
)
DOC_LINKS = (
    "TRL trainer configs: https://huggingface.co/docs/trl (SFTConfig, RewardConfig, ModelConfig)",
    "transformers TrainingArguments: https://huggingface.co/docs/transformers/main_classes/trainer",
)
# This project's meaning of some TRL/transformers flags, shown by --help and --help-all.
FLAG_HELP = {
    "output_dir": "Folder for the model, summary.json, metrics.jsonl, config.yaml and checkpoint-<step>/; must be new "
    "or empty unless --overwrite_output_dir or --resume_from_checkpoint.",
    "resume_from_checkpoint": "Continue a killed run: a checkpoint folder, or true for the latest "
    "OUTPUT_DIR/checkpoint-<step>.",
    "save_steps": "Save OUTPUT_DIR/checkpoint-<step> every N optimizer steps (and at the end); each is complete "
    "or absent, never half-written.",
    "save_total_limit": "Keep at most K checkpoints of this run (older ones of this run are deleted; those of "
    "earlier runs never are). Default: keep all.",
    "report_to": "Where metrics go besides OUTPUT_DIR/metrics.jsonl: none, tensorboard (logs in OUTPUT_DIR/runs), "
    "wandb, trackio, or all.",
    "use_cpu": "Train on the CPU even if a GPU is present (default: only when there is no GPU).",
    "bf16": "bf16 mixed precision (default: on where the GPU supports it, off on the CPU).",
    "fp16": "fp16 mixed precision (default: on a GPU without bf16, else off).",
    "gradient_checkpointing": "Recompute activations in the backward pass: less memory, more time (default: on "
    "with a GPU, off on the CPU).",
}
# Their defaults follow the machine (hardware_defaults); help, the same on every machine, says the rule instead.
HARDWARE_FLAGS = ("use_cpu", "bf16", "fp16", "gradient_checkpointing")
HELP_WIDTH = 100  # help is formatted at this width whatever the terminal, so it reads (and caches) the same
REPORT_TO_CHOICES = ("none", "tensorboard", "wandb", "trackio", "all")

# Valid range of numeric flags, checked on every parsed dataclass that has them: (low, high, text).
FLAG_RANGES: dict[str, tuple[float | None, float | None, str]] = {
    "num_train_epochs": (0, None, ">= 0"),
    "max_steps": (-1, None, ">= 1, or -1 to use num_train_epochs"),
    "learning_rate": (0, None, ">= 0"),
    "per_device_train_batch_size": (1, None, ">= 1"),
    "per_device_eval_batch_size": (1, None, ">= 1"),
    "gradient_accumulation_steps": (1, None, ">= 1"),
    "warmup_steps": (0, None, ">= 0"),
    "warmup_ratio": (0, 1, "between 0 and 1"),
    "weight_decay": (0, None, ">= 0"),
    "max_grad_norm": (0, None, ">= 0 (0 disables clipping)"),
    "logging_steps": (0, None, "> 0"),
    "save_steps": (0, None, "> 0"),
    "eval_steps": (0, None, "> 0"),
    "save_total_limit": (1, None, ">= 1 (or unset to keep every checkpoint)"),
    "max_length": (1, None, ">= 1 (or unset)"),
    "eval_holdout_fraction": (0, 1, "in [0, 1)"),
    "num_ppo_epochs": (1, None, ">= 1"),
    "total_episodes": (1, None, ">= 1"),
    "response_length": (1, None, ">= 1"),
    "temperature": (0, None, "> 0"),
    "kl_coef": (0, None, ">= 0"),
    "calibration_num_samples": (1, None, ">= 1"),
}
_EXCLUSIVE_LOW = {"logging_steps", "save_steps", "eval_steps", "temperature"}
_EXCLUSIVE_HIGH = {"eval_holdout_fraction"}


def set_command(name: str | None) -> None:
    """Name of the running command (`sft`, `reward`, ...), for `usage: rlhf NAME` and the YAML section."""
    _state["command"] = name


def current_command() -> str | None:
    return _state["command"]


def command_options() -> CommandOptions:
    """The shared flags (`--overwrite_output_dir`, `--debug`) of the last :func:`parse_args` call."""
    return _state["options"]


COMMAND_SECTIONS = ("rollouts", "tiny_model", "sft", "reward", *RL_METHODS)
ENV_KEYS = ("env", "env_kwargs", "max_turns")  # a pipeline's top-level env, for the commands that play it


def config_section(config: dict[str, Any], command: str | None, path: str | Path) -> dict[str, Any]:
    """The flags a command takes from a `--config` YAML file.

    A file with a section named after the command (`sft:`, `reward:`, `ppo:`, `tiny_model:`, ...), like a
    pipeline YAML, gives that section, plus the top-level `seed` unless the section sets one (and for
    `rollouts` and the RL methods the top-level `env`, `env_kwargs`, `max_turns` of an agent pipeline); every other
    top-level key (the pipeline's output_dir, steps, other sections) is ignored. Any other file is read
    whole as the command's flags.
    """
    section = (command or "").replace("-", "_")
    if section and isinstance(config.get(section), dict):
        flags = dict(config[section])
        if "seed" in config and "seed" not in flags:
            flags["seed"] = config["seed"]
        if section in ("rollouts", *RL_METHODS) and config.get("env"):
            for key in ENV_KEYS:
                if config.get(key) is not None and key not in flags:
                    value = config[key]
                    flags[key] = json.dumps(value) if key == "env_kwargs" and isinstance(value, dict) else value
        return flags
    if section and section in config and config[section] is not None:
        raise UserError(f"--config {path}: section '{section}' must be a mapping of flags")
    sections = sorted(k for k, v in config.items() if k in COMMAND_SECTIONS and isinstance(v, dict))
    if sections:  # a pipeline YAML without a section for this command
        raise UserError(
            f"--config {path} has sections for {', '.join(sections)} but none named '{section}'; add a "
            f"'{section}:' section, or pass a YAML file of flags"
        )
    return dict(config)


def _check_range(name: str, value: Any) -> None:
    low, high, text = FLAG_RANGES[name]
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    bad = not math.isfinite(value)
    if low is not None:
        bad |= value <= low if name in _EXCLUSIVE_LOW else value < low
    if high is not None:
        bad |= value >= high if name in _EXCLUSIVE_HIGH else value > high
    if bad:
        raise UserError(f"--{name} {value}: must be {text}")


def check_ranges(*configs: Any) -> None:
    """:class:`UserError` naming the flag and its valid range for any out-of-range value in `configs`."""
    for cfg in configs:
        for name in FLAG_RANGES:
            if hasattr(cfg, name):
                _check_range(name, getattr(cfg, name))
        report_to = getattr(cfg, "report_to", None)
        if report_to is not None:
            for target in [report_to] if isinstance(report_to, str) else report_to:
                if target not in REPORT_TO_CHOICES:
                    raise UserError(f"--report_to {target}: must be one of {', '.join(REPORT_TO_CHOICES)}")
                _check_report_to_installed(target)


def _check_report_to_installed(target: str) -> None:
    import importlib.util

    module = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}.get(target)
    if module and importlib.util.find_spec(module) is None and not (
        target == "tensorboard" and importlib.util.find_spec("tensorboardX")
    ):
        raise UserError(f"--report_to {target}: the '{module}' package is not installed; pip install {module}")


def _pop_flag(argv: list[str], flag: str) -> str | None:
    """Remove `flag VALUE` or `flag=VALUE` from argv; return VALUE (None if absent)."""
    for i, arg in enumerate(argv):
        if arg == flag:
            if i + 1 >= len(argv):
                raise UserError(f"{flag} needs a value")
            value = argv[i + 1]
            del argv[i : i + 2]
            return value
        if arg.startswith(flag + "="):
            del argv[i]
            return arg.split("=", 1)[1]
    return None


def _is_project_type(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "rlhf" or cls is CommandOptions


def short_help(parser: Any, dataclass_types: Sequence[type], prog: str, description: str | None,
               command: str | None = None) -> str:
    """This project's flags, the data formats, the main TRL/transformers flags, where the rest are documented."""
    import argparse
    import textwrap

    from rlhf.common.formats import formats_help

    own = {f.name for cls in dataclass_types if _is_project_type(cls) for f in dataclasses.fields(cls)}
    own |= {f.name for f in dataclasses.fields(CommandOptions)}
    by_dest = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
    indent = " " * 37

    def line(action: Any) -> str:
        flag = action.option_strings[0]
        shown = action.default not in (None, dataclasses.MISSING, argparse.SUPPRESS)
        text = " ".join(str(action.help or "").split()).replace("%%", "%")
        text = (text + (f" (default: {action.default})" if shown else "")).strip()
        wrapped = textwrap.wrap(text, HELP_WIDTH - len(indent)) or [""]
        if len(flag) > 34:  # the text starts on the next line, as argparse does
            return "\n".join([f"  {flag}", *(indent + rest for rest in wrapped)])
        first = f"  {flag:<34} {wrapped[0]}".rstrip()
        return "\n".join([first, *(indent + rest for rest in wrapped[1:])])

    first = (description or "").strip().splitlines()
    lines = [f"usage: {prog} [--config FILE.yaml] [flags]", ""]
    if first:
        lines += [first[0], ""]
    lines.append("this project's flags:")
    lines += [line(by_dest[d]) for d in by_dest if d in own]
    lines.append(f"  {'--debug':<34} full tracebacks for errors (same as {DEBUG_ENV}=1)")
    lines.append(f"  {'--config FILE.yaml':<34} flags from YAML; a pipeline YAML's section for this command is used")
    lines.append(f"  {'--help-all':<34} every flag this command accepts")
    data = formats_help((command or "").replace("-", "_"))
    if data:
        lines += ["", *data]
    main_flags = [line(by_dest[d]) for d in MAIN_FLAGS if d in by_dest and d not in own]
    if main_flags:
        lines += ["", "main training flags (TRL / transformers):", *main_flags]
    lines += ["", f"Every other flag it accepts: `{prog} --help-all`."]
    if any(not _is_project_type(cls) for cls in dataclass_types):
        lines += ["TRL / transformers docs:", *(f"  {link}" for link in DOC_LINKS)]
    return "\n".join(lines) + "\n"


class _HelpFormatter:
    """argparse's help with the defaults shown (as transformers' parser) and the description (a module
    docstring) kept as written, at HELP_WIDTH columns."""

    def __new__(cls, prog: str):
        import argparse

        class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
            pass

        return Formatter(prog, width=HELP_WIDTH, max_help_position=38)


def _print_help(parser: Any, dataclass_types: Sequence[type], prog: str, description: str | None,
                command: str | None, every_flag: bool) -> None:
    """Print `--help` (or `--help-all`), the same on every machine: hardware-chosen defaults say the rule."""
    import argparse
    import sys

    for action in parser._actions:
        if action.dest in HARDWARE_FLAGS:
            action.default = argparse.SUPPRESS
    if every_flag:
        parser.formatter_class = _HelpFormatter
        text = parser.format_help()
    else:
        text = short_help(parser, dataclass_types, prog, description, command)
    sys.stdout.write(text.rstrip("\n") + "\n")
    sys.stdout.flush()


def parse_args(
    dataclass_types: Sequence[type],
    argv: list[str] | None,
    defaults: dict[str, Any] | None = None,
    description: str | None = None,
    command: str | None = None,
) -> tuple[Any, ...]:
    """Parse `argv` into instances of `dataclass_types` with TRL's parser (HF flag names).

    Precedence, lowest first: dataclass defaults, `defaults` (e.g. `hardware_defaults()`), the YAML file
    given with `--config` (see :func:`config_section`), the command line. Also accepted by every command:
    `--overwrite_output_dir`, `--debug` (see :func:`command_options`), `-h/--help` (this project's flags
    and the main ones) and `--help-all` (every flag). Out-of-range values are :class:`UserError`.
    """
    import sys

    from trl import TrlParser

    command = command or current_command()
    prog = f"rlhf {command}" if command else "rlhf"
    argv = list(sys.argv[1:] if argv is None else argv)
    pop_debug_flag(argv)
    types = [*dataclass_types, CommandOptions]
    parser = TrlParser(types, prog=prog, description=description)
    if defaults:
        known = {action.dest for action in parser._actions}
        parser.set_defaults(**{k: v for k, v in defaults.items() if k in known})
    for action in parser._actions:
        if action.dest in FLAG_HELP:
            action.help = FLAG_HELP[action.dest]
    if "--help-all" in argv or "-h" in argv or "--help" in argv:
        _print_help(parser, dataclass_types, prog, description, command, every_flag="--help-all" in argv)
        raise SystemExit(0)

    config_path = _pop_flag(argv, "--config")
    if config_path is not None:
        config = load_yaml(config_path)
        if config is None:
            config = {}
        if not isinstance(config, dict):
            raise UserError(f"--config {config_path}: expected a YAML mapping of flags, got {type(config).__name__}")
        flags = config_section(config, command, config_path)
        if isinstance(flags.get("env"), dict):  # TRL's `env:` section (variables) is not supported: set them in the shell
            flags.pop("env")
        known = {action.dest: action for action in parser._actions}
        unknown = sorted(set(flags) - set(known))
        if unknown:
            lines = yaml_key_lines(config_path)
            section = (command or "").replace("-", "_")
            line = lines.get((section, unknown[0])) or lines.get((unknown[0],))
            where = f"{config_path}:{line}" if line else str(config_path)
            raise UserError(f"{where}: unknown flag '{unknown[0]}' for {prog}; `{prog} --help-all` lists the flags")
        for name, value in flags.items():
            known[name].default = value
            known[name].required = False
    with warnings.catch_warnings():
        # TRL's configs default the deprecated alias `gradient_checkpointing`; not the user's doing.
        warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
        *parsed, options = parser.parse_args_into_dataclasses(args=argv)
    _state["options"] = options
    check_ranges(*parsed)
    return tuple(parsed)


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


def write_config(output_dir: str | Path, sections: dict[str, Any]) -> None:
    """Write every resolved setting, section by section, to OUT/config.yaml (atomically)."""
    import yaml

    atomic_write_text(Path(output_dir) / CONFIG_FILE, yaml.safe_dump(to_plain(sections), sort_keys=False))


STAGING_NAME = ".rlhf-staging"


def publish_staged(staging: Path, final: Path) -> list[Path]:
    """Move every file under `staging` to the same relative path under `final` (one `os.replace` each,
    so each file is swapped whole), then remove the empty staging folder. Returns the published paths."""
    published = []
    for src in sorted(p for p in staging.rglob("*") if p.is_file()):
        dst = final / src.relative_to(staging)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        published.append(dst)
    shutil.rmtree(staging, ignore_errors=True)
    return published


@contextlib.contextmanager
def staged_output(output_dir: str | Path) -> Iterator[Path]:
    """Yield a hidden staging folder inside `output_dir` (same name on every rank); once the block
    succeeds, rank 0 moves its files into `output_dir`, replacing files of the same name only then.

    A failure (or a kill) leaves the earlier files of `output_dir` as they were; the staging folder is
    this project's own (`.rlhf-staging`), so removing a stale one is safe. Nothing else is deleted.
    """
    final = Path(output_dir).expanduser().resolve()
    staging = final / STAGING_NAME
    barrier()  # every rank has checked the folder (prepare_output_dir) before the staging folder appears
    if is_main_process():
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    barrier()
    try:
        yield staging
    except BaseException:
        if is_main_process():
            shutil.rmtree(staging, ignore_errors=True)
        raise
    barrier()  # every rank is done writing before rank 0 publishes
    if is_main_process():
        publish_staged(staging, final)
