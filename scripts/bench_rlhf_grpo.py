"""Side-by-side benchmark of the critic-free methods: our `rlhf grpo` / `rlhf rloo` against TRL's
GRPOTrainer / RLOOTrainer (this environment's TRL; 1.16 when written), on the verifiable task.

    python scripts/bench_rlhf_grpo.py [--steps 32] [--seeds 0 1 2] [--repeats 1] [--work_dir runs/bench_rlhf_grpo]

Every trainer starts from the same SFT policy (the recipe of configs/rlhf/grpo_tiny.yaml: the tiny model
SFT'd on the noisy digit-reversal demonstrations; built once and cached in WORK_DIR/assets), samples the
same prompts' groups (``--prompts_per_step`` prompts x ``--num_generations`` completions per step, up to
``--max_completion_length`` tokens, cut at EOS), is rewarded by the same Python function
(``rlhf.tasks.verifiable:reward``), and takes one optimizer step per generation batch (one iteration) with the
same learning rate, linear decay, ``beta``, ``epsilon``, temperature, loss (GRPO: TRL's default "dapo"
with group-scaled rewards; RLOO: TRL's sequence-level ratio) and seed. Each run is its own child
process with one torch thread; it reports the wall and CPU time of its training loop alone (models
loaded and the optimizer built before; for TRL from its `on_train_begin` to its `on_train_end` callback;
DeepSpeed, which both import lazily in their first step when it is installed, is imported before),
completions per second and the process's peak RSS. CPU time is the steadier figure on a shared machine.
The parent then samples every trained policy and the SFT policy on the held-out prompts
(``--eval_samples`` completions each) with one sampler and one seed and scores them with the same
reward, so "held-out reward" is measured the same way for all. Every trainer runs once per seed in
``--seeds`` (x ``--repeats``, in a rotating order so that the machine's load falls on all alike); speed
is reported as the best and the median run, held-out reward as the mean +- standard error over seeds.
The table ends with the ratios ours / TRL. Results also go to WORK_DIR/results.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classic_rl.safe_io import dumps_strict

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "rlhf" / "data"
TRAINERS = ("ours-grpo", "trl-grpo", "ours-rloo", "trl-rloo")
PAIRS = (("ours-grpo", "trl-grpo"), ("ours-rloo", "trl-rloo"))


@dataclass
class BenchConfig:
    work_dir: str = "runs/bench_rlhf_grpo"
    steps: int = 32
    prompts_per_step: int = 16
    num_generations: int = 4
    max_completion_length: int = 32
    learning_rate: float = 1e-3
    beta: float = 0.04
    epsilon: float = 0.2
    temperature: float = 1.0
    repeats: int = 1
    eval_prompts: int = 200
    eval_samples: int = 4

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.num_generations


# ============================================================================ children (one per run)
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _prompts(path: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]


def _run_ours(spec: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    from rlhf.methods.grpo import GRPOTrainer
    from rlhf.methods.grpo_config import GRPOConfig
    from rlhf.methods.rloo import RLOOTrainer
    from rlhf.methods.rloo_config import RLOOConfig

    grpo = spec["trainer"] == "ours-grpo"
    config_class, trainer_class = (GRPOConfig, GRPOTrainer) if grpo else (RLOOConfig, RLOOTrainer)
    batch = spec["prompts_per_step"] * spec["num_generations"]
    config = config_class(
        output_dir=str(out_dir), model_name_or_path=spec["policy"], reward_fn="rlhf.tasks.verifiable:reward",
        dataset_name=str(DATA / "reverse_prompts.jsonl"), eval_dataset_name=str(DATA / "reverse_prompts_eval.jsonl"),
        num_eval_prompts=1, num_generations=spec["num_generations"], per_device_train_batch_size=batch,
        local_rollout_forward_batch_size=batch, max_completion_length=spec["max_completion_length"],
        max_steps=spec["steps"], learning_rate=spec["learning_rate"], beta=spec["beta"], epsilon=spec["epsilon"],
        temperature=spec["temperature"], seed=spec["seed"], use_cpu=True, bf16=False, fp16=False,
        num_sample_generations=0, disable_tqdm=True, report_to="none",
    )
    trainer = trainer_class(config)
    wall, cpu = time.perf_counter(), time.process_time()
    rewards = []
    for _ in range(trainer.num_updates):
        metrics, _ = trainer.step(*trainer.next_batch())
        rewards.append(metrics["reward"])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    trainer.policy.save_pretrained(out_dir / "policy")
    trainer.tokenizer.save_pretrained(out_dir / "policy")
    return {"completions": trainer.episode, "wall_s": wall, "cpu_s": cpu, "train_rewards": rewards}


def _run_trl(spec: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from rlhf.tasks import verifiable

    def reward(prompts, completions, **_):
        return verifiable.reward(prompts, completions)

    grpo = spec["trainer"] == "trl-grpo"
    config_class, trainer_class = (GRPOConfig, GRPOTrainer) if grpo else (RLOOConfig, RLOOTrainer)
    batch = spec["prompts_per_step"] * spec["num_generations"]
    args = config_class(
        output_dir=str(out_dir / "trainer"), per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        steps_per_generation=1, num_generations=spec["num_generations"], num_iterations=1, max_steps=spec["steps"],
        max_completion_length=spec["max_completion_length"], temperature=spec["temperature"], top_k=0, top_p=1.0,
        learning_rate=spec["learning_rate"], lr_scheduler_type="linear", beta=spec["beta"], epsilon=spec["epsilon"],
        seed=spec["seed"], use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True, disable_dropout=True, log_completions=False,
        dataloader_num_workers=0,
    )
    tokenizer = AutoTokenizer.from_pretrained(spec["policy"], padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(spec["policy"])
    class LoopTimer(TrainerCallback):
        """The training loop alone: from after the Trainer's set-up (prepare, optimizer) to its end."""

        def on_train_begin(self, *_, **__):
            self.wall, self.cpu = time.perf_counter(), time.process_time()

        def on_train_end(self, *_, **__):
            self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    timer = LoopTimer()
    trainer = trainer_class(model=model, reward_funcs=reward, args=args, processing_class=tokenizer, callbacks=[timer],
                            train_dataset=Dataset.from_dict({"prompt": _prompts(DATA / "reverse_prompts.jsonl")}))
    trainer.train()
    trainer.model.save_pretrained(out_dir / "policy")
    tokenizer.save_pretrained(out_dir / "policy")
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {"completions": spec["steps"] * batch, "wall_s": timer.wall, "cpu_s": timer.cpu, "train_rewards": rewards}


