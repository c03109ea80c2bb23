"""What the Trainer-based commands (sft, reward) share: loading the policy, the LoRA config, and the run
directory lifecycle (train into a temporary directory, save once from rank 0, rename on success)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments
from trl import ModelConfig, get_peft_config

from rlhf.distributed import describe_distribution, full_model_for_saving, models_loaded_whole
from rlhf.models import load_causal_lm, load_tokenizer
from rlhf.utils import JsonlMetricsCallback, atomic_output_dir, write_config, write_json


def load_policy_and_tokenizer(
    model_args: ModelConfig, training_args: Any
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The tokenizer (with a dedicated pad token) and the causal LM of `--model_name_or_path`."""
    if not model_args.model_name_or_path:
        raise ValueError("model_name_or_path is required: a hub id or a local directory saved with save_pretrained")
    trust = bool(getattr(training_args, "trust_remote_code", False) or getattr(model_args, "trust_remote_code", False))
    tokenizer = load_tokenizer(model_args.model_name_or_path, model_args.model_revision, trust)
    model = load_causal_lm(
        model_args.model_name_or_path,
        tokenizer=tokenizer,
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        trust_remote_code=trust,
        attn_implementation=model_args.attn_implementation,
    )
    return model, tokenizer


def peft_config_for(model_args: ModelConfig, task_type: str | None = None, modules_to_save: list[str] | None = None):
    """TRL's LoRA config from `--use_peft --lora_*` flags (None without `--use_peft`)."""
    if not model_args.use_peft:
        return None
    if task_type is not None:
        model_args.lora_task_type = task_type
    if modules_to_save:
        model_args.lora_modules_to_save = sorted(set(model_args.lora_modules_to_save or []) | set(modules_to_save))
    return get_peft_config(model_args)


@dataclass
class RunDirectory:
    """The temporary directory a run writes into, and the callback that logs metrics.jsonl there."""

    path: Path
    final: Path
    metrics_callback: JsonlMetricsCallback


@contextlib.contextmanager
def run_directory(training_args: TrainingArguments) -> Iterator[RunDirectory]:
    """Point `training_args.output_dir` at a temporary directory for the run; see `atomic_output_dir`."""
    final = Path(training_args.output_dir)
    with atomic_output_dir(final) as tmp:
        training_args.output_dir = str(tmp)
        try:
            yield RunDirectory(tmp, final, JsonlMetricsCallback(tmp))
        finally:
            training_args.output_dir = str(final)


def finish_run(
    trainer: Trainer,
    out: RunDirectory,
    summary: dict[str, Any],
    sections: dict[str, Any],
    before_save: Callable[[PreTrainedModel], None] | None = None,
) -> None:
    """Save model (merged when LoRA-trained; the adapter in OUT/adapter), tokenizer, config and summary, on
    rank 0 only. `before_save(model)` may still change the final (merged) model, e.g. calibrate it."""
    summary["world_size"] = trainer.args.world_size
    summary.update(describe_distribution(trainer.accelerator))  # distributed_type, zero_stage, world_size
    summary["output_dir"] = str(out.final)
    full = full_model_for_saving(trainer)  # every rank: gathers the shards under ZeRO-3 / FSDP
    if not trainer.is_world_process_zero():
        return
    model = trainer.model if full is None else full
    if hasattr(model, "merge_and_unload"):  # a peft model
        model.save_pretrained(out.path / "adapter")
        model = model.merge_and_unload()
    if before_save is not None:
        with models_loaded_whole():  # rank 0 alone may load models here (no ZeRO-3 partitioning)
            before_save(model)
    model.save_pretrained(out.path)
    trainer.processing_class.save_pretrained(out.path)
    trainer.args.output_dir = str(out.final)  # record the final path, not the temporary one
    write_config(out.path, sections)
    trainer.args.output_dir = str(out.path)
    write_json(out.path / "summary.json", summary)
