"""Side-by-side RLHF benchmark: our `rlhf ppo` against TRL's RLOOTrainer and TRL's last PPOTrainer.

    python scripts/bench_rlhf.py                                   # tiny model on the CPU (a few minutes)
    python scripts/bench_rlhf.py --model gpu-150m --device cuda    # ~150M-parameter random-init Llama on a GPU

All trainers start from the same policy, score with the same reward (the same reward model, read the
same way, minus the same missing-EOS penalty), and run the same number of updates on the same number of
episodes per update (prompt-response pairs), the same response length, temperature, learning rate and KL
coefficient, and the same number of optimizer passes over each rollout batch:

- ``ours``        -- ``rlhf.methods.ppo.PPOTrainer`` (critic initialised from the reward model, as in `rlhf ppo`).
- ``ours-vhead``  -- the same with ``--value_head_on_policy`` (no separate critic network).
- ``trl-rloo``    -- TRL's ``RLOOTrainer`` (this environment's TRL; 1.16 when written), ``num_iterations``
  = our PPO epochs, ``num_generations`` responses per prompt (RLOO needs groups).
- ``trl-ppo``     -- TRL 1.12's ``trl.experimental.ppo.PPOTrainer`` (the last TRL release with PPO), run by
  the Python of a separate virtual environment (``--trl112_python``; see docs/benchmarks.md to create it).

Each trainer runs in its own child process (one after another, one torch thread each on the CPU), which
reports the wall and CPU time of its training loop alone (model loading excluded), the generated response
tokens (up to and including EOS), and its peak memory: the process's peak RSS on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU; "of which training" subtracts the memory in use just
before the training loop (libraries imported, models loaded), which differs between environments (the
TRL 1.12 environment has no peft or scipy, ~45 MiB less RSS after imports). The parent then samples every trained policy and the
initial policy on the held-out prompts with one sampler and one seed and scores them with the reward,
so "reward gained" is measured the same way for all. The table ends with the ratios ours / peer.
Results also go to ``WORK_DIR/results.json``.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classic_rl.safe_io import dumps_strict

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "rlhf" / "data"
TRAINERS = ("ours", "ours-vhead", "trl-rloo", "trl-ppo")
MODELS = ("tiny", "gpu-150m")


@dataclass
class BenchConfig:
    """What every trainer is given (flags of this script)."""

    work_dir: str = "runs/bench_rlhf"
    """Models, per-run outputs and results.json go here (models are built once and reused)."""
    model: str = "tiny"
    """'tiny': the shipped tiny model, SFT and reward model trained here on the review task (CPU);
    'gpu-150m': a ~150M-parameter random-init Llama policy and reward model (throughput only)."""
    device: str = "cpu"
    """'cpu' or 'cuda'."""
    trainers: list[str] = field(default_factory=lambda: list(TRAINERS))
    updates: int = 8
    """Rollout + optimisation rounds per trainer."""
    batch_size: int = 64
    """Episodes (prompt-response pairs) per update."""
    response_length: int = 32
    epochs: int = 4
    """Optimizer passes over each rollout batch (PPO epochs; RLOO's num_iterations), one minibatch each."""
    num_generations: int = 4
    """RLOO's responses per prompt (batch_size / num_generations distinct prompts per update)."""
    temperature: float = 0.7
    learning_rate: float = 3e-4
    kl_coef: float = 0.05
    missing_eos_penalty: float = 1.0
    seed: int = 0
    repeats: int = 1
    """Runs per trainer (the order rotates between repeats); the table shows the best throughput and the
    median memory."""
    eval_samples_per_prompt: int = 2
    trl112_python: str = str(REPO / ".venv-trl112" / "bin" / "python")


# ============================================================================ children (one per trainer run)
def _current_memory_mb(device: str) -> float:
    """Memory in use now: the process's RSS on the CPU, allocated CUDA memory on a GPU."""
    if device == "cuda":
        import torch

        return torch.cuda.memory_allocated() / 2**20
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


def _peak_memory_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _count_response_tokens(responses: Any, eos_id: int, pad_id: int) -> int:
    """Real tokens of ``(B, R)`` sampled responses: up to and including the first EOS, else the non-pad ones."""
    import torch

    is_eos = responses == eos_id
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, (responses != pad_id).sum(1))
    return int(first.sum())


