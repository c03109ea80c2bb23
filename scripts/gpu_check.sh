#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one script (about 8 minutes on one GPU):
#
#   bash scripts/gpu_check.sh            # from the repository root (or anywhere: it cd's there)
#
# Every result goes to ONE file, $OUT/gpu_check_results.txt when OUT is set, else
# ./gpu_check_results/gpu_check_results.txt; progress is printed as it goes. Each stage has its own
# time limit; a failed or timed-out stage is recorded (exit code, last lines of its output) and the
# script carries on -- it never aborts half-way. Stages:
#   env      GPU, driver, Python, torch / CUDA, deepspeed
#   setup    a Python with torch (an existing one if it imports, else a fresh venv with
#            `pip install torch==2.13.0`, the CUDA build from PyPI) and the third-party packages: every
#            wheel in ./wheelhouse when it exists (see below), else the missing ones from the index
#   pytest   tests/test_rlhf_cuda.py: bf16 autocast, gradient checkpointing, rlhf ppo / sft on CUDA
#   ppo      `rlhf ppo` in bf16 on a ~150M-parameter random-init Llama: episodes/s, response tokens/s,
#            torch.cuda.max_memory_allocated
#   grpo     the same for `rlhf grpo` (8 prompts x 8 completions per update), and rloo for `rlhf rloo`
#   zero3    `rlhf ppo` under DeepSpeed ZeRO-3 on the one GPU (configs/accelerate/deepspeed_zero3.yaml,
#            --num_processes 1), if deepspeed imports
#   fsdp     `rlhf ppo` under FSDP2 on the one GPU (configs/accelerate/fsdp.yaml, --num_processes 1)
#   bench    scripts/bench_rlhf.py --model gpu-150m --device cuda: our PPO against TRL's RLOOTrainer and
#            (with a TRL 1.12 Python: ./wheelhouse/trl112 or .venv-trl112) TRL 1.12's PPOTrainer;
#            its results.json is copied next to the results file as bench_rlhf_gpu.json
# The last line of the file is a one-line verdict per stage.
set -u
cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd)
OUT_DIR=${OUT:-$REPO/gpu_check_results}
mkdir -p "$OUT_DIR"
RESULTS=$OUT_DIR/gpu_check_results.txt
: > "$RESULTS"
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
STAGE_LOG=$WORK/stage.log
VERDICT=""
# GPU_CHECK_ONLY="build-150m grpo-bf16-150m" reruns just those stages (set-up always runs).
ONLY=${GPU_CHECK_ONLY:-}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} PYTHONUNBUFFERED=1
trap 'rm -rf "$WORK"' EXIT

log() { echo "$*" | tee -a "$RESULTS"; }

# stage NAME LIMIT_SECONDS COMMAND...: run with a time limit, record the outcome and the output's tail.
stage() {
  local name=$1 limit=$2
  shift 2
  if [ -n "$ONLY" ] && [[ $name != setup-* ]] && [[ " $ONLY " != *" $name "* ]]; then return 0; fi
  log ""
  local cmd="$*"
  log "=== [$name] limit ${limit}s: ${cmd:0:200}"
  local start rc
  start=$(date +%s)
  timeout --kill-after=15 "$limit" "$@" > "$STAGE_LOG" 2>&1
  rc=$?
  local took=$(( $(date +%s) - start ))
  grep -E "^(RESULT|PASS|FAIL)|passed|failed|skipped|rror" "$STAGE_LOG" | tail -n 40 | sed 's/^/  /' | tee -a "$RESULTS" > /dev/null
  echo "  --- last lines ---" >> "$RESULTS"
  tail -n 60 "$STAGE_LOG" | sed 's/^/  /' >> "$RESULTS"
  local status=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="TIMEOUT"; elif [ $rc -ne 0 ]; then status="FAILED(rc=$rc)"; fi
  log "--- [$name] $status in ${took}s"
  VERDICT="$VERDICT $name=$status"
  return 0
}

skip() { log ""; log "=== [$1] skipped: $2"; VERDICT="$VERDICT $1=skipped"; }

log "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) in $REPO (git $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"

# ------------------------------------------------------------------------------------------ python
# The rlhf package is imported from this checkout (PYTHONPATH); only third-party packages are installed.
# Offline (a lent GPU machine usually is), bring them as wheels in ./wheelhouse: every wheel there is
# installed with --no-deps into a private folder on PYTHONPATH (ahead of site-packages), so the machine's
# own Python is left as it was. Wheels in ./wheelhouse/trl112 (TRL 1.12, the last TRL with PPO) go to a second folder
# that only the benchmark's trl-ppo row sees. To fill it on a connected machine (Python 3.12 shown):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d wheelhouse trl datasets peft hjson dill multiprocess pydantic pydantic_core
#   pip wheel --no-deps -w wheelhouse "deepspeed>=0.19.8,<0.20"
#   pip download --no-deps -d wheelhouse/trl112 trl==1.12.0
# Without ./wheelhouse, missing packages are installed from the package index.
PY=""
for candidate in "${PYTHON:-}" "$REPO/.venv/bin/python" python3 python; do
  [ -n "$candidate" ] || continue
  if "$candidate" -c "import torch" > /dev/null 2>&1; then PY=$(command -v "$candidate"); break; fi
