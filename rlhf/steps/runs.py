"""What the Trainer-based commands (sft, reward) share: loading the policy, the LoRA config, the output
folder and its checkpoints, the divergence guard, and the final save.

Output folder (see `rlhf.common.checkpoints`): the run trains directly in OUTPUT_DIR, which must be new or empty
unless `--overwrite_output_dir` or `--resume_from_checkpoint` is given; nothing there that the command did
not write is ever deleted. Checkpoints (`--save_steps N`, `--save_total_limit K`) are transformers'
`OUTPUT_DIR/checkpoint-<step>/`, each written in a hidden folder and renamed into place once complete;
`--save_total_limit` prunes only the checkpoints of the current run. The final model, tokenizer,
config.yaml and summary.json are written to a hidden staging folder and moved in only once all are
complete, so a kill leaves the previous files (or none), never a mix.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments
from trl import ModelConfig, get_peft_config

from classic_rl.safe_io import STAGING_DIR, TrainingDiverged, atomic_directory
from rlhf.common.checkpoints import (
    checkpoint_step,
    full_disk_reported,
    latest_checkpoint,
    locked_output_dir,
    prepare_output_dir,
    prune_checkpoints,
    refuse_if_in_use,
    resolve_resume_path,
)
from rlhf.common.distributed import describe_distribution, full_model_for_saving, models_loaded_whole
from rlhf.common.metrics import JsonlMetricsCallback
from rlhf.common.models import load_causal_lm, load_tokenizer
from rlhf.common.resume_settings import check_same_settings, comparable
from rlhf.common.stopping import RunStopped, stop_pending, stop_signals
from rlhf.common.utils import (
    barrier,
    command_options,
    is_main_process,
    process_rank,
    staged_output,
    write_config,
    write_json,
)


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


# ----------------------------------------------------------------------------------------------- trainer guard
def _divergence_message(output_dir: str | Path, step: int, what: str, value: float) -> str:
    last = latest_checkpoint(output_dir)
    where = (
        f"the last good checkpoint is {last}; resume from it with --resume_from_checkpoint {last}"
        if last is not None
        else "no checkpoint was saved (use --save_steps N to keep some)"
    )
    return (
        f"training diverged at step {step}: {what} is {value} (not finite); the run stopped and saved no model "
        f"from this step; {where}, e.g. with a lower --learning_rate or --max_grad_norm"
    )


class SafeTrainerMixin:
    """Mixed into a transformers `Trainer` (before it in the bases) for this project's safety rules.

    - A non-finite loss (every micro-batch) or gradient norm (every optimizer step) raises
      :class:`TrainingDiverged` before the step is saved (transformers would log an average instead).
    - Checkpoints are written in `OUT/.staging/checkpoint-<step>` and renamed to `OUT/checkpoint-<step>`
      once complete; `--save_total_limit` deletes only checkpoints this run wrote.
    - No model card: TRL would write README.md into OUTPUT_DIR, possibly over a user's file.
    """

    _staging_root: Path | None = None
    run_settings: dict[str, Any] | None = None  # RunDirectory.settings: saved in each checkpoint

    _whole_run_log = False  # the running loss / token counts came back from the checkpoint (LogState)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """transformers' train, where Ctrl-C / SIGTERM saves a checkpoint after the optimizer step under
        way and raises :class:`RunStopped` (a second one stops at once; rlhf.common.stopping), and a
        resumed run logs what the uninterrupted run logs (:class:`LogState`)."""
        stop = StopOnSignal()
        callbacks = [stop]
        if resume_from_checkpoint:
            callbacks.append(LogState(self, Path(resume_from_checkpoint)))
        for callback in callbacks:
            self.add_callback(callback)
        try:
            with stop_signals():
                result = super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            for callback in callbacks:
                self.remove_callback(callback)
        if stop.signal_name is not None:
            where = f"at step {self.state.global_step}/{self.state.max_steps}"
            raise RunStopped(stop.signal_name, f"{where}; checkpoint saved in "
                             f"{Path(self.args.output_dir) / f'checkpoint-{self.state.global_step}'}")
        return result

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            step = self.state.global_step + 1
            raise TrainingDiverged(_divergence_message(self.args.output_dir, step, "the loss", float(loss.mean())))
        return loss

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, *args, **kwargs):
        if grad_norm is not None:
            value = float(grad_norm.item() if isinstance(grad_norm, torch.Tensor) else grad_norm)
            if not math.isfinite(value):
                step = self.state.global_step
                raise TrainingDiverged(_divergence_message(self.args.output_dir, step, "the gradient norm", value))
        return super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)

    def log(self, logs, *args, **kwargs):
        if "train_loss" in logs and self._whole_run_log:
            # transformers divides by this session's steps; the restored sum covers the whole run
            logs["train_loss"] = self._total_loss_scalar / max(self.state.global_step, 1)
        return super().log(logs, *args, **kwargs)

    def create_model_card(self, *args, **kwargs) -> None:
        return None

    def _get_output_dir(self, trial):
        if self._staging_root is not None:
            return str(self._staging_root)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        out = Path(self.args.output_dir)
        final = out / f"checkpoint-{self.state.global_step}"
        # transformers writes <output dir>/checkpoint-<step>: pointed at the staging root, that is the
        # folder atomic_directory renames into place once every rank has written its part (or removes).
        with full_disk_reported(out, final), atomic_directory(final, main=is_main_process(), barrier=barrier) as staging:
            self._staging_root = staging.parent
            try:
                super()._save_checkpoint(model, trial)
                LogState.save(self, staging)
                if self.run_settings is not None and is_main_process():
                    write_json(staging / SETTINGS_FILE, self.run_settings)
            finally:
                self._staging_root = None
        if is_main_process():
            written = getattr(self, "_written_checkpoints", [])
            written.append(final)
            self._written_checkpoints = prune_checkpoints(written, self.args.save_total_limit)
        best = self.state.best_model_checkpoint
        if best and Path(best).parent == final.parent / STAGING_DIR:
            self.state.best_model_checkpoint = str(out / Path(best).name)
        barrier()


class LogState(TrainerCallback):
    """What a resumed Trainer run needs to log the uninterrupted run's rows, which transformers and TRL
    keep only in memory: the loss summed since the last log and over the run, the step last logged,
    TRL's token count (``num_tokens``) and its metric windows (accuracy, entropy, ...). Each rank writes
    its own ``rlhf_log_state_<rank>.json`` into every checkpoint; resuming restores it when training
    begins (after transformers has reset them). A checkpoint of an earlier version has none: the run
    then logs as transformers does (``num_tokens`` and the loss windows count this session only)."""

    def __init__(self, trainer: Trainer, checkpoint: Path):
        self.trainer, self.checkpoint = trainer, checkpoint

    @staticmethod
    def file(folder: Path) -> Path:
        return folder / f"rlhf_log_state_{process_rank()}.json"

    @staticmethod
    def save(trainer: Trainer, folder: Path) -> None:
        tr_loss = getattr(trainer, "_tr_loss", None)
        if tr_loss is None or not hasattr(trainer, "_total_loss_scalar"):  # another transformers version
            return
        metrics = getattr(trainer, "_metrics", {}).get("train", {})
        write_json(LogState.file(folder), {
            "tr_loss": float(tr_loss.item()), "total_loss": trainer._total_loss_scalar,
            "last_logged": trainer._globalstep_last_logged,
            "total_train_tokens": getattr(trainer, "_total_train_tokens", None),
            "metrics": {key: list(values) for key, values in metrics.items()},
        })

    def on_train_begin(self, args, state, control, **kwargs):
        path = self.file(self.checkpoint)
        trainer = self.trainer
        if not path.is_file() or getattr(trainer, "_tr_loss", None) is None:
            return
        saved = json.loads(path.read_text())
        trainer._tr_loss += saved["tr_loss"]
        trainer._total_loss_scalar = saved["total_loss"]
        trainer._globalstep_last_logged = saved["last_logged"]
        if saved["total_train_tokens"] is not None and hasattr(trainer, "_total_train_tokens"):
            trainer._total_train_tokens = saved["total_train_tokens"]
        if hasattr(trainer, "_metrics"):
            trainer._metrics["train"].clear()
            trainer._metrics["train"].update(saved["metrics"])
        trainer._whole_run_log = True


class StopOnSignal(TrainerCallback):
    """After each optimizer step: a pending stop request (the same on every rank) saves a checkpoint and
    ends training there (``Trainer`` saves on ``should_save`` before it stops)."""

    signal_name: str | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step < state.max_steps and (signal_name := stop_pending()) is not None:
            self.signal_name = signal_name
            control.should_save = True
            control.should_training_stop = True
        return control


# ----------------------------------------------------------------------------------------------- run folder
@dataclass
class RunDirectory:
    """The output folder of a run, the resumed checkpoint (if any), and the callback that logs metrics.jsonl."""

    path: Path
    resume_from: Path | None
    metrics_callback: JsonlMetricsCallback
    started: float = field(default_factory=time.time)
    settings: dict[str, Any] | None = None  # the resolved settings, kept in every checkpoint (SETTINGS_FILE)

    @property
    def final(self) -> Path:
        return self.path


def resolve_resume(training_args: TrainingArguments) -> Path | None:
    """`--resume_from_checkpoint` (a path, or true for the latest in OUTPUT_DIR) as a folder, or None."""
    return resolve_resume_path(training_args.resume_from_checkpoint, training_args.output_dir)


def check_output_dir(training_args: TrainingArguments) -> None:
    """Refuse a non-empty OUTPUT_DIR before minutes of loading (the same rule as `run_directory`, which
    creates the folder only once the model and data are known to be good)."""
    path = Path(training_args.output_dir).expanduser()
    if path.exists():
        if is_main_process():
            refuse_if_in_use(training_args.output_dir)
        resume = training_args.resume_from_checkpoint not in (None, False, "", "false", "False")
        prepare_output_dir(training_args.output_dir, overwrite=command_options().overwrite_output_dir, resume=resume)


SETTINGS_FILE = "rlhf_settings.json"


def check_resume_settings(resume_from: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume ``resume_from`` with other settings than it was saved with (see
    ``rlhf.common.resume_settings``); a checkpoint of an earlier version (no SETTINGS_FILE) gets a note."""
    path = resume_from / SETTINGS_FILE
    saved = json.loads(path.read_text()) if path.is_file() else None
    check_same_settings(resume_from, saved, settings, f"{path} has them")


