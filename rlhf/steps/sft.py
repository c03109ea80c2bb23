"""`rlhf sft`: supervised fine-tuning on demonstrations with TRL's SFTTrainer (step 1 of InstructGPT).

    rlhf sft --model_name_or_path M --dataset_name D --output_dir OUT [--config FILE.yaml] [TRL SFTConfig flags]
    rlhf sft --config configs/rlhf/tiny.yaml --model_name_or_path runs/tiny --output_dir runs/sft  (its sft: section)

Data: `{prompt, completion}` (loss on completion tokens only, TRL's `completion_only_loss`) or `{messages}`
rendered with the chat template (loss on assistant turns only when the template marks them, TRL's
`assistant_only_loss`). Every completion ends with EOS. Options with TRL's names: `--packing`,
`--use_peft --lora_r --lora_alpha --lora_dropout --lora_target_modules`. Precision follows the hardware
unless given (`--bf16`, `--fp16`, `--use_cpu`).

OUT holds the model and tokenizer (`save_pretrained`; with LoRA the merged model, and the adapter in
OUT/adapter), `metrics.jsonl` (one line per log), `summary.json` (`eval_loss_before`, `eval_loss`,
`train_loss`, `train_runtime`, `world_size`, ...) and `config.yaml` (every resolved setting); checkpoints
go to OUT/checkpoint-<step> (`--save_steps`, `--save_total_limit`; `--resume_from_checkpoint PATH|true`
continues a killed run). OUT must be new or empty unless `--overwrite_output_dir` (see rlhf/steps/runs.py). A
non-finite loss or gradient norm stops the run (exit 1) before anything of that step is saved.
"""

from __future__ import annotations

from typing import Any

from trl import ModelConfig, SFTConfig, SFTTrainer

from rlhf.common.data import DataArguments, load_checked_train_eval
from rlhf.common.distributed import (
    check_trainer_sharding,
    evaluate_before_training,
    prepare_trainer_arguments,
)
from rlhf.common.utils import hardware_defaults, parse_args, precision_name
from rlhf.steps.runs import (
    SafeTrainerMixin,
    check_output_dir,
    finish_run,
    load_policy_and_tokenizer,
    peft_config_for,
    run_directory,
    run_train_loss,
)

# TensorBoard logs in OUT/runs/ by default (`--report_to none|tensorboard|wandb|trackio`).
COMMAND_DEFAULTS: dict[str, Any] = {"assistant_only_loss": None, "report_to": "tensorboard"}


class SafeSFTTrainer(SafeTrainerMixin, SFTTrainer):
    """TRL's SFTTrainer with atomic checkpoints and the divergence guard (see `rlhf.steps.runs.SafeTrainerMixin`)."""


def _has_generation_markers(tokenizer: Any) -> bool:
    return "{% generation %}" in (getattr(tokenizer, "chat_template", None) or "")


def run_sft(data_args: DataArguments, training_args: SFTConfig, model_args: ModelConfig) -> dict[str, Any]:
    """Train, evaluate before/after on the held-out split, save; return the summary (also in summary.json)."""
    prepare_trainer_arguments(training_args)  # DeepSpeed / FSDP launch configs on a machine without a GPU
    check_output_dir(training_args)
    model, tokenizer = load_policy_and_tokenizer(model_args, training_args)
    train, held_out, fmt = load_checked_train_eval(data_args, training_args, "sft", model, tokenizer)
    if fmt == "messages" and not getattr(tokenizer, "chat_template", None):
        raise ValueError("the {messages} format needs a tokenizer with a chat template; this tokenizer has none")
    if training_args.assistant_only_loss is None:  # loss on the assistant's turns whenever the template allows
        training_args.assistant_only_loss = fmt == "messages" and _has_generation_markers(tokenizer)

    sections = {"data": data_args, "model": model_args, "training": training_args}
    with run_directory(training_args, sections) as out:
        trainer = SafeSFTTrainer(
            model=model,
            args=training_args,
            train_dataset=train,
            eval_dataset=held_out,
            processing_class=tokenizer,
            peft_config=peft_config_for(model_args),
            callbacks=[out.metrics_callback],
        )
        trainer.run_settings = out.settings
        check_trainer_sharding(trainer)
        before = evaluate_before_training(trainer) if held_out is not None else {}
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        train_loss = run_train_loss(trainer, result, out)
        after = trainer.evaluate() if held_out is not None else {}
        summary = {
            "command": "sft",
            "model_name_or_path": model_args.model_name_or_path,
            "dataset_name": data_args.dataset_name,
            "dataset_format": fmt,
            "num_train_examples": len(train),
            "num_eval_examples": len(held_out) if held_out is not None else 0,
            "eval_loss_before": before.get("eval_loss"),
            "eval_loss": after.get("eval_loss"),
            "train_loss": train_loss,
            "train_runtime": result.metrics.get("train_runtime"),
            "global_step": result.global_step,
            "precision": precision_name(training_args),
            "use_peft": model_args.use_peft,
            "seed": training_args.seed,
        }
        loss = summary["eval_loss"]
        headline = (f"eval loss {loss:.4f} (before training {summary['eval_loss_before']:.4f})" if loss is not None
                    else f"train loss {summary['train_loss']:.4f}")
        finish_run(trainer, out, summary, sections, headline=headline)
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    data_args, training_args, model_args = parse_args(
        [DataArguments, SFTConfig, ModelConfig], argv, defaults={**hardware_defaults(), **COMMAND_DEFAULTS},
        description=__doc__, command="sft",
    )
    return run_sft(data_args, training_args, model_args)
