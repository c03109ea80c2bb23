"""Sharded training on CPU processes: DeepSpeed ZeRO-2, ZeRO-3 and FSDP2, two processes each, launched
with the shipped configs (configs/accelerate/cpu_zero2.yaml, cpu_zero3.yaml, cpu_fsdp.yaml) exactly as a
user would, against DDP (cpu_2proc.yaml) on the same data.

One `accelerate launch` of tests/rlhf_sharded_run.py per config (Python imports dominate, so each
launch does everything for its config): one PPO step on a fixed global batch (compared with DDP's),
how much of the model each rank holds, the saved policy against the gathered weights, then `rlhf sft`,
`rlhf reward` and `rlhf ppo` end to end (reward model and reference placed as frozen models, a learning
run, LoRA), and checkpoints with exact resume (`rlhf ppo --save_steps`, resumed from a checkpoint of the
longer run in a new folder). The four launches run concurrently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from classic_rl.safe_io import LOCK_FILE, lock_holder

pytestmark = pytest.mark.slow  # multi-process runs: part of `make test`, not `make test-fast`

pytest.importorskip("deepspeed", reason="the sharded tests need `pip install -e '.[deepspeed]'` (make test does it)")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "accelerate"
RUN_SCRIPT = REPO / "tests" / "rlhf_sharded_run.py"
SHARDED = ("zero2", "zero3", "fsdp")
LAUNCHES = {  # name: (config file, extra launch flags, run the commands and the checkpoint/resume runs too)
    "ddp": ("cpu_2proc.yaml", [], False),
    "zero2": ("cpu_zero2.yaml", ["--gradient_accumulation_steps", "2"], True),
    "zero3": ("cpu_zero3.yaml", ["--gradient_accumulation_steps", "2"], True),
    "fsdp": ("cpu_fsdp.yaml", [], True),
}
VOLATILE = ("time/", "eps")  # wall-clock metrics differ between runs


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    """A ~30k-parameter Llama with the project's BPE tokenizer (300 tokens), as `rlhf tiny-model` writes it."""
    from rlhf.tiny_model import main

    path = tmp_path_factory.mktemp("sharded_model") / "tiny"
    main(["--output_dir", str(path), "--vocab_size", "300", "--hidden_size", "32", "--intermediate_size", "64",
          "--num_hidden_layers", "2", "--num_attention_heads", "2"])
    return path


@pytest.fixture(scope="module")
def runs(small_model, tmp_path_factory) -> dict[str, Path]:
    """Every launch's output directory (report.json, step.safetensors, the commands' runs)."""
    root = tmp_path_factory.mktemp("sharded")
    base = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    base.pop("ACCELERATE_USE_CPU", None)  # the sharded configs must work as shipped, without it
    procs = {}
    for name, (config, flags, commands) in LAUNCHES.items():
        out = root / name
        out.mkdir()
        env = {**base, "ACCELERATE_USE_CPU": "true"} if name == "ddp" else base
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
               "--main_process_port", "0", *flags, str(RUN_SCRIPT), "--tiny", str(small_model),
               "--out_dir", str(out), *(["--commands", "--resume"] if commands else [])]
        procs[name] = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True)
    failures = []
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=900)
        (root / name / "launch.log").write_text(output)
        if proc.returncode != 0:  # the ranks' own errors, not just the launcher's
            errors = [line for line in output.splitlines() if "Error" in line or "error" in line][-12:]
            failures.append(f"{name}: exit {proc.returncode}\n" + "\n".join(errors))
    assert not failures, "\n\n".join(failures)
    return {name: root / name for name in LAUNCHES}


def _report(runs: dict[str, Path], name: str) -> dict:
    return json.loads((runs[name] / "report.json").read_text())


@pytest.mark.slow
def test_launches_shard_as_their_config_says(runs):
    expected = {"ddp": ("MULTI_CPU", None), "zero2": ("DEEPSPEED", 2), "zero3": ("DEEPSPEED", 3), "fsdp": ("FSDP", None)}
    for name, (kind, stage) in expected.items():
        dist = _report(runs, name)["distribution"]
        assert dist["world_size"] == 2, (name, dist)
        assert dist["distributed_type"] == kind, (name, dist)
        assert dist.get("zero_stage") == stage, (name, dist)


@pytest.mark.slow
@pytest.mark.parametrize("name", SHARDED)
def test_one_ppo_update_equals_the_ddp_update(runs, name):
    """Same data, same seed, 2 accumulated micro batches per optimizer step, 2 epochs: the weights after
    the update agree with DDP's to float tolerance, and so do the rank-averaged statistics."""
    ddp, other = load_file(str(runs["ddp"] / "step.safetensors")), load_file(str(runs[name] / "step.safetensors"))
    assert ddp.keys() == other.keys() and len(ddp) > 10
    for key in ddp:
        torch.testing.assert_close(other[key], ddp[key], rtol=1e-5, atol=2e-6, msg=f"{name}: {key}")
    ref, rep = _report(runs, "ddp")["step"], _report(runs, name)["step"]
    assert ref["max_change"] > 1e-3  # the update really moved the weights
    for key in ("objective/kl", "objective/scores", "loss/policy_avg", "loss/value_avg", "policy/approxkl_avg"):
        assert rep["metrics"][key] == pytest.approx(ref["metrics"][key], rel=1e-4, abs=1e-7), (name, key)


