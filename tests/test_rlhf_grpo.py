"""`rlhf grpo` and `rlhf rloo`: flags (TRL names), the verifiable task's checker, the group advantages and
losses of the classic_rl core, learning the shipped task from a noisy SFT warm start, and a 2-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import rlhf.grpo as grpo_module
import rlhf.rloo as rloo_module
from rlhf.grpo import GRPOTrainer
from rlhf.grpo_config import parse_grpo_args
from rlhf.ppo_config import parse_ppo_args
from rlhf.rloo_config import parse_rloo_args
from rlhf.tiny_model import TinyModelConfig, build_tiny_model

from classic_rl.core import advantages as core_advantages
from classic_rl.core import losses as core_losses
from classic_rl.safe_io import UserError
from rlhf import verifiable
from rlhf.cli import main as cli_main
from rlhf.rl.rewards import RewardError, RewardSources

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "rlhf" / "data"
TASK = ["--dataset_name", str(DATA / "reverse_prompts.jsonl"), "--eval_dataset_name", str(DATA / "reverse_prompts_eval.jsonl"),
        "--reward_fn", "rlhf.verifiable:reward"]
QUIET = ["--disable_tqdm", "--num_sample_generations", "0", "--report_to", "none", "--use_cpu"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny")
    model, tokenizer = build_tiny_model(TinyModelConfig(output_dir=str(path), vocab_size=300, hidden_size=32,
                                                        intermediate_size=64, num_hidden_layers=2, num_attention_heads=2))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def warm_start(tmp_path_factory) -> Path:
    """The recipe of configs/rlhf/grpo_tiny.yaml, smaller, through the command line as a user runs it: a tiny
    model SFT'd on the noisy reversal demonstrations."""
    root = tmp_path_factory.mktemp("reverse")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    steps = [
        ["tiny-model", "--output_dir", str(root / "tiny"), "--vocab_size", "300", "--hidden_size", "64",
         "--intermediate_size", "128", "--num_hidden_layers", "2", "--num_attention_heads", "4"],
        ["sft", "--model_name_or_path", str(root / "tiny"), "--dataset_name", str(DATA / "reverse_sft.jsonl"),
         "--output_dir", str(root / "sft"), "--max_steps", "200", "--per_device_train_batch_size", "32",
         "--learning_rate", "3e-3", "--lr_scheduler_type", "cosine", "--warmup_steps", "10", "--seed", "0",
         "--logging_steps", "50", "--disable_tqdm", "true", "--report_to", "none"],
    ]
    for argv in steps:
        result = subprocess.run([sys.executable, "-m", "rlhf", *argv], env=env, cwd=REPO, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, textwrap.shorten(result.stderr[-3000:], 3000)
    return root / "sft"


# ----------------------------------------------------------------------------- the task
def test_verifiable_task_checks_the_reversed_digits_exactly():
    prompts = ["reverse 381:", "reverse 381:", "reverse 381:", "reverse 007:", "Review the cafe:"]
    completions = ["183", " 183 ", "138", "700", "183"]
    assert verifiable.reward(prompts, completions) == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert verifiable.digit_accuracy(prompts, completions)[:3] == [1.0, 1.0, pytest.approx(1 / 3)]
    rows = [json.loads(line) for line in (DATA / "reverse_sft.jsonl").read_text().splitlines()]
    right = sum(verifiable.reward([r["prompt"]], [r["completion"]])[0] for r in rows) / len(rows)
    assert 0.5 < right < 0.7  # half reversed, half a random order (1/6 of which is right too)
    train = {json.loads(line)["prompt"] for line in (DATA / "reverse_prompts.jsonl").read_text().splitlines()}
    held_out = {json.loads(line)["prompt"] for line in (DATA / "reverse_prompts_eval.jsonl").read_text().splitlines()}
    assert len(train) == 800 and len(held_out) == 200 and not train & held_out


# ----------------------------------------------------------------------------- flags
def test_trl_field_names_and_repeated_reward_functions(tmp_path):
    cfg = parse_grpo_args(["--output_dir", "o", "--model_name_or_path", "m", "--dataset_name", "d",
                           "--reward_fn", "rlhf.verifiable:reward", "--reward_fn", "rlhf.verifiable:digit_accuracy",
                           "--reward_weights", "1.0", "0.5", "--num_generations", "4", "--max_completion_length", "6",
                           "--beta", "0.04", "--epsilon_high", "0.28", "--loss_type", "grpo", "--scale_rewards", "batch",
                           "--num_iterations", "2", "--max_steps", "7"])
    assert cfg.reward_fn_names == ["rlhf.verifiable:reward", "rlhf.verifiable:digit_accuracy"]
    assert (cfg.reward_weights, cfg.num_generations, cfg.max_new_tokens, cfg.beta) == ([1.0, 0.5], 4, 6, 0.04)
    assert (cfg.epsilon_high, cfg.loss_type, cfg.scale_rewards, cfg.num_iterations) == (0.28, "grpo", "batch", 2)
    assert cfg.num_updates(world_size=2, num_prompts=10) == 7
    rloo = parse_rloo_args(["--output_dir", "o", "--model_name_or_path", "m", "--dataset_name", "d",
                            "--reward_fn", "a:b,c:d", "--normalize_advantages"])
    assert rloo.reward_fn_names == ["a:b", "c:d"] and rloo.normalize_advantages and rloo.beta == 0.05


@pytest.mark.parametrize("parse, flags, message", [
    (parse_grpo_args, ["--beta", "-0.1"], r"--beta.*must be >= 0"),
    (parse_grpo_args, ["--epsilon", "0"], r"--epsilon.*must be > 0"),
    (parse_grpo_args, ["--num_generations", "1"], r"--num_generations.*must be >= 2"),
    (parse_grpo_args, ["--reward_weights", "1", "2"], "2 weights for 1 --reward_fn"),
    (parse_rloo_args, ["--beta", "-1"], r"--beta.*must be >= 0"),
    (parse_ppo_args, ["--kl_coef", "-0.1"], r"--kl_coef.*must be >= 0"),
    (parse_ppo_args, ["--cliprange", "0"], r"--cliprange.*must be > 0"),
    (parse_ppo_args, ["--num_ppo_epochs", "0"], r"--num_ppo_epochs.*must be >= 1"),
    (parse_ppo_args, ["--learning_rate", "-1"], r"--learning_rate.*must be >"),
])
def test_bad_flags_are_refused_naming_the_flag_and_range(parse, flags, message):
    base = ["--output_dir", "o", "--model_name_or_path", "m", "--dataset_name", "d", "--reward_fn", "a:b"]
    with pytest.raises(UserError, match=message):  # ConfigError, or the shared range check of rlhf.utils
        parse(base + flags)


def test_bad_flag_exits_2_with_one_line(capsys):
    assert cli_main(["grpo", "--output_dir", "o", "--model_name_or_path", "m", "--dataset_name", "d",
                     "--reward_fn", "a:b", "--epsilon", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "rlhf grpo: error: --epsilon must be > 0, got -1.0"


def test_a_reward_function_that_raises_is_named_with_its_batch():
    def broken(prompts, completions, device="cpu"):
        raise KeyError("answer")

    sources = RewardSources([("mytask:broken", broken)])
    with pytest.raises(RewardError, match=r"reward source mytask:broken failed on update 3 .*KeyError"):
        sources(["p"], ["c"], where="update 3")


# ----------------------------------------------------------------------------- the update
def test_grpo_update_uses_the_core_group_advantages_and_loss(tiny, tmp_path, monkeypatch):
    calls: dict[str, list] = {}

    def spy(module, name, fn):
        def wrapper(*args, **kwargs):
            calls.setdefault(name, []).append((args, kwargs))
            return fn(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)

    spy(grpo_module, "group_advantages", core_advantages.group_advantages)
    spy(grpo_module, "aggregate_loss", core_losses.aggregate_loss)
    spy(rloo_module, "rloo_advantages", core_advantages.rloo_advantages)
    argv = ["--model_name_or_path", str(tiny), *TASK, "--output_dir", str(tmp_path / "o"), "--num_generations", "4",
            "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2", "--max_completion_length", "4",
            "--max_steps", "2", "--learning_rate", "1e-3", "--num_eval_prompts", "8", "--seed", "0", *QUIET]
    trainer = GRPOTrainer(parse_grpo_args(argv))
    assert trainer.share_prompts and trainer.policy is trainer.model.policy and trainer.model.share_prompts
    prompts, _ = trainer.next_batch()
    assert len(prompts) == 16 and all(prompts[i] == prompts[i // 4 * 4] for i in range(16))  # 4 groups of 4
    metrics, batch = trainer.step(*trainer.next_batch())
    (args, kwargs), = calls["group_advantages"]
    assert args[0].shape == (16,) and args[1] == 4 and kwargs["scale"] == "group"
    assert len(calls["aggregate_loss"]) == 2 and calls["aggregate_loss"][0][0][2] == "dapo"  # 2 micro batches
    for key in ("reward", "reward_std", "kl", "entropy", "loss", "grad_norm", "clip_ratio/region_mean",
                "completions/mean_length", "rewards/reward/mean", "frac_reward_zero_std", "lr", "episode"):
        assert key in metrics, key
    assert metrics["episode"] == 16 and metrics["kl"] == pytest.approx(0.0, abs=1e-6)


def test_shared_prompts_give_the_logits_gradients_and_samples_of_separate_rows(tiny):
    """Each distinct prompt computed once (KV cache copied to its repeats) = every row computed alone."""
    import torch
    from rlhf.models import load_causal_lm

    from rlhf.rl.forward import distinct_rows, left_pad, logits_for_responses, token_logprobs
    from rlhf.rl.sampler import sample_responses

    model = load_causal_lm(str(tiny)).eval()
    torch.manual_seed(0)
    rows = [[5, 6, 7, 8]] * 3 + [[9, 10]] * 3  # two groups of 3, left-padded to different lengths
    queries, query_mask = left_pad(rows, pad_token_id=1)
    assert distinct_rows(queries[[0, 3]], query_mask[[0, 3]]) is None  # nothing repeats: plain path
    responses = torch.randint(2, 300, (6, 5))
    real = torch.ones_like(responses, dtype=torch.bool)
    real[1, 3:] = False  # a completion cut after its stop token
    qr, am, P = torch.cat([queries, responses], 1), torch.cat([query_mask, real.long()], 1), queries.shape[1]

    def logprobs_and_grads(share: bool):
        model.zero_grad()
        logprobs = token_logprobs(logits_for_responses(model, qr, am, P, share), responses, 0.7)
        (logprobs * real).sum().backward()
        return logprobs.detach()[real], [p.grad.clone() for p in model.parameters()]

    (alone, alone_grads), (shared, shared_grads) = logprobs_and_grads(False), logprobs_and_grads(True)
    torch.testing.assert_close(shared, alone, atol=1e-5, rtol=1e-5)
    for a, b in zip(alone_grads, shared_grads):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    assert max(g.abs().max() for g in alone_grads) > 1e-3  # the gradients compared are not zeros
    kwargs = dict(max_new_tokens=6, temperature=1.0, pad_token_id=1, stop_token_ids=(0,))
    with torch.no_grad():
        a = sample_responses(model, queries, query_mask, generator=torch.Generator().manual_seed(0), **kwargs)
        b = sample_responses(model, queries, query_mask, generator=torch.Generator().manual_seed(0), share_prompts=True, **kwargs)
    assert torch.equal(a.responses, b.responses)
    torch.testing.assert_close(b.logprobs, a.logprobs, atol=1e-5, rtol=1e-5)


def test_checkpoints_are_pruned_to_the_limit_and_long_prompts_warned(tiny, tmp_path):
    from rlhf.grpo import main as grpo_main

    prompts = tmp_path / "prompts.jsonl"
    long_prompt = "reverse " + "1 2 3 " * 60 + "456:"  # longer than the 256-token context of the tiny model
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["reverse 123:"] * 7 + [long_prompt]))
    out = tmp_path / "o"
    argv = ["--model_name_or_path", str(tiny), "--dataset_name", str(prompts), "--eval_dataset_name",
            str(DATA / "reverse_prompts_eval.jsonl"), "--reward_fn", "rlhf.verifiable:reward", "--output_dir", str(out),
            "--num_generations", "2", "--per_device_train_batch_size", "4", "--max_completion_length", "4",
            "--max_steps", "3", "--num_eval_prompts", "4", "--save_steps", "1", "--save_total_limit", "1", *QUIET]
    with pytest.warns(UserWarning, match="1 of 8 training prompts are longer than the 252 tokens"):
        grpo_main(argv)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]  # 1 pruned; 3 is the final model
    saved = sorted(p.name for p in (out / "checkpoint-2").iterdir())
    assert saved == ["metrics.jsonl", "model.safetensors", "optimizer.pt", "rng_state_0.pth", "scheduler.pt",
                     "trainer_state.json"]
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["update"] == 2


# ----------------------------------------------------------------------------- learning
def _learn(command: str, warm_start: Path, out: Path, *extra: str) -> dict:
    from rlhf.grpo import main as grpo_main
    from rlhf.rloo import main as rloo_main

    from rlhf.methods.reinforce_pp import main as reinforce_pp_main

    main = {"grpo": grpo_main, "rloo": rloo_main, "reinforce_pp": reinforce_pp_main}[command]
    return main(["--model_name_or_path", str(warm_start), *TASK, "--output_dir", str(out), "--num_generations", "8",
                 "--per_device_train_batch_size", "64", "--max_completion_length", "4", "--max_steps", "100",
                 "--learning_rate", "1e-3", "--num_eval_prompts", "200", "--seed", "0", *QUIET, *extra])


@pytest.mark.slow
def test_grpo_learns_the_verifiable_task(warm_start, tmp_path):
    summary = _learn("grpo", warm_start, tmp_path / "grpo")
    assert summary["world_size"] == 1 and summary["episodes"] == 100 * 64
    assert summary["reward_mean_after"] > summary["reward_mean_before"] + 0.1, summary
    rows = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 100 and rows[-1]["reward"] > rows[0]["reward"]
    saved = json.loads((tmp_path / "grpo" / "summary.json").read_text())
    assert saved["command"] == "grpo" and saved["kl_mean"] > 0 and saved["train_runtime"] > 0
    assert (tmp_path / "grpo" / "model.safetensors").exists() and (tmp_path / "grpo" / "config.yaml").exists()
    assert list((tmp_path / "grpo" / "runs").glob("events.*")) == []  # --report_to none


@pytest.mark.slow
def test_rloo_learns_the_verifiable_task(warm_start, tmp_path):
    summary = _learn("rloo", warm_start, tmp_path / "rloo", "--report_to", "tensorboard")
    assert summary["reward_mean_after"] > summary["reward_mean_before"] + 0.1, summary
    assert list((tmp_path / "rloo" / "runs").glob("events.*"))  # tensorboard logs beside metrics.jsonl


def test_reinforce_pp_learns_the_verifiable_task(warm_start, tmp_path):
    """A method added as one module and one registry row: `rlhf reinforce_pp` (one completion per prompt,
    batch-whitened returns, k2 KL in the reward) learns the shipped task from the same warm start."""
    from rlhf.methods.registry import METHODS
    from rlhf.steps.pipeline import STEPS

    assert "reinforce_pp" in METHODS and "reinforce_pp" in STEPS
    out = tmp_path / "rpp"
    assert cli_main(["reinforce_pp", "--model_name_or_path", str(warm_start), *TASK, "--output_dir", str(out),
                     "--per_device_train_batch_size", "64", "--max_completion_length", "4", "--max_steps", "60",
                     "--learning_rate", "1e-3", "--num_eval_prompts", "200", "--seed", "0", *QUIET]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"] == "reinforce_pp" and summary["episodes"] == 60 * 64
    assert summary["reward_mean_after"] > summary["reward_mean_before"] + 0.1, summary
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 60 and all(r["non_score_reward"] <= 0 for r in rows)  # -kl_coef x k2 >= 0 penalty


# ----------------------------------------------------------------------------- two processes
@pytest.mark.slow
def test_two_process_grpo_run(tiny, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/accelerate/cpu_2proc.yaml"),
           "-m", "rlhf", "grpo", "--model_name_or_path", str(tiny), *TASK, "--output_dir", str(out),
           "--num_generations", "4", "--per_device_train_batch_size", "6", "--max_completion_length", "4",
           "--max_steps", "3", "--learning_rate", "1e-3", "--num_eval_prompts", "10", "--seed", "0", *QUIET]
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, textwrap.shorten(result.stderr[-3000:], 3000)
    summary = json.loads((out / "summary.json").read_text())
    # 2 ranks x 6 completions = 3 prompts x 4 generations per update: a group spans both ranks
    assert summary["world_size"] == 2 and summary["episodes"] == 3 * 12 and summary["num_updates"] == 3
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert (out / "model.safetensors").exists()