@contextlib.contextmanager
def run_directory(training_args: TrainingArguments, sections: dict[str, Any] | None = None) -> Iterator[RunDirectory]:
    """Check and create OUTPUT_DIR (refusing a non-empty one, see `prepare_output_dir`), resolve the resume
    checkpoint (refused if ``sections``, the run's settings, differ from those it was saved with), and
    start metrics.jsonl (kept up to the checkpoint's step when resuming)."""
    _ = training_args.device  # joins the process group under a launcher, so the barriers below are real
    resume_from = resolve_resume(training_args)
    settings = comparable(sections) if sections is not None else None
    if resume_from is not None and settings is not None:
        check_resume_settings(resume_from, settings)
    # The folder's lock is held by rank 0 until the final files are written (see `locked_output_dir`).
    with locked_output_dir(
        training_args.output_dir, overwrite=command_options().overwrite_output_dir, resume=resume_from is not None
    ) as path:
        barrier()
        training_args.output_dir = str(path)
        training_args.resume_from_checkpoint = str(resume_from) if resume_from else None
        metrics = JsonlMetricsCallback(path)
        metrics.start(resume_step=checkpoint_step(resume_from) if resume_from else None)
        yield RunDirectory(path, resume_from, metrics, settings=settings)


def run_train_loss(trainer: Trainer, result: Any, out: RunDirectory) -> float | None:
    """Mean training loss over the whole run, also when it was resumed from a checkpoint.

    transformers averages only the steps of the current session; a resumed run adds the loss of the steps
    before the checkpoint from the restored log history (logged windows up to the checkpoint's step).
    """
    session = result.metrics.get("train_loss")
    if out.resume_from is None or session is None or getattr(trainer, "_whole_run_log", False):
        return session  # (restored from the checkpoint: already the whole run's, see LogState)
    resume_step = checkpoint_step(out.resume_from) or 0
    total, last = 0.0, 0
    for row in trainer.state.log_history:
        if "loss" in row and row.get("step", 0) <= resume_step:
            total += row["loss"] * (row["step"] - last)
            last = row["step"]
    steps = result.global_step
    return (total + session * (steps - resume_step)) / max(steps, 1)