done
if [ -z "$PY" ]; then
  setup_venv() { python3 -m venv "$REPO/.venv-gpu" && "$REPO/.venv-gpu/bin/pip" install --quiet torch==2.13.0; }
  stage setup-torch 300 bash -c "$(declare -f setup_venv); setup_venv"
  PY=$REPO/.venv-gpu/bin/python
fi
TRL112_PY=""
if [ -d "$REPO/wheelhouse" ]; then
  SITE=$WORK/site
  stage setup-wheelhouse 120 bash -c "'$PY' -m pip install --quiet --no-index --no-deps --target '$SITE' '$REPO'/wheelhouse/*.whl \
    && { [ ! -d '$REPO/wheelhouse/trl112' ] || '$PY' -m pip install --quiet --no-index --no-deps --target '$WORK/trl112' '$REPO'/wheelhouse/trl112/*.whl; }"
  export PYTHONPATH=$PYTHONPATH:$SITE
  if [ -d "$WORK/trl112" ]; then
    TRL112_PY=$WORK/trl112_python
    printf '#!/usr/bin/env bash\nPYTHONPATH=%s:$PYTHONPATH exec %s "$@"\n' "$WORK/trl112" "$PY" > "$TRL112_PY"
    chmod +x "$TRL112_PY"
  fi
