"""The command runner of the RL methods: output folder rules, training, the final model and files, the
one-line result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhf.common.checkpoints import full_disk_reported, locked_output_dir, resolve_resume_path
from rlhf.common.distributed import sharded
from rlhf.common.utils import (
    SUMMARY_FILE,
    check_ranges,
    command_options,
    staged_output,
    write_config,
    write_json,
)
from rlhf.rl.config import RLConfig

__all__ = ["run_summary", "run_trainer", "save_final", "save_policy"]


def run_trainer(trainer_class: type, config: RLConfig) -> dict[str, Any]:
    """Train with ``config``; OUT gets checkpoints while training and the final files at the end.

    An existing non-empty --output_dir is refused unless --overwrite_output_dir or
    --resume_from_checkpoint. A run that fails before writing anything leaves no folder behind; a run
    that fails later keeps its checkpoints and metrics.jsonl, never a model of a failed update."""
    config.validate()
    check_ranges(config)  # also: --report_to a tracker that is not installed
    resume = resolve_resume_path(config.resume_from_checkpoint, config.output_dir)
    overwrite = command_options().overwrite_output_dir
    # The folder's lock is held until the final files are written; a failed start leaves no folder.
    with locked_output_dir(config.output_dir, overwrite=overwrite, resume=resume is not None) as out:
        trainer = trainer_class(config)
        try:
            summary = trainer.train(out, resume)
            summary["output_dir"] = str(config.output_dir)
            save_final(trainer, out, summary)
        finally:
            trainer.sampler.close()
    if trainer.accelerator.is_main_process:
        held_out = (f"held-out return {summary['return_mean_before']:+.3f} -> {summary['return_mean_after']:+.3f} "
                    f"({summary['num_eval_episodes']} episodes)" if config.env else
                    f"held-out reward {summary['reward_mean_before']:+.3f} -> {summary['reward_mean_after']:+.3f} "
                    f"({summary['num_eval_prompts']} prompts)")
        print(f"{config.command}: {held_out}, KL {summary['kl_mean']:.3f}, {summary['train_runtime']:.1f}s, "
              f"world size {summary['world_size']} -> {config.output_dir}")
    return summary


def save_final(trainer, out: Path, summary: dict[str, Any]) -> None:
    """The model, tokenizer, config.yaml and summary.json into OUT, through the same staging folder as
    sft and reward (``rlhf.common.utils.staged_output``): OUT never holds a half-written model file."""
    main = trainer.accelerator.is_main_process
    with full_disk_reported(out, out), staged_output(out) as staging:
        save_policy(trainer, staging)  # every rank joins (the gather under ZeRO-3 / FSDP); rank 0 writes
        if main:
            write_config(staging, {trainer.command: trainer.config})
    if main:
        write_json(out / SUMMARY_FILE, summary)


def save_policy(trainer, output_dir: Path) -> None:
    """Save the policy (merged if LoRA; adapter in OUT/adapter) and the tokenizer, from rank 0 only."""
    acc = trainer.accelerator
    acc.wait_for_everyone()
    # Under ZeRO-3 / FSDP each rank holds a shard: gather the full weights first (a collective that
    # every rank joins; DeepSpeed needs zero3_save_16bit_model, set in the shipped config).
    state_dict = acc.get_state_dict(trainer.model) if sharded(acc) else None
    if not acc.is_main_process:
        return
    policy = trainer.policy
    if state_dict is not None:
        state_dict = {k.removeprefix("policy."): v for k, v in state_dict.items() if k.startswith("policy.")}
        policy.save_pretrained(output_dir, state_dict=state_dict)
        trainer.tokenizer.save_pretrained(output_dir)
        return
    if hasattr(policy, "merge_and_unload"):
        policy.save_pretrained(output_dir / "adapter")
        policy = policy.merge_and_unload()
    if trainer.config.gradient_checkpointing:
        policy.gradient_checkpointing_disable()
    policy.save_pretrained(output_dir)
    trainer.tokenizer.save_pretrained(output_dir)


def run_summary(trainer, before: dict[str, float], after: dict[str, float], train_runtime: float,
            last: dict[str, float], resume_from: Path | None) -> dict[str, Any]:
    """summary.json of an RL run: what it trained, the held-out numbers before and after, where and how."""
    from rlhf.common.distributed import describe_distribution
    from rlhf.rl.prompts import HELD_OUT_SEED_OFFSET

    cfg = trainer.config
    env = {}
    if cfg.env:
        from rlhf.envs.evaluation import env_summary

        env = env_summary(trainer, before, after)
    return {
        "command": trainer.command, "model_name_or_path": cfg.model_name_or_path,
        "reward_source": cfg.reward_model_path or cfg.reward_fn, "dataset_name": cfg.dataset_name,
        "num_train_prompts": len(trainer.prompts.train_prompts), "num_eval_prompts": len(trainer.prompts.eval_prompts),
        "reward_mean_before": before.get("reward_mean"), "reward_mean_after": after["reward_mean"],
        "score_mean_before": before.get("score_mean"), "score_mean_after": after["score_mean"],
        "eos_fraction_before": before.get("eos_fraction"), "eos_fraction_after": after["eos_fraction"],
        "kl_mean": after["kl_mean"], "train_runtime": train_runtime, "num_updates": trainer.num_updates,
        "episodes": trainer.episode, "episodes_per_second": trainer.episode / max(train_runtime, 1e-9),
        **describe_distribution(trainer.accelerator),  # distributed_type, zero_stage, world_size
        "precision": trainer.precision, "use_peft": cfg.use_peft, "seed": cfg.seed,
        "generation_backend": trainer.sampler.name,
        "resumed_from": str(resume_from) if resume_from is not None else None,
        # how the held-out prompts were sampled, so the pipeline's comparison draws the same samples
        "held_out_sampling": {"seed": cfg.seed + HELD_OUT_SEED_OFFSET, "slice": cfg.local_batch_size,
                              "chunk": cfg.local_rollout_forward_batch_size, "temperature": cfg.temperature,
                              "max_new_tokens": cfg.max_new_tokens},
        **env,
        **trainer.summary_extras(last),
    }
