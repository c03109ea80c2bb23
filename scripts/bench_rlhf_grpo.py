"""Side-by-side benchmark of the critic-free methods: our `rlhf grpo` / `rlhf rloo` against TRL's
GRPOTrainer / RLOOTrainer (this environment's TRL; 1.16 when written), on the verifiable task.

    python scripts/bench_rlhf_grpo.py [--steps 32] [--repeats 2] [--work_dir runs/bench_rlhf_grpo]

Every trainer starts from the same SFT policy (the recipe of configs/rlhf/grpo_tiny.yaml: the tiny model
SFT'd on the noisy digit-reversal demonstrations; built once and cached in WORK_DIR/assets), samples the
same prompts' groups (``--prompts_per_step`` prompts x ``--num_generations`` completions per step, up to
``--max_completion_length`` tokens, cut at EOS), is rewarded by the same Python function
(``rlhf.verifiable:reward``), and takes one optimizer step per generation batch (one iteration) with the
same learning rate, linear decay, ``beta``, ``epsilon``, temperature, loss (GRPO: TRL's default "dapo"
with group-scaled rewards; RLOO: TRL's sequence-level ratio) and seed. Each run is its own child
process with one torch thread; it reports the wall time of its training loop alone (models loaded
before), completions per second and the process's peak RSS. The parent then samples every trained
policy and the SFT policy on the held-out prompts with one sampler and one seed and scores them with the
same reward, so "held-out reward" is measured the same way for all. The table ends with the ratios ours /
TRL. Results also go to WORK_DIR/results.json.
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
    seed: int = 0
    repeats: int = 1
    eval_prompts: int = 200

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.num_generations


# ============================================================================ children (one per run)
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _prompts(path: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]


def _run_ours(spec: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    from rlhf.grpo import GRPOTrainer
    from rlhf.grpo_config import GRPOConfig
    from rlhf.rloo import RLOOTrainer
    from rlhf.rloo_config import RLOOConfig

    grpo = spec["trainer"] == "ours-grpo"
    config_class, trainer_class = (GRPOConfig, GRPOTrainer) if grpo else (RLOOConfig, RLOOTrainer)
    batch = spec["prompts_per_step"] * spec["num_generations"]
    config = config_class(
        output_dir=str(out_dir), model_name_or_path=spec["policy"], reward_fn="rlhf.verifiable:reward",
        dataset_name=str(DATA / "reverse_prompts.jsonl"), eval_dataset_name=str(DATA / "reverse_prompts_eval.jsonl"),
        num_eval_prompts=1, num_generations=spec["num_generations"], per_device_train_batch_size=batch,
        local_rollout_forward_batch_size=batch, max_completion_length=spec["max_completion_length"],
        max_steps=spec["steps"], learning_rate=spec["learning_rate"], beta=spec["beta"], epsilon=spec["epsilon"],
        temperature=spec["temperature"], seed=spec["seed"], use_cpu=True, bf16=False, fp16=False,
        num_sample_generations=0, disable_tqdm=True, report_to="none",
    )
    trainer = trainer_class(config)
    wall = time.perf_counter()
    rewards = []
    for _ in range(trainer.num_updates):
        metrics, _ = trainer.step(*trainer.next_batch())
        rewards.append(metrics["reward"])
    wall = time.perf_counter() - wall
    trainer.policy.save_pretrained(out_dir / "policy")
    trainer.tokenizer.save_pretrained(out_dir / "policy")
    return {"completions": trainer.episode, "wall_s": wall, "train_rewards": rewards}


def _run_trl(spec: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from rlhf import verifiable

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
    trainer = trainer_class(model=model, reward_funcs=reward, args=args, processing_class=tokenizer,
                            train_dataset=Dataset.from_dict({"prompt": _prompts(DATA / "reverse_prompts.jsonl")}))
    wall = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - wall
    trainer.model.save_pretrained(out_dir / "policy")
    tokenizer.save_pretrained(out_dir / "policy")
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {"completions": spec["steps"] * batch, "wall_s": wall, "train_rewards": rewards}


def child_main(spec_path: str, result_path: str) -> None:
    import torch

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)
    torch.manual_seed(spec["seed"])
    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    result = (_run_ours if spec["trainer"].startswith("ours") else _run_trl)(spec, out_dir)
    result.update(peak_memory_mb=_peak_rss_mb(), policy=str(out_dir / "policy"))
    Path(result_path).write_text(json.dumps(result))


# ============================================================================ parent
def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
            "PYTHONWARNINGS": "ignore", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def prepare_policy(work: Path) -> Path:
    """The SFT warm start of configs/rlhf/grpo_tiny.yaml (cached)."""
    import yaml

    from rlhf.sft import main as sft_main
    from rlhf.tiny_model import main as tiny_main

    recipe = yaml.safe_load((REPO / "configs" / "rlhf" / "grpo_tiny.yaml").read_text())
    base, sft = work / "assets" / "tiny", work / "assets" / "sft"
    if not (base / "config.json").exists():
        tiny_main(["--output_dir", str(base), *[f"--{k}={v}" for k, v in recipe["tiny_model"].items()]])
    if not (sft / "summary.json").exists():
        flags = {**recipe["sft"], "dataset_name": str(DATA / "reverse_sft.jsonl"), "seed": 0, "report_to": "none"}
        sft_main(["--model_name_or_path", str(base), "--output_dir", str(sft), *[f"--{k}={v}" for k, v in flags.items()]])
    return sft


def run_child(cfg: BenchConfig, trainer: str, policy: Path, run_dir: Path) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {**dataclasses.asdict(cfg), "trainer": trainer, "policy": str(policy), "out_dir": str(run_dir)}
    spec_path, result_path = run_dir / "spec.json", run_dir / "result.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "_child", str(spec_path), str(result_path)]
    proc = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True)
    (run_dir / "log.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{trainer} failed (exit {proc.returncode}); last lines:\n{proc.stderr[-3000:]}")
    return json.loads(result_path.read_text())


def held_out_reward(policy: Path, cfg: BenchConfig) -> float:
    """Mean exact-match reward of the policy's samples on held-out prompts: one sampler, one seed for all."""
    import torch

    from rlhf import verifiable
    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.rollout import left_pad, sample_responses, truncate_after_stop

    tokenizer = load_tokenizer(str(policy))
    model = load_causal_lm(str(policy), tokenizer=tokenizer).eval()
    prompts = _prompts(DATA / "reverse_prompts_eval.jsonl")[: cfg.eval_prompts]
    ids, mask = left_pad(tokenizer(prompts)["input_ids"], tokenizer.pad_token_id)
    sampled = sample_responses(model, ids, mask, max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature,
                               pad_token_id=tokenizer.pad_token_id, stop_token_ids=(tokenizer.eos_token_id,),
                               generator=torch.Generator().manual_seed(cfg.seed + 12345))
    cut = truncate_after_stop(sampled.responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(cut.responses.masked_fill(~cut.mask, tokenizer.pad_token_id), skip_special_tokens=True)
    return statistics.mean(verifiable.reward(prompts, texts))


def table(cfg: BenchConfig, rows: dict[str, dict[str, float]], before: float) -> str:
    lines = [
        f"{cfg.steps} steps x {cfg.completions_per_step} completions ({cfg.prompts_per_step} prompts x "
        f"{cfg.num_generations}), <= {cfg.max_completion_length} tokens, lr {cfg.learning_rate}, beta {cfg.beta}, "
        f"T {cfg.temperature}, 1 iteration, 1 CPU thread, repeats {cfg.repeats} (speed: best; memory, reward: median); "
        f"held-out exact match of the SFT policy {before:.3f}",
        "",
        "| trainer | completions/s | train s | peak RSS MiB | held-out reward |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['completions_per_s']:.0f} | {r['wall_s']:.2f} | {r['peak_memory_mb']:.0f} | "
                     f"{r['held_out_reward']:.3f} |")
    lines += ["", "| ours / TRL | completions/s | peak RSS | held-out reward gain |", "|---|---:|---:|---:|"]
    for ours, peer in PAIRS:
        if ours in rows and peer in rows:
            a, b = rows[ours], rows[peer]
            gain_b = b["held_out_reward"] - before
            gain = f"{(a['held_out_reward'] - before) / gain_b:.2f}x" if gain_b > 0 else "n/a (TRL gained <= 0)"
            lines.append(f"| {ours} / {peer} | {a['completions_per_s'] / b['completions_per_s']:.2f}x | "
                         f"{a['peak_memory_mb'] / b['peak_memory_mb']:.2f}x | {gain} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(BenchConfig):
        parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    parser.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=TRAINERS)
    args = vars(parser.parse_args(argv))
    trainers = args.pop("trainers")
    cfg = BenchConfig(**args)
    os.environ.update({k: v for k, v in _env().items() if k not in os.environ or k == "OMP_NUM_THREADS"})
    import torch

    torch.set_num_threads(1)
    work = Path(cfg.work_dir).resolve()
    policy = prepare_policy(work)
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in trainers}
    for repeat in range(cfg.repeats):
        order = trainers[repeat % len(trainers):] + trainers[: repeat % len(trainers)]
        for name in order:
            result = run_child(cfg, name, policy, work / "runs" / f"{name}-{repeat}")
            result["completions_per_s"] = result["completions"] / result["wall_s"]
            result["held_out_reward"] = held_out_reward(Path(result["policy"]), cfg)
            print(f"[bench] {name} #{repeat + 1}: {result['completions_per_s']:.0f} completions/s, "
                  f"{result['wall_s']:.2f} s, peak {result['peak_memory_mb']:.0f} MiB, "
                  f"held-out {result['held_out_reward']:.3f}", flush=True)
            runs[name].append(result)
    before = held_out_reward(policy, cfg)
    rows = {name: {
        "completions_per_s": max(r["completions_per_s"] for r in rs), "wall_s": min(r["wall_s"] for r in rs),
        "peak_memory_mb": statistics.median(r["peak_memory_mb"] for r in rs),
        "held_out_reward": statistics.median(r["held_out_reward"] for r in rs),
    } for name, rs in runs.items()}
    text = table(cfg, rows, before)
    print("\n" + text)
    load = os.getloadavg()
    report = {"config": dataclasses.asdict(cfg), "held_out_before": before, "rows": rows, "runs": runs, "table": text,
              "loadavg": load, "torch": torch.__version__}
    (work / "results.json").write_text(json.dumps(report, indent=1))
    print(f"\n[bench] load average {load[0]:.1f} on {os.cpu_count()} CPUs; results in {work / 'results.json'}")
    return report


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "_child":
        child_main(sys.argv[2], sys.argv[3])
    else:
        main()