def _setup_torch(spec: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(spec["seed"])


def _run_ours(spec: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    import torch

    from rlhf.methods.ppo import PPOTrainer
    from rlhf.methods.ppo_config import PPOConfig

    cuda = spec["device"] == "cuda"
    config = PPOConfig(
        output_dir=str(out_dir), model_name_or_path=spec["policy"], reward_model_path=spec["reward_model"],
        dataset_name=spec["prompts"], eval_dataset_name=spec["eval_prompts"],
        value_head_on_policy=spec["trainer"] == "ours-vhead",
        per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1, num_mini_batches=1,
        num_ppo_epochs=spec["epochs"], local_rollout_forward_batch_size=spec["batch_size"],
        total_episodes=spec["updates"] * spec["batch_size"], response_length=spec["response_length"],
        temperature=spec["temperature"], learning_rate=spec["learning_rate"], kl_coef=spec["kl_coef"],
        missing_eos_penalty=spec["missing_eos_penalty"], seed=spec["seed"], use_cpu=not cuda, bf16=cuda, fp16=False,
        gradient_checkpointing=False, num_sample_generations=0, disable_tqdm=True,
    )
    trainer = PPOTrainer(config)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before_mb = _current_memory_mb(spec["device"])
    tokens, scores = 0, []
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(trainer.num_updates):
        metrics, batch = trainer.step(*trainer.next_batch())
        tokens += int(batch.mask.sum())
        scores.append(metrics["objective/raw_scores"])
    if cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    trainer.policy.save_pretrained(out_dir / "policy")
    trainer.tokenizer.save_pretrained(out_dir / "policy")
    return {"updates": trainer.num_updates, "episodes": trainer.episode, "tokens": tokens, "wall_s": wall, "cpu_s": cpu,
            "train_scores": scores, "memory_before_mb": before_mb}


def _run_trl_rloo(spec: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import RLOOConfig, RLOOTrainer

    from rlhf.common.models import load_reward_model
    from rlhf.rl.rewards import RewardModelScorer

    cuda = spec["device"] == "cuda"
    tokenizer = AutoTokenizer.from_pretrained(spec["policy"], padding_side="left")
    reward_tokenizer = AutoTokenizer.from_pretrained(spec["reward_model"])
    device = "cuda" if cuda else "cpu"
    reward_model = load_reward_model(spec["reward_model"], tokenizer=reward_tokenizer).to(device).eval()
    if cuda:
        reward_model.to(torch.bfloat16)
    scorer = RewardModelScorer(reward_model, reward_tokenizer, spec["batch_size"])
    eos_id, penalty = tokenizer.eos_token_id, spec["missing_eos_penalty"]

    def reward_model_score(prompts, completions, completion_ids, **_):
        """Our reward: the reward model on prompt + completion + EOS, minus the penalty without EOS."""
        with torch.no_grad():
            scores = scorer(prompts, completions, device=device).tolist()
        return [s - (penalty if eos_id not in ids else 0.0) for s, ids in zip(scores, completion_ids)]

    counter = {"tokens": 0, "scores": []}

    class CountingRLOO(RLOOTrainer):
        def _generate(self, prompts):
            prompt_ids, completion_ids, completions = super()._generate(prompts)
            if self.model.training:
                counter["tokens"] += sum(len(ids) for ids in completion_ids)
            return prompt_ids, completion_ids, completions

    prompts = [json.loads(line)["prompt"] for line in Path(spec["prompts"]).read_text().splitlines() if line.strip()]
    steps = spec["updates"] * spec["epochs"]
    args = RLOOConfig(
        output_dir=str(out_dir / "trainer"), per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1, steps_per_generation=1, num_generations=spec["num_generations"],
        num_iterations=spec["epochs"], max_steps=steps, max_completion_length=spec["response_length"],
        temperature=spec["temperature"], top_k=0, top_p=1.0, learning_rate=spec["learning_rate"],
        lr_scheduler_type="linear", beta=spec["kl_coef"], seed=spec["seed"], use_cpu=not cuda, bf16=cuda,
        fp16=False, gradient_checkpointing=False, report_to="none", save_strategy="no", logging_steps=spec["epochs"],
        disable_tqdm=True, disable_dropout=True, log_completions=False, dataloader_num_workers=0,
    )
    model = AutoModelForCausalLM.from_pretrained(spec["policy"])
    trainer = CountingRLOO(model=model, reward_funcs=reward_model_score, args=args,
                           train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before_mb = _current_memory_mb(spec["device"])
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    if cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    counter["scores"] = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    trainer.model.save_pretrained(out_dir / "policy")
    tokenizer.save_pretrained(out_dir / "policy")
    return {"updates": spec["updates"], "episodes": spec["updates"] * spec["batch_size"], "tokens": counter["tokens"],
            "wall_s": wall, "cpu_s": cpu, "train_scores": counter["scores"], "memory_before_mb": before_mb}


def _run_trl_ppo(spec: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """TRL 1.12's PPOTrainer; runs in the TRL 1.12 environment, so it imports nothing from this repo."""
    import torch
    import trl
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    cuda = spec["device"] == "cuda"
    tokenizer = AutoTokenizer.from_pretrained(spec["policy"], padding_side="left")
    counter = {"tokens": 0}
    generate = ppo_module.batch_generation

    def counting_generation(model, queries, *args, **kwargs):
        query_responses, logits = generate(model, queries, *args, **kwargs)
        counter["tokens"] += _count_response_tokens(query_responses[:, queries.shape[1]:], tokenizer.eos_token_id,
                                                    tokenizer.pad_token_id)
        return query_responses, logits

    ppo_module.batch_generation = counting_generation

    def prompts_of(path: str) -> Dataset:
        texts = [json.loads(line)["prompt"] for line in Path(path).read_text().splitlines() if line.strip()]
        return Dataset.from_dict({"input_ids": tokenizer(texts)["input_ids"]})

    args = PPOConfig(
        output_dir=str(out_dir / "trainer"), per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1, num_mini_batches=1, num_ppo_epochs=spec["epochs"],
        local_rollout_forward_batch_size=spec["batch_size"], total_episodes=spec["updates"] * spec["batch_size"],
        response_length=spec["response_length"], temperature=spec["temperature"], learning_rate=spec["learning_rate"],
        lr_scheduler_type="linear", kl_coef=spec["kl_coef"], missing_eos_penalty=spec["missing_eos_penalty"],
        stop_token="eos", seed=spec["seed"], use_cpu=not cuda, bf16=cuda, fp16=False, gradient_checkpointing=False,
        report_to="none", save_strategy="no", logging_steps=1, num_sample_generations=0, disable_tqdm=True,
    )
    policy = AutoModelForCausalLM.from_pretrained(spec["policy"])
    ref = AutoModelForCausalLM.from_pretrained(spec["policy"])
    value = AutoModelForSequenceClassification.from_pretrained(spec["reward_model"], num_labels=1)
    reward = AutoModelForSequenceClassification.from_pretrained(spec["reward_model"], num_labels=1)
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward,
                         value_model=value, train_dataset=prompts_of(spec["prompts"]),
                         eval_dataset=prompts_of(spec["eval_prompts"]))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before_mb = _current_memory_mb(spec["device"])
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    if cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    scores = [h["objective/scores"] for h in trainer.state.log_history if "objective/scores" in h]
    trainer.accelerator.unwrap_model(trainer.model).policy.save_pretrained(out_dir / "policy")
    tokenizer.save_pretrained(out_dir / "policy")
    return {"updates": args.num_total_batches, "episodes": trainer.state.episode, "tokens": counter["tokens"],
            "wall_s": wall, "cpu_s": cpu, "train_scores": scores, "trl_version": trl.__version__,
            "memory_before_mb": before_mb}


RUNNERS = {"ours": _run_ours, "ours-vhead": _run_ours, "trl-rloo": _run_trl_rloo, "trl-ppo": _run_trl_ppo}


def child_main(spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    _setup_torch(spec)
    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    result = RUNNERS[spec["trainer"]](spec, out_dir)
    result["peak_memory_mb"] = _peak_memory_mb(spec["device"])
    result["policy"] = str(out_dir / "policy")
    Path(result_path).write_text(dumps_strict(result))


# ============================================================================ parent: models, runs, table
def _quiet_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}


def prepare_tiny(work: Path) -> tuple[Path, Path]:
    """The shipped tiny model, then a short SFT run and a K-wise reward model on the review task (cached)."""
    from rlhf.steps.reward import main as reward_main
    from rlhf.steps.sft import main as sft_main
    from rlhf.steps.tiny_model import main as tiny_main

    base, sft, rm = work / "assets" / "tiny", work / "assets" / "sft", work / "assets" / "reward"
    quiet = ["--disable_tqdm", "true", "--report_to", "none", "--seed", "0"]
    if not (base / "config.json").exists():
        tiny_main(["--output_dir", str(base)])
    if not (sft / "summary.json").exists():
        sft_main(["--model_name_or_path", str(base), "--dataset_name", str(DATA / "sft.jsonl"),
                  "--eval_dataset_name", str(DATA / "sft_eval.jsonl"), "--output_dir", str(sft), "--max_steps", "100",
                  "--per_device_train_batch_size", "32", "--learning_rate", "3e-3", "--lr_scheduler_type", "cosine",
                  "--warmup_steps", "5", "--logging_steps", "50", *quiet])
    if not (rm / "summary.json").exists():
        reward_main(["--model_name_or_path", str(sft), "--dataset_name", str(DATA / "rankings.jsonl"),
                     "--eval_dataset_name", str(DATA / "pairs_eval.jsonl"),
                     "--calibration_dataset", str(DATA / "prompts.jsonl"), "--calibration_num_samples", "64",
                     "--output_dir", str(rm), "--max_steps", "60", "--per_device_train_batch_size", "16",
                     "--learning_rate", "1e-3", "--lr_scheduler_type", "cosine", "--warmup_steps", "3",
                     "--logging_steps", "50", *quiet])
    return sft, rm


def prepare_gpu_150m(work: Path) -> tuple[Path, Path]:
    """A ~150M-parameter random-init Llama policy and reward model with the tiny tokenizer (cached)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from rlhf.steps.tiny_model import TinyModelConfig, build_tiny_model

    policy_dir, rm_dir = work / "assets" / "policy-150m", work / "assets" / "reward-150m"
    if (policy_dir / "config.json").exists() and (rm_dir / "config.json").exists():
        return policy_dir, rm_dir
    _, tokenizer = build_tiny_model(TinyModelConfig(output_dir=str(policy_dir)))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
        num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(policy_dir)
    config.num_labels = 1
    LlamaForSequenceClassification(config).save_pretrained(rm_dir)
    for path in (policy_dir, rm_dir):
        tokenizer.save_pretrained(path)
    return policy_dir, rm_dir


def run_child(cfg: BenchConfig, trainer: str, policy: Path, reward_model: Path, run_dir: Path) -> dict[str, Any]:
    spec = {**dataclasses.asdict(cfg), "trainer": trainer, "policy": str(policy), "reward_model": str(reward_model),
            "prompts": str(DATA / "prompts.jsonl"), "eval_prompts": str(DATA / "prompts_eval.jsonl"),
            "out_dir": str(run_dir)}
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = run_dir / "spec.json", run_dir / "result.json"
    spec_path.write_text(dumps_strict(spec, indent=1))
    result_path.unlink(missing_ok=True)
    python = cfg.trl112_python if trainer == "trl-ppo" else sys.executable
    env = _quiet_env()
    if trainer != "trl-ppo":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [python, str(Path(__file__).resolve()), "_child", str(spec_path), str(result_path)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    (run_dir / "log.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{trainer} failed (exit {proc.returncode}); last lines:\n{proc.stderr[-3000:]}")
    result = json.loads(result_path.read_text())
    result["process_s"] = time.perf_counter() - started
    return result


def evaluate_policy(policy: Path, reward_model: Path, cfg: BenchConfig) -> float:
    """Mean reward (reward model score minus the missing-EOS penalty) of the policy's samples on the held-out
    prompts: same sampler (KV cache, temperature), same seed, same prompts for every policy."""
    import torch

    from rlhf.common.models import load_causal_lm, load_reward_model, load_tokenizer
    from rlhf.rl.forward import left_pad
    from rlhf.rl.rewards import RewardModelScorer, apply_missing_stop_penalty
    from rlhf.rl.sampler import sample_responses, truncate_after_stop

    device = torch.device(cfg.device)
    tokenizer = load_tokenizer(str(policy))
    model = load_causal_lm(str(policy), tokenizer=tokenizer).to(device).eval()
    rm_tokenizer = load_tokenizer(str(reward_model))
    scorer = RewardModelScorer(load_reward_model(str(reward_model), tokenizer=rm_tokenizer).to(device).eval(), rm_tokenizer)
    prompts = [json.loads(line)["prompt"] for line in (DATA / "prompts_eval.jsonl").read_text().splitlines() if line.strip()]
    prompts = prompts * cfg.eval_samples_per_prompt
    generator = torch.Generator(device=device).manual_seed(cfg.seed + 12345)
    total = 0.0
    for start in range(0, len(prompts), cfg.batch_size):
        chunk = prompts[start : start + cfg.batch_size]
        ids, mask = left_pad(tokenizer(chunk)["input_ids"], tokenizer.pad_token_id, device)
        sampled = sample_responses(model, ids, mask, max_new_tokens=cfg.response_length, temperature=cfg.temperature,
                                   pad_token_id=tokenizer.pad_token_id, stop_token_ids=(tokenizer.eos_token_id,),
                                   generator=generator)
        cut = truncate_after_stop(sampled.responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(cut.responses.masked_fill(~cut.mask, tokenizer.pad_token_id), skip_special_tokens=True)
        with torch.no_grad():
            scores = apply_missing_stop_penalty(scorer(chunk, texts, device=device), cut.has_stop, cfg.missing_eos_penalty)
        total += float(scores.sum())
    return total / len(prompts)


THROUGHPUT = ("episodes_per_s", "tokens_per_s", "episodes_per_cpu_s", "reward_gain_per_s")


def _aggregate(results: list[dict[str, Any]], key: str) -> float:
    """Best of the repeats for throughputs (other jobs on a shared machine only ever slow a run down, as in
    `timeit`), the median otherwise."""
    values = [r[key] for r in results]
    return max(values) if key in THROUGHPUT else statistics.median(values)


def summarise(cfg: BenchConfig, runs: dict[str, list[dict[str, Any]]], before: float) -> dict[str, dict[str, float]]:
    rows = {}
    for name, results in runs.items():
        for r in results:
            r["episodes_per_s"] = r["episodes"] / r["wall_s"]
            r["tokens_per_s"] = r["tokens"] / r["wall_s"]
            r["episodes_per_cpu_s"] = r["episodes"] / r["cpu_s"]
            r["reward_gain"] = r["reward_after"] - before
            r["reward_gain_per_s"] = r["reward_gain"] / r["wall_s"]
            r["training_memory_mb"] = r["peak_memory_mb"] - r["memory_before_mb"]
        rows[name] = {k: _aggregate(results, k) for k in (
            "episodes_per_s", "tokens_per_s", "episodes_per_cpu_s", "peak_memory_mb", "training_memory_mb", "reward_after", "reward_gain",
            "reward_gain_per_s", "wall_s", "tokens")}
        rows[name]["wall_s"] = min(r["wall_s"] for r in results)
    return rows


def print_table(cfg: BenchConfig, rows: dict[str, dict[str, float]], before: float) -> str:
    memory = "peak GPU MiB" if cfg.device == "cuda" else "peak RSS MiB"
    lines = [
        f"model={cfg.model} device={cfg.device} updates={cfg.updates} episodes/update={cfg.batch_size} "
        f"response_length={cfg.response_length} epochs={cfg.epochs} repeats={cfg.repeats} "
        f"(throughput: best of the repeats; memory: median); reward of the initial policy {before:+.3f}",
        "",
        f"| trainer | episodes/s | tokens/s | episodes/CPU-s | {memory} | of which training | reward after | gain | gain/s "
        "| train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['episodes_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['episodes_per_cpu_s']:.1f} | "
            f"{r['peak_memory_mb']:.0f} | {r['training_memory_mb']:.0f} | {r['reward_after']:+.3f} | {r['reward_gain']:+.3f} | "
            f"{r['reward_gain_per_s']:+.4f} | {r['wall_s']:.1f} |"
        )
    lines += ["", "| ours / peer | episodes/s | tokens/s | episodes/CPU-s | peak memory | training memory | gain/s |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for ours in (n for n in ("ours", "ours-vhead") if n in rows):
        for peer in (n for n in ("trl-ppo", "trl-rloo") if n in rows):
            a, b = rows[ours], rows[peer]

            def ratio(key: str, a=a, b=b) -> str:
                return f"{a[key] / b[key]:.2f}x" if b[key] else "n/a"

            gain = f"{a['reward_gain_per_s'] / b['reward_gain_per_s']:.2f}x" if b["reward_gain_per_s"] > 0 else "n/a (peer gained <= 0)"
            lines.append(f"| {ours} / {peer} | {ratio('episodes_per_s')} | {ratio('tokens_per_s')} | "
                         f"{ratio('episodes_per_cpu_s')} | {ratio('peak_memory_mb')} | {ratio('training_memory_mb')} | {gain} |")
    text = "\n".join(lines)
    print(text)
    return text


def parse_config(argv: list[str] | None) -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(BenchConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if isinstance(default, list):
            parser.add_argument(f"--{f.name}", nargs="+", default=default)
        else:
            parser.add_argument(f"--{f.name}", type=type(default), default=default)
    cfg = BenchConfig(**vars(parser.parse_args(argv)))
    unknown = set(cfg.trainers) - set(TRAINERS)
    if unknown:
        raise ValueError(f"--trainers: unknown {sorted(unknown)}; choose from {list(TRAINERS)}")
    if cfg.model not in MODELS:
        raise ValueError(f"--model must be one of {list(MODELS)}, got {cfg.model!r}")
    if cfg.device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be 'cpu' or 'cuda', got {cfg.device!r}")
    if cfg.batch_size % cfg.num_generations:
        raise ValueError(f"--batch_size {cfg.batch_size} must be a multiple of --num_generations {cfg.num_generations} (RLOO groups)")
    if "trl-ppo" in cfg.trainers and not Path(cfg.trl112_python).exists():
        raise ValueError(f"--trl112_python {cfg.trl112_python} does not exist; create the TRL 1.12 environment "
                         "(docs/benchmarks.md) or drop trl-ppo from --trainers")
    return cfg


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = parse_config(argv)
    os.environ.update({k: v for k, v in _quiet_env().items() if k not in os.environ or k == "OMP_NUM_THREADS"})
    import torch

    torch.set_num_threads(1)
    work = Path(cfg.work_dir).resolve()
    print(f"[bench] preparing the {cfg.model} models in {work / 'assets'}", flush=True)
    policy, reward_model = (prepare_tiny if cfg.model == "tiny" else prepare_gpu_150m)(work)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cfg.trainers}
    for repeat in range(cfg.repeats):
        order = cfg.trainers[repeat % len(cfg.trainers):] + cfg.trainers[: repeat % len(cfg.trainers)]
        for name in order:
            print(f"[bench] repeat {repeat + 1}/{cfg.repeats}: {name} ...", flush=True)
            result = run_child(cfg, name, policy, reward_model, work / "runs" / f"{name}-{repeat}")
            print(f"[bench]   {result['episodes'] / result['wall_s']:.1f} episodes/s, {result['wall_s']:.1f} s, "
                  f"peak {result['peak_memory_mb']:.0f} MiB", flush=True)
            runs[name].append(result)
    print("[bench] evaluating the policies on the held-out prompts", flush=True)
    before = evaluate_policy(policy, reward_model, cfg)
    for results in runs.values():
        for r in results:
            r["reward_after"] = evaluate_policy(Path(r["policy"]), reward_model, cfg)
    rows = summarise(cfg, runs, before)
    table = print_table(cfg, rows, before)
    load = os.getloadavg()
    report = {"config": dataclasses.asdict(cfg), "reward_before": before, "rows": rows, "runs": runs, "table": table,
              "loadavg": load, "torch": torch.__version__, "cpu_count": os.cpu_count()}
    (work / "results.json").write_text(dumps_strict(report, indent=1))
    print(f"\n[bench] load average {load[0]:.1f} on {os.cpu_count()} CPUs; results in {work / 'results.json'}")
    return report


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "_child":
        child_main(sys.argv[2], sys.argv[3])
    else:
        main()