@pytest.mark.slow
def test_each_rank_holds_its_share(runs):
    """ZeRO-3 and FSDP2 keep half the parameters per rank (FSDP2's are DTensors); ZeRO-2 keeps all
    parameters but half the Adam states; DDP keeps everything."""
    ddp = _report(runs, "ddp")["holding_after_step"]
    assert ddp["param_local"] == ddp["param_full"] and ddp["dtensor_params"] == 0
    full, adam_full = ddp["param_full"], ddp["optimizer_state_local"]
    assert adam_full >= 2 * full  # exp_avg and exp_avg_sq for every parameter
    for name in SHARDED:
        held = _report(runs, name)["holding_after_step"]
        assert held["param_full"] == full, name
        assert held["optimizer_state_local"] <= 0.55 * adam_full, (name, held)
        if name == "zero2":
            assert held["param_local"] == full
        else:
            assert held["param_local"] <= 0.55 * full, (name, held)
    assert _report(runs, "fsdp")["holding_after_step"]["dtensor_params"] > 0


@pytest.mark.slow
def test_deepspeed_steps_at_the_accumulation_boundary_only(runs):
    for name in ("zero2", "zero3"):
        steps = _report(runs, name)["deepspeed_steps"]
        # 2 epochs x 2 micro batches: the engine steps (and counts a step) at the 2 boundaries only
        assert steps["global_steps"] == 2, (name, steps)


@pytest.mark.slow
def test_sampling_stops_in_step_where_a_forward_is_a_collective(runs):
    assert _report(runs, "fsdp")["sync_generation"] is True
    assert _report(runs, "zero3")["sync_generation"] is False  # the policy is gathered once for generation
    assert _report(runs, "zero3")["sync_generation_without_gather"] is True
    assert _report(runs, "ddp")["sync_generation"] is False
    # rlhf ppo under ZeRO-3 with --ds3_gather_for_generation false (layer-by-layer gathers, synchronised
    # stop) ran to the end in test_commands_run_end_to_end.


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddp", *SHARDED])
def test_saved_policy_loads_as_a_plain_model_equal_to_the_gathered_weights(runs, name):
    saved = _report(runs, name)["saved_policy"]
    assert saved["compared"] == saved["keys"] and saved["keys"] > 10, saved
    assert saved["max_diff"] == 0.0, (name, saved)


@pytest.mark.slow
@pytest.mark.parametrize("name", SHARDED)
def test_commands_run_end_to_end_and_learn(runs, name):
    config_stage = {"zero2": ("DEEPSPEED", 2), "zero3": ("DEEPSPEED", 3), "fsdp": ("FSDP", None)}[name]
    results = _report(runs, name)["commands"]
    for command in ("sft", "reward", "ppo_rm", "ppo_learn"):
        summary = results[command]
        assert summary["world_size"] == 2, (name, command)
        assert (summary["distributed_type"], summary.get("zero_stage")) == config_stage, (name, command, summary)
    sft, reward = results["sft"], results["reward"]
    assert sft["eval_loss"] < sft["eval_loss_before"] - 1.0, sft
    assert reward["eval_accuracy"] > max(0.6, reward["eval_accuracy_before"]), reward
    learn = results["ppo_learn"]
    assert learn["reward_mean_after"] > learn["reward_mean_before"] + 0.05, learn
    # The saved models load as plain models and give the summary's numbers back.
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(runs[name] / "reward")
    for run in ("sft", "ppo_rm", "ppo_learn"):
        model = AutoModelForCausalLM.from_pretrained(runs[name] / run)
        assert all(p.numel() > 0 and torch.isfinite(p).all() for p in model.parameters()), (name, run)