def child_main(spec_path: str, result_path: str) -> None:
    import torch

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)
    try:  # a one-off import (about a second) that both trainers would otherwise pay inside their first step
        import deepspeed  # noqa: F401
    except ImportError:
        pass
    torch.manual_seed(spec["seed"])
    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    result = (_run_ours if spec["trainer"].startswith("ours") else _run_trl)(spec, out_dir)
    result.update(peak_memory_mb=_peak_rss_mb(), policy=str(out_dir / "policy"))
    Path(result_path).write_text(dumps_strict(result))


# ============================================================================ parent
def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
            "PYTHONWARNINGS": "ignore", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def prepare_policy(work: Path) -> Path:
    """The SFT warm start of configs/rlhf/grpo_tiny.yaml (cached)."""
    import yaml

    from rlhf.steps.sft import main as sft_main
    from rlhf.steps.tiny_model import main as tiny_main

    recipe = yaml.safe_load((REPO / "configs" / "rlhf" / "grpo_tiny.yaml").read_text())
    base, sft = work / "assets" / "tiny", work / "assets" / "sft"
    if not (base / "config.json").exists():
        tiny_main(["--output_dir", str(base), *[f"--{k}={v}" for k, v in recipe["tiny_model"].items()]])
    if not (sft / "summary.json").exists():
        flags = {**recipe["sft"], "dataset_name": str(DATA / "reverse_sft.jsonl"), "seed": 0, "report_to": "none"}
        sft_main(["--model_name_or_path", str(base), "--output_dir", str(sft), *[f"--{k}={v}" for k, v in flags.items()]])
    return sft


