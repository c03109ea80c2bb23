"""Per-rank memory of one `rlhf ppo` update under DDP, ZeRO-2, ZeRO-3 and FSDP2, on CPU processes.

    python scripts/bench_memory.py                       # ~60M-parameter random-init Llama, 2 processes
    python scripts/bench_memory.py --hidden_size 768 --num_hidden_layers 12   # ~90M

Each mode is one `accelerate launch` of this script (``_worker``) with the shipped CPU config
(configs/accelerate/cpu_2proc.yaml, cpu_zero2.yaml, cpu_zero3.yaml, cpu_fsdp.yaml). Every rank builds
``rlhf.methods.ppo.PPOTrainer`` (policy with a value head, a separate frozen reference, the gold reward
function), runs ONE PPO update (rollout, 2 epochs, AdamW step) and reports:

- ``params`` / ``Adam states`` / ``fp32 masters``: bytes of the trained model's parameters, Adam
  states, and the fp32 master partitions DeepSpeed keeps beside the model's parameters, held by this
  rank after the update (shards only, where ZeRO / FSDP shard them); their sum, and that sum as a
  fraction of DDP's: near 1 / world size for ZeRO-3 and FSDP2;
- ``grads after step``: gradients still held after the step (DeepSpeed frees its gradient buffers
  after stepping, DDP and FSDP keep ``.grad`` until the next ``zero_grad``), for information;
- ``reference``: bytes of the frozen reference policy on this rank;
- ``RSS before update`` / ``peak RSS in update`` (VmHWM reset just before the update) / ``peak RSS of
  run`` (including loading, when every rank holds the whole models before they are sharded).

Results also go to WORK_DIR/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from classic_rl.safe_io import dumps_strict

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "rlhf" / "data"
MODES = {"ddp": "cpu_2proc.yaml", "zero2": "cpu_zero2.yaml", "zero3": "cpu_zero3.yaml", "fsdp": "cpu_fsdp.yaml"}
MiB = 2**20


def build_model(work: Path, hidden: int, layers: int, intermediate: int) -> tuple[Path, int]:
    """A random-init Llama with the tiny tokenizer (cached in WORK_DIR); returns (path, parameters)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf.steps.tiny_model import TinyModelConfig, build_tiny_model

    path = work / f"llama-h{hidden}-l{layers}-i{intermediate}"
    if not (path / "config.json").exists():
        _, tokenizer = build_tiny_model(TinyModelConfig(output_dir=str(path)))
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
            num_attention_heads=max(1, hidden // 64), max_position_embeddings=512, tie_word_embeddings=False,
            bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    h, i, n, v = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"], config["vocab_size"]
    return path, n * (4 * h * h + 3 * h * i + 2 * h) + 2 * v * h + h


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _held(trainer) -> dict[str, int]:
    """Bytes this rank holds for the trained model: parameters, gradients, Adam states and the fp32
    master partitions DeepSpeed keeps next to the model's own parameters."""
    import torch
    from torch.distributed.tensor import DTensor

    def local(t):
        return t.to_local() if isinstance(t, DTensor) else t  # numel() of a DTensor is the full size

    params, grads = [], []
    for p in trainer.model.parameters():
        if hasattr(p, "ds_tensor"):  # ZeRO-3: the parameter is an empty placeholder, ds_tensor its shard
            params.append(p.ds_tensor)
        else:
            params.append(local(p))
            grads.append(local(p.grad) if p.grad is not None else None)
    chain = [trainer.optimizer]  # accelerate's wrapper -> DeepSpeed's ZeRO optimizer -> torch AdamW
    while getattr(chain[-1], "optimizer", None) is not None and chain[-1].optimizer is not chain[-1]:
        chain.append(chain[-1].optimizer)
    states = [local(t) for s in chain[-1].state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    masters = []
    for obj in chain:
        for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
            masters += [t for t in (getattr(obj, name, None) or []) if torch.is_tensor(t)]
    return {"params": _tensor_bytes(params), "grads": _tensor_bytes(grads), "optimizer": _tensor_bytes(states),
            "masters": _tensor_bytes(masters)}


def _rss_status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


def worker(args: argparse.Namespace) -> None:
    import tempfile

    import torch

    torch.set_num_threads(1)
    from rlhf.common.distributed import describe_distribution
    from rlhf.methods.ppo import PPOTrainer
    from rlhf.methods.ppo_config import PPOConfig

    with tempfile.TemporaryDirectory() as tmp:
        config = PPOConfig(
            output_dir=tmp, model_name_or_path=args.model, reward_fn="rlhf.tasks.reviews:gold_reward",
            dataset_name=str(DATA / "prompts.jsonl"), eval_dataset_name=str(DATA / "prompts_eval.jsonl"),
            per_device_train_batch_size=args.batch, num_mini_batches=1, num_ppo_epochs=2,
            total_episodes=args.batch * int(os.environ.get("WORLD_SIZE", "1")), response_length=args.response_length,
            value_head_on_policy=True, learning_rate=1e-5, seed=0, use_cpu=True, num_sample_generations=0,
            disable_tqdm=True,
        )
        trainer = PPOTrainer(config)
    rss_before = _rss_status("VmRSS")
    try:  # reset the peak (VmHWM) so that it measures the update alone (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        update_peak_known = True
    except OSError:
        update_peak_known = False
    start = time.perf_counter()
    trainer.step(*trainer.next_batch())
    seconds = time.perf_counter() - start
    update_peak = _rss_status("VmHWM") if update_peak_known else None
    held = _held(trainer)
    reference = _tensor_bytes(
        [getattr(p, "ds_tensor", p.to_local() if hasattr(p, "to_local") else p) for p in trainer.ref_policy.parameters()]
    )
    result = {
        **describe_distribution(trainer.accelerator), **held, "reference": reference,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss_before": rss_before,
        "update_peak_rss": update_peak, "update_seconds": seconds,
    }
    Path(args.out).with_suffix(f".rank{trainer.rank}.json").write_text(dumps_strict(result))
    trainer.accelerator.wait_for_everyone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default="runs/bench_memory")
    parser.add_argument("--hidden_size", type=int, default=640)
    parser.add_argument("--num_hidden_layers", type=int, default=12)
    parser.add_argument("--intermediate_size", type=int, default=1728)
    parser.add_argument("--batch", type=int, default=4, help="prompts per rank in the update")
    parser.add_argument("--response_length", type=int, default=8)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    args = parser.parse_args()
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model, n_params = build_model(work, args.hidden_size, args.num_hidden_layers, args.intermediate_size)
    print(f"model: random-init Llama, {n_params / 1e6:.1f}M parameters -> {model}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    results = {}
    for mode in args.modes:
        out = work / mode
        run_env = {**env, "ACCELERATE_USE_CPU": "true"} if mode == "ddp" else {k: v for k, v in env.items() if k != "ACCELERATE_USE_CPU"}
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs" / "accelerate" / MODES[mode]),
               "--main_process_port", "0", str(Path(__file__).resolve()), "_worker", "--model", str(model), "--out", str(out),
               "--batch", str(args.batch), "--response_length", str(args.response_length)]
        print(f"[{mode}] {' '.join(cmd[2:6])} ...", flush=True)
        started = time.perf_counter()
        proc = subprocess.run(cmd, env=run_env, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"[{mode}] failed (exit {proc.returncode})")
        results[mode] = [json.loads(out.with_suffix(f".rank{r}.json").read_text()) for r in range(2)]
        print(f"[{mode}] done in {time.perf_counter() - started:.0f}s", flush=True)

    (work / "results.json").write_text(dumps_strict({"parameters": n_params, "results": results}, indent=1))
    def state(r: dict) -> int:  # what ZeRO / FSDP shard: parameters, Adam states, fp32 master copies
        return r["params"] + r["optimizer"] + r["masters"]

    ddp_state = max(state(r) for r in results["ddp"]) if "ddp" in results else None
    print(f"\n{n_params / 1e6:.1f}M-parameter Llama, one PPO update, 2 CPU processes; MiB per rank (max over ranks)")
    print("| mode | type | params | Adam states | fp32 masters | sum | vs DDP | grads after step | reference "
          "| RSS before update | peak RSS in update | peak RSS of run | update s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, ranks in results.items():
        top = max(ranks, key=state)
        label = top["distributed_type"] + (f" stage {top['zero_stage']}" if "zero_stage" in top else "")
        ratio = f"{state(top) / ddp_state:.2f}" if ddp_state else "-"
        peak_update = max((r["update_peak_rss"] or 0) for r in ranks)
        print(f"| {mode} | {label} | {top['params'] / MiB:.0f} | {top['optimizer'] / MiB:.0f} | {top['masters'] / MiB:.0f} | "
              f"{state(top) / MiB:.0f} | {ratio} | {top['grads'] / MiB:.0f} | {max(r['reference'] for r in ranks) / MiB:.0f} | "
              f"{max(r['rss_before'] for r in ranks) / MiB:.0f} | {peak_update / MiB:.0f} | "
              f"{max(r['peak_rss'] for r in ranks) / MiB:.0f} | {max(r['update_seconds'] for r in ranks):.1f} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        parser = argparse.ArgumentParser()
        parser.add_argument("_worker")
        parser.add_argument("--model", required=True)
        parser.add_argument("--out", required=True)
        parser.add_argument("--batch", type=int, default=4)
        parser.add_argument("--response_length", type=int, default=8)
        sys.path.insert(0, str(REPO))
        worker(parser.parse_args())
    else:
        main()