@pytest.mark.slow
def test_lora_trains_under_zero2_and_is_refused_clearly_under_zero3_and_fsdp(runs):
    assert _report(runs, "zero2")["commands"]["ppo_lora"]["use_peft"] is True
    # LoRA's B matrices start at zero: the update moved them (the adapter is saved next to the merged model)
    adapter = load_file(str(runs["zero2"] / "ppo_lora" / "adapter" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and max(v.abs().max().item() for v in lora_b) > 1e-4
    for name in ("zero3", "fsdp"):
        message = _report(runs, name)["commands"]["ppo_lora"]["refused"]
        assert "--use_peft" in message and "ZeRO-2" in message, message


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHARDED)
@pytest.mark.parametrize("command", ["ppo", "grpo"])
def test_resumed_run_ends_with_the_uninterrupted_runs_weights_and_metrics(runs, name, command):
    """`rlhf ppo` / `rlhf grpo` for 4 updates with a checkpoint after each of the first three; the same
    command resumed from that run's checkpoint-2 (copied into a new folder) ends bit for bit where the
    uninterrupted run ended: weights, every metrics row (timings aside), PPO's adaptive KL coefficient,
    the final reward."""
    full, resumed = runs[name] / f"{command}_full", runs[name] / f"{command}_resumed"
    summaries = _report(runs, name)["resume"][command]
    summary, again = summaries["full"], summaries["resumed"]
    assert summary["world_size"] == again["world_size"] == 2 and summary["num_updates"] == 4
    assert again["resumed_from"].endswith("checkpoint-2") and again["episodes"] == summary["episodes"]
    for run in ("model.safetensors", "checkpoint-3/model.safetensors"):  # the resumed run's own checkpoint too
        a, b = load_file(full / run), load_file(resumed / run)
        assert a.keys() == b.keys() and len(a) > 10
        for key in a:
            assert torch.equal(a[key], b[key]), (name, run, key, (a[key] - b[key]).abs().max().item())
    rows_full, rows_resumed = _metrics(full), _metrics(resumed)
    assert len(rows_full) == 4 and rows_resumed == rows_full
    if command == "ppo":
        assert again["kl_coef_final"] == summary["kl_coef_final"] != 0.05  # restored, and it did adapt
    assert again["reward_mean_after"] == summary["reward_mean_after"]
    assert again["reward_mean_before"] == summary["reward_mean_before"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHARDED)
def test_sharded_checkpoints_hold_full_weights_and_every_ranks_optimizer_state(runs, name):
    from rlhf.checkpoints import list_checkpoints

    full, resumed = runs[name] / "ppo_full", runs[name] / "ppo_resumed"
    # --save_total_limit 2: checkpoint-1 pruned; the resumed run prunes only its own; no staging leftovers
    assert [p.name for p in list_checkpoints(full)] == ["checkpoint-2", "checkpoint-3"]
    assert [p.name for p in list_checkpoints(resumed)] == ["checkpoint-2", "checkpoint-3"]
    # no staging leftovers; the run-folder lock file (taken by rank 0 alone) stays, as with every run
    assert not [p.name for d in (full, resumed) for p in d.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]
    assert all((d / LOCK_FILE).is_file() and lock_holder(d) is None for d in (full, resumed))
    checkpoint = full / "checkpoint-2"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["distribution"] == _report(runs, name)["distribution"]
    # The whole trained module (policy and critic), not ZeRO-3's empty placeholders or FSDP2's shards.
    weights, gathered = load_file(str(checkpoint / "model.safetensors")), load_file(str(runs[name] / "step.safetensors"))
    assert weights.keys() == gathered.keys()
    assert all(weights[k].shape == gathered[k].shape and weights[k].numel() > 0 for k in weights)
    trained = _report(runs, name)["holding_after_step"]["param_full"]  # parameters (tied embeddings once)
    if name == "fsdp":  # the full optimizer state, gathered on rank 0, keyed by parameter name
        assert sorted(p.name for p in checkpoint.glob("optimizer*")) == ["optimizer.pt"]
        optim = torch.load(checkpoint / "optimizer.pt", weights_only=True)
        assert set(optim["state"]) <= weights.keys()
        assert sum(weights[key].numel() for key in optim["state"]) == trained
        for key, adam in optim["state"].items():
            assert adam["exp_avg"].shape == adam["exp_avg_sq"].shape == weights[key].shape, key
        return
    # DeepSpeed: each rank's partition of the fp32 master weights (and of the Adam states)
    assert sorted(p.name for p in checkpoint.glob("optimizer*")) == ["optimizer_rank0.pt", "optimizer_rank1.pt"]
    held = []
    for rank in (0, 1):
        partition = torch.load(checkpoint / f"optimizer_rank{rank}.pt", weights_only=True)
        master = partition.get("fp32_flat_groups", partition.get("single_partition_of_fp32_groups"))
        held.append(sum(t.numel() for t in master))
    assert sum(held) >= trained and max(held) <= 0.55 * trained, (held, trained)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kind"), [("cpu_zero2", "DEEPSPEED"), ("cpu_zero3", "DEEPSPEED"), ("cpu_fsdp", "FSDP")])
def test_cpu_sharded_configs_load_and_never_force_the_cpu(name, kind):
    """Forcing the CPU (use_cpu) would silently drop DeepSpeed / start one process; fp32 on the CPU."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.num_processes == 2
    assert config.use_cpu is False and str(config.mixed_precision) in ("no", "PrecisionType.NO")
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
        assert config.deepspeed_config["gradient_accumulation_steps"] == 1
        assert config.deepspeed_config["gradient_clipping"] == 1.0  # rlhf ppo's --max_grad_norm default
        if name == "cpu_zero3":
            assert config.deepspeed_config["zero3_save_16bit_model"] is True  # saving gathers the weights
    else:
        assert config.fsdp_config["fsdp_version"] == 2


@pytest.mark.slow
def test_one_process_summary_fields_and_no_sharding_requested(monkeypatch):
    from accelerate import Accelerator
    from rlhf.distributed import describe_distribution, requested_sharding, sharded

    for name in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(name, raising=False)
    assert requested_sharding() is None
    accelerator = Accelerator(cpu=True)
    assert describe_distribution(accelerator) == {"distributed_type": "NO", "world_size": 1}
    assert not sharded(accelerator)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert requested_sharding() == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert requested_sharding() == "deepspeed"