def finish_run(
    trainer: Trainer,
    out: RunDirectory,
    summary: dict[str, Any],
    sections: dict[str, Any],
    before_save: Callable[[PreTrainedModel], None] | None = None,
    headline: str = "",
) -> None:
    """Save model (merged when LoRA-trained; the adapter in OUT/adapter), tokenizer, config and summary, on
    rank 0 only, through a staging folder (files replaced only once all are written). `before_save(model)`
    may still change the final (merged) model, e.g. calibrate it. Prints one line: where and `headline`."""
    summary["world_size"] = trainer.args.world_size
    summary.update(describe_distribution(trainer.accelerator))  # distributed_type, zero_stage, world_size
    summary["output_dir"] = str(out.path)
    if out.resume_from is not None:
        summary["resumed_from"] = str(out.resume_from)
    full = full_model_for_saving(trainer)  # every rank: gathers the shards under ZeRO-3 / FSDP
    with full_disk_reported(out.path, out.path), staged_output(out.path) as staging:
        if trainer.is_world_process_zero():
            model = trainer.model if full is None else full
            if hasattr(model, "merge_and_unload"):  # a peft model
                model.save_pretrained(staging / "adapter")
                model = model.merge_and_unload()
            if before_save is not None:
                with models_loaded_whole():  # rank 0 alone may load models here (no ZeRO-3 partitioning)
                    before_save(model)
            model.save_pretrained(staging)
            trainer.processing_class.save_pretrained(staging)
            write_config(staging, sections)
            write_json(staging / "summary.json", summary)
    if trainer.is_world_process_zero():
        command = summary.get("command", "run")
        print(f"rlhf {command}: done in {time.time() - out.started:.0f}s; model and summary.json in {out.path}"
              + (f"; {headline}" if headline else ""), flush=True)
