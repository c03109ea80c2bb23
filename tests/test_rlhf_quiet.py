"""What a plain `rlhf` run prints and nothing else: no DeepSpeed import (and its "Setting accelerator to CPU"
warning) outside a DeepSpeed launch, no "layers were not sharded" note from transformers' tensor-parallel
check, no "new reward head" line in a --reward_fn run (its critic's head is zeroed), and sample lines printed
whole above the progress bar when stdout and stderr go to one pipe (`2>&1 | tee`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # one process that loads torch and trains a few PPO updates

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "rlhf" / "data"
VOWELS = '''
def vowels(prompts, completions):
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]
'''


def test_a_plain_ppo_run_prints_no_library_noise_and_samples_whole(tmp_path):
    (tmp_path / "quiet_rewards.py").write_text(VOWELS)
    tiny, out = tmp_path / "tiny", tmp_path / "ppo"
    code = ("import sys; from rlhf.cli import main; "
            f"assert main(['tiny-model', '--output_dir', {str(tiny)!r}, '--vocab_size', '300', '--hidden_size', '32', "
            "'--intermediate_size', '64', '--num_hidden_layers', '2', '--num_attention_heads', '2']) == 0; "
            f"rc = main(['ppo', '--model_name_or_path', {str(tiny)!r}, '--dataset_name', {str(DATA / 'prompts.jsonl')!r}, "
            f"'--output_dir', {str(out)!r}, '--reward_fn', {str(tmp_path / 'quiet_rewards.py') + ':vowels'!r}, "
            "'--total_episodes', '32', '--per_device_train_batch_size', '8', '--response_length', '6', "
            "'--num_eval_prompts', '8', '--num_sample_generations', '2', '--report_to', 'none']); "
            "print('DEEPSPEED IMPORTED', 'deepspeed' in sys.modules, flush=True); sys.exit(rc)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    for key in ("ACCELERATE_USE_DEEPSPEED", "DS_ACCELERATOR"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=600)  # one pipe for both, as `2>&1 | tee`
    output = proc.stdout.decode("utf-8", "replace")  # carriage returns kept: the bar redraws with them
    assert proc.returncode == 0, output[-3000:]
    assert "DEEPSPEED IMPORTED False" in output
    for noise in ("Setting accelerator to CPU", "were not sharded", "new reward head"):
        assert noise not in output, noise

    lines = [line.rsplit("\r", 1)[-1] for line in output.split("\n")]  # what a terminal shows of each line
    headers = [i for i, line in enumerate(lines) if re.fullmatch(r"\[ppo\] samples at update \d/4:", line)]
    assert len(headers) == 3, output[-3000:]  # updates 1, 2 and 4
    for i in headers:
        for sample in lines[i + 1:i + 4]:
            assert re.fullmatch(r"  '.*' -> '.*'  \(score [+-]\d\.\d{3}\)", sample), sample
    # each batch of samples comes out at its update, before the bar reaches the end
    assert output.index("samples at update 1/4") < output.index("4/4")
