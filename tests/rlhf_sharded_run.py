"""Everything tests/test_rlhf_sharded.py checks under one launch config, in one `accelerate launch`.

    accelerate launch --config_file configs/accelerate/cpu_zero3.yaml --gradient_accumulation_steps 2 \
        tests/rlhf_sharded_run.py --tiny DIR --out_dir DIR [--commands]

One launch (two CPU processes) per config keeps the sharded test set fast: Python imports dominate.
Rank 0 writes ``OUT_DIR/report.json`` and ``OUT_DIR/step.safetensors``. In order:

1. ``step`` -- one ``PPOTrainer.step`` on the fixed global batch of tests/rlhf_dp_step.py (case
   ``equal``: 8 sequences, 4 per rank, 2 accumulated micro batches of 2 per optimizer step, 2 PPO
   epochs), the trained weights gathered on rank 0 (``accelerator.get_state_dict``, a collective under
   ZeRO-3 / FSDP) into ``step.safetensors``. The report says how the model is held: parameters that are
   DTensors (FSDP2), the parameter and optimizer-state elements this rank holds against the full
   model's, DeepSpeed's optimizer steps and micro steps (its accumulation boundary), and whether the
   sampler synchronises its stop across ranks. The trainer then saves the policy (``PPOTrainer.save``)
   and rank 0 compares it, loaded into a plain ``AutoModelForCausalLM``, with the gathered weights.
2. ``--commands``: ``rlhf sft`` (tiny model), ``rlhf reward`` (from that SFT model), ``rlhf ppo`` with
   that reward model and a separate reference model (frozen models placed by ``prepare_frozen_model``:
   a ZeRO-3 inference engine, a stage-0 engine, or the FSDP root), ``rlhf ppo`` learning the vowel
   reward of tests/test_rlhf_ppo.py, and ``rlhf ppo --use_peft`` (trains under ZeRO-2 / DDP, refused
   with its message under ZeRO-3 / FSDP). Each summary.json is copied into the report.
3. ``--resume``: checkpoints and exact resume. ``rlhf ppo`` and ``rlhf grpo`` each run 4 updates with
   a checkpoint after each of the first three (``--save_total_limit 2``) into ``<command>_full``; its
   ``checkpoint-2`` is copied into a new folder ``<command>_resumed``, where the same command with
   ``--resume_from_checkpoint true`` finishes the run. The test compares the two runs' weights and
   metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import torch  # noqa: E402

DATA = REPO / "rlhf" / "data"
QUIET = ["--disable_tqdm", "true", "--report_to", "none"]
VOWELS = '''
def vowels(prompts, completions):
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]
'''


def _unwrap_optimizer(optimizer):
    """The torch optimizer that holds the Adam states (inside accelerate's and DeepSpeed's wrappers)."""
    seen = optimizer
    while not isinstance(seen, torch.optim.Optimizer) or (hasattr(seen, "optimizer") and seen.optimizer is not seen):
        if not hasattr(seen, "optimizer"):
            break
        seen = seen.optimizer
    return seen


def holding(trainer) -> dict:
    """How much of the model this rank holds: parameter and optimizer-state elements, local vs full."""
    from torch.distributed.tensor import DTensor

    local = full = dtensors = 0
    for p in trainer.model.parameters():
        if isinstance(p, DTensor):
            dtensors += 1
            local += p.to_local().numel()
            full += p.numel()
        elif hasattr(p, "ds_numel"):  # ZeRO-3: p itself is an empty placeholder, ds_tensor the shard
            local += p.ds_tensor.numel()
            full += p.ds_numel
        else:
            local += p.numel()
            full += p.numel()
    inner = _unwrap_optimizer(trainer.optimizer)
    # FSDP2's Adam states are DTensors like their parameters: numel() would count the full tensor
    state = sum((t.to_local() if isinstance(t, DTensor) else t).numel()
                for s in inner.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
    return {"param_local": local, "param_full": full, "dtensor_params": dtensors, "optimizer_state_local": state}


def run_step(args, report: dict) -> None:
    from rlhf.distributed import describe_distribution, models_loaded_whole, needs_synchronised_generation
    from rlhf.ppo import PPOTrainer
    from rlhf.ppo_config import PPOConfig
    from rlhf_dp_step import RESPONSE_LENGTHS, RESPONSE_WIDTH, global_batch, rows
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    world = int(os.environ.get("WORLD_SIZE", "1"))
    global_size, accumulation = 8, 2
    local_size = global_size // world
    with tempfile.TemporaryDirectory() as tmp:
        config = PPOConfig(
            output_dir=tmp, model_name_or_path=str(args.tiny), reward_fn="rlhf.task:gold_reward",
            dataset_name=str(DATA / "prompts.jsonl"), eval_dataset_name=str(DATA / "prompts_eval.jsonl"),
            per_device_train_batch_size=local_size // accumulation, num_mini_batches=1,
            gradient_accumulation_steps=accumulation, num_ppo_epochs=2, total_episodes=global_size,
            response_length=RESPONSE_WIDTH, learning_rate=1e-3, max_grad_norm=1.0, temperature=0.7,
            kl_coef=0.05, seed=0, use_cpu=True, num_sample_generations=0, disable_tqdm=True,
        )
        trainer = PPOTrainer(config)
    acc = trainer.accelerator
    report["distribution"] = describe_distribution(acc)
    report["sync_generation"] = needs_synchronised_generation(acc, config.ds3_gather_for_generation)
    report["sync_generation_without_gather"] = needs_synchronised_generation(acc, False)
    report["holding"] = holding(trainer)

    full = global_batch(trainer, global_size, RESPONSE_LENGTHS["equal"])
    local = rows(full, trainer.rank * local_size, (trainer.rank + 1) * local_size)
    trainer.rollout = lambda *_, **__: local
    # DDP returns the live tensors (cloned here); ZeRO-3 gathers to rank 0 only (None elsewhere)
    before = {k: v.detach().clone() for k, v in (acc.get_state_dict(trainer.model) or {}).items()}
    metrics, _ = trainer.step(local.prompts, [[0]] * local_size)
    after = acc.get_state_dict(trainer.model)  # a collective under ZeRO-3 / FSDP: every rank calls it
    report["holding_after_step"] = holding(trainer)  # the optimizer states exist now
    engine = trainer.model if hasattr(trainer.model, "global_steps") else None
    if engine is not None:
        report["deepspeed_steps"] = {"global_steps": engine.global_steps, "micro_steps": engine.micro_steps}

    shared = Path(args.out_dir) / "saved_policy"
    trainer.save(shared)  # every rank joins (the gather under ZeRO-3 / FSDP); rank 0 writes
    acc.wait_for_everyone()
    if acc.is_main_process:
        weights = {k: v.detach().contiguous().clone().float() for k, v in after.items()}
        moved = max((weights[k] - before[k].float()).abs().max().item() for k in weights)
        save_file(weights, str(Path(args.out_dir) / "step.safetensors"))
        report["step"] = {"metrics": metrics, "max_change": moved}
        with models_loaded_whole(acc):  # rank 0 alone: no deepspeed.zero.Init partitioning (a collective)
            plain = AutoModelForCausalLM.from_pretrained(shared).state_dict()
        policy = {k.removeprefix("policy."): v for k, v in weights.items() if k.startswith("policy.")}
        diffs = [(plain[k].float() - v).abs().max().item() for k, v in policy.items() if k in plain]
        report["saved_policy"] = {"compared": len(diffs), "keys": len(policy), "max_diff": max(diffs)}
    acc.wait_for_everyone()


def run_commands(args, report: dict) -> None:
    from rlhf import ppo, reward, sft

    out = Path(args.out_dir)
    accumulation = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
    common = ["--seed", "0", "--gradient_accumulation_steps", accumulation, *QUIET]
    results = report["commands"] = {}
    results["sft"] = sft.main([
        "--model_name_or_path", str(args.tiny), "--dataset_name", str(DATA / "sft.jsonl"),
        "--eval_dataset_name", str(DATA / "sft_eval.jsonl"), "--output_dir", str(out / "sft"),
        "--max_steps", "30", "--per_device_train_batch_size", "8", "--learning_rate", "3e-3",
        "--logging_steps", "10", *common,
    ])
    torch.distributed.barrier()  # rank 0 has renamed the run directory into place
    results["reward"] = reward.main([
        "--model_name_or_path", str(out / "sft"), "--dataset_name", str(DATA / "rankings.jsonl"),
        "--eval_dataset_name", str(DATA / "pairs_eval.jsonl"), "--calibration_dataset", str(DATA / "prompts.jsonl"),
        "--calibration_num_samples", "16", "--output_dir", str(out / "reward"), "--max_steps", "20",
        "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--logging_steps", "10", *common,
    ])
    torch.distributed.barrier()
    ppo_common = [
        "--dataset_name", str(DATA / "prompts.jsonl"), "--eval_dataset_name", str(DATA / "prompts_eval.jsonl"),
        "--response_length", "8", "--num_eval_prompts", "16", "--num_sample_generations", "0", "--disable_tqdm",
        "--gradient_accumulation_steps", accumulation, "--seed", "0",
    ]
    # The reward model and a separate reference policy: both frozen models placed by prepare_frozen_model.
    results["ppo_rm"] = ppo.main([
        "--model_name_or_path", str(out / "sft"), "--reward_model_path", str(out / "reward"),
        "--output_dir", str(out / "ppo_rm"), "--total_episodes", "32", "--per_device_train_batch_size", "4",
        "--ds3_gather_for_generation", "false", *ppo_common,
    ])
    reward_file = out / "sharded_rewards.py"
    if int(os.environ.get("RANK", "0")) == 0:
        reward_file.write_text(VOWELS)
    torch.distributed.barrier()
    results["ppo_learn"] = ppo.main([
        "--model_name_or_path", str(args.tiny), "--reward_fn", f"{reward_file}:vowels",
        "--output_dir", str(out / "ppo_learn"), "--total_episodes", "320", "--per_device_train_batch_size", "8",
        "--learning_rate", "3e-3", "--kl_coef", "0.01", "--missing_eos_penalty", "0",
        "--temperature", "1.0", *ppo_common,
    ])
    try:
        results["ppo_lora"] = ppo.main([
            "--model_name_or_path", str(args.tiny), "--reward_fn", f"{reward_file}:vowels", "--use_peft",
            "--lora_r", "4", "--lora_alpha", "8", "--learning_rate", "3e-3", "--output_dir", str(out / "ppo_lora"),
            "--total_episodes", "16",
            "--per_device_train_batch_size", "4", *ppo_common,
        ])
    except ValueError as err:
        results["ppo_lora"] = {"refused": str(err)}


def run_resume(args, report: dict) -> None:
    import shutil

    from rlhf import grpo, ppo

    out = Path(args.out_dir)
    accumulation = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank0 = int(os.environ.get("RANK", "0")) == 0
    reward_file = out / "resume_rewards.py"
    if rank0:
        reward_file.write_text(VOWELS)
    torch.distributed.barrier()
    per_device = 4
    common = [
        "--model_name_or_path", str(args.tiny), "--reward_fn", f"{reward_file}:vowels",
        "--dataset_name", str(DATA / "prompts.jsonl"), "--eval_dataset_name", str(DATA / "prompts_eval.jsonl"),
        "--per_device_train_batch_size", str(per_device), "--gradient_accumulation_steps", accumulation,
        "--learning_rate", "3e-3", "--num_eval_prompts", "8", "--num_sample_generations", "0", "--seed", "0",
        "--save_steps", "1", "--save_total_limit", "2", *QUIET,
    ]
    commands = {  # 4 updates each whatever the accumulation
        # PPO: policy and critic trained; the adaptive KL coefficient is method state to restore
        "ppo": (ppo.main, [*common, "--total_episodes", str(4 * per_device * int(accumulation) * world),
                           "--response_length", "6", "--num_ppo_epochs", "2", "--adaptive_kl", "--kl_target", "0.1"]),
        # GRPO: the policy alone, groups of 4 completions, a frozen reference (beta > 0)
        "grpo": (grpo.main, [*common, "--max_steps", "4", "--num_generations", "4", "--max_completion_length", "6",
                             "--num_iterations", "2", "--beta", "0.05"]),
    }
    results = report["resume"] = {}
    for command, (main, flags) in commands.items():
        full, resumed = out / f"{command}_full", out / f"{command}_resumed"
        results[command] = {"full": main([*flags, "--output_dir", str(full)])}
        if rank0:
            shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
        torch.distributed.barrier()
        results[command]["resumed"] = main([*flags, "--output_dir", str(resumed), "--resume_from_checkpoint", "true"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", required=True)
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--commands", action="store_true", help="also run sft, reward and ppo end to end")
    parser.add_argument("--resume", action="store_true", help="also checkpoint rlhf ppo and resume it")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report: dict = {}
    try:
        run_step(args, report)
        if args.resume:  # before the long commands: a failure here is reported quickly
            run_resume(args, report)
        if args.commands:
            run_commands(args, report)
    except BaseException:
        report["error"] = traceback.format_exc()
        raise
    finally:
        if int(os.environ.get("RANK", "0")) == 0:
            (Path(args.out_dir) / "report.json").write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