def run_child(cfg: BenchConfig, trainer: str, seed: int, policy: Path, run_dir: Path) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {**dataclasses.asdict(cfg), "trainer": trainer, "seed": seed, "policy": str(policy), "out_dir": str(run_dir)}
    spec_path, result_path = run_dir / "spec.json", run_dir / "result.json"
    spec_path.write_text(dumps_strict(spec, indent=1))
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "_child", str(spec_path), str(result_path)]
    proc = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True)
    (run_dir / "log.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{trainer} failed (exit {proc.returncode}); last lines:\n{proc.stderr[-3000:]}")
    return json.loads(result_path.read_text())


def held_out_reward(policy: Path, cfg: BenchConfig) -> float:
    """Mean exact-match reward of the policy's samples on held-out prompts (``eval_samples`` each): one
    sampler, one seed for all."""
    import torch

    from rlhf.common.models import load_causal_lm, load_tokenizer
    from rlhf.rl.forward import left_pad
    from rlhf.rl.sampler import sample_responses, truncate_after_stop
    from rlhf.tasks import verifiable

    tokenizer = load_tokenizer(str(policy))
    model = load_causal_lm(str(policy), tokenizer=tokenizer).eval()
    prompts = [p for p in _prompts(DATA / "reverse_prompts_eval.jsonl")[: cfg.eval_prompts] for _ in range(cfg.eval_samples)]
    ids, mask = left_pad(tokenizer(prompts)["input_ids"], tokenizer.pad_token_id)
    sampled = sample_responses(model, ids, mask, max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature,
                               pad_token_id=tokenizer.pad_token_id, stop_token_ids=(tokenizer.eos_token_id,),
                               generator=torch.Generator().manual_seed(12345))
    cut = truncate_after_stop(sampled.responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(cut.responses.masked_fill(~cut.mask, tokenizer.pad_token_id), skip_special_tokens=True)
    return statistics.mean(verifiable.reward(prompts, texts))


def _mean_se(values: list[float]) -> tuple[float, float]:
    mean = statistics.mean(values)
    return mean, (statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan"))


def summarize(runs: list[dict[str, Any]]) -> dict[str, float]:
    """One trainer's runs: speed (best and median), memory (median), held-out reward over seeds (mean, SE)."""
    by_seed: dict[int, float] = {}
    for r in runs:
        by_seed.setdefault(r["seed"], r["held_out_reward"])  # repeats of a seed train the same policy
    reward, reward_se = _mean_se(list(by_seed.values()))
    return {
        "completions_per_s": max(r["completions_per_s"] for r in runs),
        "completions_per_s_median": statistics.median(r["completions_per_s"] for r in runs),
        "completions_per_cpu_s": statistics.median(r["completions_per_cpu_s"] for r in runs),
        "wall_s": min(r["wall_s"] for r in runs),
        "peak_memory_mb": statistics.median(r["peak_memory_mb"] for r in runs),
        "held_out_reward": reward, "held_out_reward_se": reward_se, "runs": len(runs), "seeds": len(by_seed),
    }


def table(cfg: BenchConfig, seeds: list[int], rows: dict[str, dict[str, float]], before: float,
          runs: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        f"{cfg.steps} steps x {cfg.completions_per_step} completions ({cfg.prompts_per_step} prompts x "
        f"{cfg.num_generations}), <= {cfg.max_completion_length} tokens, lr {cfg.learning_rate}, beta {cfg.beta}, "
        f"T {cfg.temperature}, 1 iteration, 1 CPU thread; seeds {' '.join(map(str, seeds))} x {cfg.repeats} "
        f"repeat(s); held-out exact match ({cfg.eval_prompts} prompts x {cfg.eval_samples} samples) of the SFT "
        f"policy {before:.3f}",
        "",
        "| trainer | completions/s best | median | completions / CPU-s | peak RSS MiB | held-out reward (mean +- SE) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['completions_per_s']:.0f} | {r['completions_per_s_median']:.0f} | "
                     f"{r['completions_per_cpu_s']:.0f} | {r['peak_memory_mb']:.0f} | "
                     f"{r['held_out_reward']:.3f} +- {r['held_out_reward_se']:.3f} |")
    lines += ["", "| ours / TRL | completions/s best | median | per CPU-s | peak RSS | held-out reward, ours - TRL "
              "(paired by seed, mean +- SE) |", "|---|---:|---:|---:|---:|---:|"]
    for ours, peer in PAIRS:
        if ours in rows and peer in rows:
            a, b = rows[ours], rows[peer]
            mine = {r["seed"]: r["held_out_reward"] for r in runs[ours]}
            theirs = {r["seed"]: r["held_out_reward"] for r in runs[peer]}
            diff, diff_se = _mean_se([mine[k] - theirs[k] for k in sorted(mine) if k in theirs])
            lines.append(
                f"| {ours} / {peer} | {a['completions_per_s'] / b['completions_per_s']:.2f}x | "
                f"{a['completions_per_s_median'] / b['completions_per_s_median']:.2f}x | "
                f"{a['completions_per_cpu_s'] / b['completions_per_cpu_s']:.2f}x | "
                f"{a['peak_memory_mb'] / b['peak_memory_mb']:.2f}x | {diff:+.3f} +- {diff_se:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(BenchConfig):
        parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one training run per trainer and seed")
    parser.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=TRAINERS)
    args = vars(parser.parse_args(argv))
    trainers, seeds = args.pop("trainers"), args.pop("seeds")
    cfg = BenchConfig(**args)
    os.environ.update({k: v for k, v in _env().items() if k not in os.environ or k == "OMP_NUM_THREADS"})
    import torch

    torch.set_num_threads(1)
    work = Path(cfg.work_dir).resolve()
    policy = prepare_policy(work)
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in trainers}
    loads = []
    rounds = [(seed, repeat) for seed in seeds for repeat in range(cfg.repeats)]
    for k, (seed, repeat) in enumerate(rounds):
        order = trainers[k % len(trainers):] + trainers[: k % len(trainers)]
        for name in order:
            loads.append(os.getloadavg()[0])
            result = run_child(cfg, name, seed, policy, work / "runs" / f"{name}-seed{seed}-{repeat}")
            result["seed"] = seed
            result["completions_per_s"] = result["completions"] / result["wall_s"]
            result["completions_per_cpu_s"] = result["completions"] / result["cpu_s"]
            result["held_out_reward"] = held_out_reward(Path(result["policy"]), cfg)
            print(f"[bench] {name} seed {seed} #{repeat + 1}: {result['completions_per_s']:.0f} completions/s "
                  f"({result['completions_per_cpu_s']:.0f} per CPU-s), {result['wall_s']:.2f} s, "
                  f"peak {result['peak_memory_mb']:.0f} MiB, held-out {result['held_out_reward']:.3f}, "
                  f"load {loads[-1]:.1f}", flush=True)
            runs[name].append(result)
    before = held_out_reward(policy, cfg)
    rows = {name: summarize(rs) for name, rs in runs.items()}
    text = table(cfg, seeds, rows, before, runs)
    print("\n" + text)
    report = {"config": dataclasses.asdict(cfg), "seeds": seeds, "held_out_before": before, "rows": rows, "runs": runs,
              "table": text, "loadavg_at_starts": loads, "torch": torch.__version__}
    (work / "results.json").write_text(dumps_strict(report, indent=1))
    print(f"\n[bench] load average at the runs' starts {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs; "
          f"results in {work / 'results.json'}")
    return report


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "_child":
        child_main(sys.argv[2], sys.argv[3])
    else:
        main()