else
  MISSING=$("$PY" -c "
import importlib.util as u
print(' '.join(p for m, p in [('transformers', 'transformers>=4.56'), ('trl', 'trl>=0.20'), ('accelerate', 'accelerate>=1.0'),
      ('peft', 'peft>=0.13'), ('datasets', 'datasets>=3.0'), ('safetensors', 'safetensors'), ('yaml', 'pyyaml'),
      ('tqdm', 'tqdm'), ('pytest', 'pytest')] if u.find_spec(m) is None))" 2>/dev/null)
  if [ -n "$MISSING" ]; then
    stage setup-packages 180 "$PY" -m pip install --quiet $MISSING
  fi
  if ! "$PY" -c "import deepspeed" > /dev/null 2>&1; then
    stage setup-deepspeed 150 "$PY" -m pip install --quiet "deepspeed>=0.19.8,<0.20"
  fi
fi
[ -z "$TRL112_PY" ] && [ -x "$REPO/.venv-trl112/bin/python" ] && TRL112_PY=$REPO/.venv-trl112/bin/python
log "python: $PY"

stage env 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \"$PY\" -c '
import sys, torch
print(\"RESULT python\", sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda,
      \"available\", torch.cuda.is_available(), \"bf16\", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
if torch.cuda.is_available(): print(\"RESULT device\", torch.cuda.get_device_name(0))
for name in (\"transformers\", \"trl\", \"accelerate\", \"peft\", \"deepspeed\"):
    try:
        module = __import__(name); print(\"RESULT\", name, module.__version__)
    except Exception as err:
        print(\"RESULT\", name, \"not importable:\", type(err).__name__, err)
'"

# ------------------------------------------------------------------------------------------ tests
stage pytest 120 "$PY" -m pytest tests/test_rlhf_cuda.py -x -q -p no:cacheprovider -rs

# ------------------------------------------------------------------------------------------ models
MODEL=$WORK/llama-150m
cat > "$WORK/measure.py" <<'EOF'
"""Build the ~150M random-init Llama once, or run one rlhf command and report its speed and memory."""
import json, sys, time
from pathlib import Path

import torch

if sys.argv[1] == "build":
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf.steps.tiny_model import TinyModelConfig, build_tiny_model

    path = Path(sys.argv[2])
    _, tokenizer = build_tiny_model(TinyModelConfig(output_dir=str(path)))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
                         num_attention_heads=16, max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    print(f"RESULT model {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    sys.exit(0)

command, argv = sys.argv[1], sys.argv[2:]
import importlib

from classic_rl.safe_io import dumps_strict

module = importlib.import_module(f"rlhf.{command}")
if torch.cuda.is_available():
    torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
summary = module.main(argv)
wall = time.perf_counter() - start
peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
keys = ("precision", "distributed_type", "zero_stage", "world_size", "episodes", "train_runtime",
        "episodes_per_second", "reward_mean_before", "reward_mean_after", "kl_mean")
print("RESULT", command, dumps_strict({k: summary.get(k) for k in keys if k in summary}))
print(f"RESULT {command} wall {wall:.1f}s, torch.cuda.max_memory_allocated {peak:.0f} MiB")
out = Path(argv[argv.index("--output_dir") + 1])
rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] if (out / "metrics.jsonl").exists() else []
if rows:
    # PPO logs the mean response length as val/response_length, GRPO/RLOO as completions/mean_length
    lengths = [r.get("val/response_length", r.get("completions/mean_length", 0)) for r in rows]
    tokens = sum(lengths) * summary.get("episodes", 0) / len(rows)
    step_time = sum(r.get("time/step", 0) for r in rows)
    last = {k: rows[-1][k] for k in ("objective/kl", "kl", "objective/scores", "reward", "time/rollout", "time/update")
            if k in rows[-1]}
    print(f"RESULT {command} updates {len(rows)}, response tokens/s {tokens / max(step_time, 1e-9):.0f}, "
          f"last update {dumps_strict(last)}")
    for i, (row, length) in enumerate(zip(rows, lengths), 1):
        print(f"RESULT {command} update {i}: mean response length {length:.1f}, rollout {row.get('time/rollout', 0):.2f}s, "
              f"update {row.get('time/update', 0):.2f}s, kl {row.get('objective/kl', row.get('kl', float('nan'))):.4f}")
EOF
stage build-150m 50 "$PY" "$WORK/measure.py" build "$MODEL"

DATA=$REPO/rlhf/data
PPO_FLAGS=(--model_name_or_path "$MODEL" --reward_fn rlhf.tasks.reviews:gold_reward --dataset_name "$DATA/prompts.jsonl"
           --eval_dataset_name "$DATA/prompts_eval.jsonl" --num_eval_prompts 64 --num_sample_generations 0
           --disable_tqdm --response_length 64 --temperature 0.7 --learning_rate 1e-5 --seed 0)
stage ppo-bf16-150m 90 "$PY" "$WORK/measure.py" ppo "${PPO_FLAGS[@]}" --output_dir "$WORK/ppo" --bf16 true \
  --per_device_train_batch_size 64 --num_ppo_epochs 2 --total_episodes 256

# GRPO takes TRL's GRPOConfig names: completions per update = per_device_train_batch_size (8 prompts x 8).
GRPO_FLAGS=(--model_name_or_path "$MODEL" --reward_fn rlhf.tasks.reviews:gold_reward --dataset_name "$DATA/prompts.jsonl"
            --eval_dataset_name "$DATA/prompts_eval.jsonl" --num_eval_prompts 64 --num_sample_generations 0
            --disable_tqdm --max_completion_length 64 --temperature 0.7 --learning_rate 1e-5 --seed 0)
stage grpo-bf16-150m 60 "$PY" "$WORK/measure.py" grpo "${GRPO_FLAGS[@]}" --output_dir "$WORK/grpo" --bf16 true \
  --per_device_train_batch_size 64 --num_generations 8 --max_steps 4
stage rloo-bf16-150m 60 "$PY" "$WORK/measure.py" rloo "${GRPO_FLAGS[@]}" --output_dir "$WORK/rloo" --bf16 true \
  --per_device_train_batch_size 64 --num_generations 8 --max_steps 4

# ------------------------------------------------------------------------------------------ sharded
if "$PY" -c "import deepspeed" > /dev/null 2>&1; then
  stage zero3-1gpu 70 "$PY" -m accelerate.commands.launch --config_file configs/accelerate/deepspeed_zero3.yaml \
    --num_processes 1 "$WORK/measure.py" ppo "${PPO_FLAGS[@]}" --output_dir "$WORK/zero3" \
    --per_device_train_batch_size 32 --num_ppo_epochs 1 --total_episodes 64
else
  skip zero3-1gpu "deepspeed does not import"
fi
stage fsdp-1gpu 45 "$PY" -m accelerate.commands.launch --config_file configs/accelerate/fsdp.yaml \
  --num_processes 1 "$WORK/measure.py" ppo "${PPO_FLAGS[@]}" --output_dir "$WORK/fsdp" \
  --per_device_train_batch_size 32 --num_ppo_epochs 1 --total_episodes 64

# ------------------------------------------------------------------------------------------ vs TRL
# scripts/bench_rlhf.py's GPU rows: our PPO (separate critic and value-head variant) against TRL's
# RLOOTrainer and, when a TRL 1.12 Python is at hand, TRL 1.12's PPOTrainer, same 150M policy and reward
# model, bf16, same episodes/update, response length and optimizer passes. The table goes to the results.
BENCH_TRAINERS=(ours ours-vhead trl-rloo)
[ -n "$TRL112_PY" ] && BENCH_TRAINERS+=(trl-ppo)
stage bench-rlhf-gpu 200 "$PY" scripts/bench_rlhf.py --model gpu-150m --device cuda --work_dir "$WORK/bench" \
  --trainers "${BENCH_TRAINERS[@]}" ${TRL112_PY:+--trl112_python "$TRL112_PY"}
[ -f "$WORK/bench/results.json" ] && cp "$WORK/bench/results.json" "$OUT_DIR/bench_rlhf_gpu.json"

log ""
log "VERDICT:$VERDICT"
exit 0
