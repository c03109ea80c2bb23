"""`rlhf ppo`: rollout math (truncation, KL shaping, logprobs, padding), the use of the classic_rl PPO
core, bad input, a learning run on a tiny model, and a 2-process run under accelerate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import rlhf.ppo as ppo_module
import torch
from rlhf.ppo import AdaptiveKLController, PPOTrainer, main
from rlhf.ppo_config import PPOConfig, parse_ppo_args
from rlhf.tiny_model import TinyModelConfig, build_tiny_model
from transformers import AutoModelForCausalLM, LlamaForSequenceClassification

from classic_rl.core import losses as core
from rlhf.rl.forward import left_pad, logits_for_responses, token_logprobs
from rlhf.rl.rewards import RewardFunction, apply_missing_stop_penalty, load_reward_function, shape_rewards
from rlhf.rl.sampler import sample_responses, truncate_after_stop
from rlhf.rl.trainable import PolicyAndValue, ValueModel

REPO = Path(__file__).resolve().parents[1]
PROMPTS = str(REPO / "rlhf" / "data" / "prompts.jsonl")
EVAL_PROMPTS = str(REPO / "rlhf" / "data" / "prompts_eval.jsonl")

REWARD_MODULE = '''
import os
from pathlib import Path

def vowels(prompts, completions):
    """Share of the completion's characters that are vowels: dense, and a random tiny LM can climb it."""
    log = os.environ.get("PPO_TEST_LOG")
    if log:
        with open(Path(log) / f"rank{os.environ.get('RANK', '0')}.txt", "a") as f:
            f.write("\\n".join(repr(c) for c in completions) + "\\n")
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]

def wrong_length(prompts, completions):
    return [0.0] * (len(completions) + 1)
'''


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A ~30k-parameter random Llama and its BPE tokenizer, saved like `rlhf tiny-model` does."""
    path = tmp_path_factory.mktemp("tiny")
    cfg = TinyModelConfig(output_dir=str(path), vocab_size=300, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=2)
    model, tokenizer = build_tiny_model(cfg)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, tokenizer


@pytest.fixture(scope="module")
def reward_fn_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rewards") / "ppo_test_rewards.py"
    path.write_text(REWARD_MODULE)
    return path


@pytest.fixture(scope="module")
def reward_model_dir(tiny, tmp_path_factory):
    """A random one-scalar sequence classifier on the tiny model's architecture (a stand-in reward model)."""
    path = tmp_path_factory.mktemp("rm")
    model_dir, tokenizer = tiny
    config = AutoModelForCausalLM.from_pretrained(model_dir).config
    config.num_labels = 1
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _policy(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny[0]).eval()
    return model


def _critic(tiny):
    config = AutoModelForCausalLM.from_pretrained(tiny[0]).config
    config.num_labels = 1
    torch.manual_seed(1)
    return ValueModel.from_sequence_classifier(LlamaForSequenceClassification(config).eval())


def _argv(tiny, reward_fn_file, out, *extra):
    return [
        "--model_name_or_path", str(tiny[0]), "--dataset_name", PROMPTS, "--eval_dataset_name", EVAL_PROMPTS,
        "--output_dir", str(out), "--reward_fn", f"{reward_fn_file}:vowels", "--response_length", "8",
        "--per_device_train_batch_size", "16", "--num_mini_batches", "2", "--num_eval_prompts", "32",
        "--temperature", "1.0", "--num_sample_generations", "0", "--disable_tqdm", "--use_cpu", *extra,
    ]


# ----------------------------------------------------------------------------- rollout math
def test_kl_shaping_puts_score_at_last_real_token():
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, -0.1, 0.7, 0.9]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    scores = torch.tensor([2.0, -1.0])
    rewards, non_score = shape_rewards(scores, kl * mask, mask, mask.sum(1) - 1, kl_coef=0.5)
    expected = torch.tensor([[-0.05, -0.10, -0.15 + 2.0, 0.0], [-0.25 - 1.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(rewards, expected)
    torch.testing.assert_close(non_score, torch.tensor([[-0.05, -0.10, -0.15, 0.0], [-0.25, 0.0, 0.0, 0.0]]))


def test_kl_estimators_k1_and_k3():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -1.0, -0.5])
    torch.testing.assert_close(core.kl_penalty(logp, ref, "k1"), logp - ref)
    rho = torch.exp(ref - logp)
    k3 = core.kl_penalty(logp, ref, "k3")
    torch.testing.assert_close(k3, (rho - 1) - torch.log(rho))
    assert (k3 >= 0).all() and k3[2] == 0
    with pytest.raises(ValueError, match="k1"):
        core.kl_penalty(logp, ref, "k4")


def test_whitened_rewards_keep_their_mean_and_zero_padding():
    torch.manual_seed(0)
    kl = torch.rand(4, 5)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1, 3:] = False
    scores = torch.randn(4)
    plain, _ = shape_rewards(scores, kl * mask, mask, mask.sum(1) - 1, 0.1)
    white, _ = shape_rewards(scores, kl * mask, mask, mask.sum(1) - 1, 0.1, whiten=True)
    valid = mask.float()
    assert (white[~mask] == 0).all()
    torch.testing.assert_close(core.masked_mean(white, valid), core.masked_mean(plain, valid))
    torch.testing.assert_close(core.masked_var(white, valid), torch.tensor(1.0), atol=1e-4, rtol=0)


def test_truncation_after_first_stop_token_and_missing_eos_penalty():
    eos, pad = 9, 0
    responses = torch.tensor([[5, 9, 7, 9], [5, 6, 7, 8], [9, 3, 3, 3], [0, 4, 9, 0]])
    cut = truncate_after_stop(responses, eos, pad)
    assert cut.responses.tolist() == [[5, 9, 0, 0], [5, 6, 7, 8], [9, 0, 0, 0], [0, 4, 9, 0]]
    # the mask comes from the stop position: a sampled pad id (row 3, column 0) is still a real token
    assert cut.mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]]
    assert cut.last_index.tolist() == [1, 3, 0, 2]
    assert cut.has_stop.tolist() == [True, False, True, True]
    scores = apply_missing_stop_penalty(torch.tensor([1.0, 1.0, 0.5, 0.0]), cut.has_stop, 2.0)
    assert scores.tolist() == [1.0, -1.0, 0.5, 0.0]
    assert apply_missing_stop_penalty(scores, cut.has_stop, None) is scores
    no_stop = truncate_after_stop(responses, None, pad)
    assert no_stop.mask.all() and no_stop.last_index.tolist() == [3, 3, 3, 3]


def test_left_padded_batch_gives_same_logprobs_and_values_as_each_sequence_alone(tiny):
    policy, critic = _policy(tiny), _critic(tiny)
    head_model = PolicyAndValue(_policy(tiny))  # value head on the policy
    torch.nn.init.normal_(head_model.value_head.weight)
    queries = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    responses = torch.tensor([[20, 21, 22], [23, 24, 25], [26, 27, 28]])
    batch_q, batch_m = left_pad(queries, pad_token_id=1)
    qr = torch.cat([batch_q, responses], 1)
    am = torch.cat([batch_m, torch.ones_like(responses)], 1)
    P = batch_q.shape[1]
    with torch.no_grad():
        batch_lp = token_logprobs(logits_for_responses(policy, qr, am, P), responses, 0.7)
        batch_v = critic(qr, am)[:, P - 1 : -1]
        _, batch_hv = head_model(qr, am, P)
        for i, q in enumerate(queries):
            alone = torch.tensor([q + responses[i].tolist()])
            ones = torch.ones_like(alone)
            lp = token_logprobs(logits_for_responses(policy, alone, ones, len(q)), responses[i : i + 1], 0.7)
            torch.testing.assert_close(batch_lp[i : i + 1], lp, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batch_v[i : i + 1], critic(alone, ones)[:, len(q) - 1 : -1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batch_hv[i : i + 1], head_model(alone, ones, len(q))[1], atol=1e-5, rtol=1e-5)
    assert batch_v.std() > 0 and batch_hv.std() > 0  # the comparison is not between constants


def test_sampled_logprobs_match_a_full_forward_recomputation_with_temperature(tiny):
    policy, tokenizer = _policy(tiny), tiny[1]
    queries, mask = left_pad(tokenizer(["Review the cafe:", "How was the gym downtown?"])["input_ids"],
                             tokenizer.pad_token_id)
    T = 0.7
    out = sample_responses(policy, queries, mask, max_new_tokens=10, temperature=T,
                           pad_token_id=tokenizer.pad_token_id, stop_token_ids=(tokenizer.eos_token_id,),
                           generator=torch.Generator().manual_seed(0))
    cut = truncate_after_stop(out.responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
    qr = torch.cat([queries, cut.responses], 1)
    am = torch.cat([mask, cut.mask.long()], 1)
    with torch.no_grad():
        logits = logits_for_responses(policy, qr, am, queries.shape[1])
    recomputed = token_logprobs(logits, cut.responses, T)
    torch.testing.assert_close(out.logprobs[cut.mask], recomputed[cut.mask], atol=1e-5, rtol=1e-5)
    # the temperature matters: logprobs at T=1 differ, so the check above would catch a missing / T
    assert (token_logprobs(logits, cut.responses, 1.0)[cut.mask] - out.logprobs[cut.mask]).abs().max() > 1e-2
    # same generator seed, same samples
    again = sample_responses(policy, queries, mask, max_new_tokens=10, temperature=T,
                             pad_token_id=tokenizer.pad_token_id, stop_token_ids=(tokenizer.eos_token_id,),
                             generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.responses, out.responses)


def test_sampling_pads_after_the_stop_token_and_ends_when_all_stopped(tiny):
    policy, pad = _policy(tiny), tiny[1].pad_token_id
    queries, mask = left_pad([[10, 11], [12], [13, 14, 15]], pad_token_id=pad)
    every_token = range(policy.config.vocab_size)
    out = sample_responses(policy, queries, mask, max_new_tokens=20, temperature=1.0, pad_token_id=pad,
                           stop_token_ids=every_token, generator=torch.Generator().manual_seed(0))
    assert out.responses.shape == (3, 1)  # everyone stopped after one token: no wasted steps
    half = [t for t in every_token if t % 7 == 0]
    out = sample_responses(policy, queries, mask, max_new_tokens=30, temperature=1.0, pad_token_id=pad,
                           stop_token_ids=half, generator=torch.Generator().manual_seed(0))
    stopped = torch.isin(out.responses, torch.tensor(half))
    after_stop = (stopped.long().cumsum(1) - stopped.long()) > 0
    assert after_stop.any() and (out.responses[after_stop] == pad).all()
    assert (out.logprobs[~after_stop] < 0).all()


def test_adaptive_kl_controller_moves_beta_towards_the_target():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=100, adaptive=True)
    ctl.update(kl=12.0, n_steps=10)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    ctl.update(kl=3.0, n_steps=10)  # error -0.5 clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98)
    fixed = AdaptiveKLController(0.1, 6.0, 100, adaptive=False)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.1


# ----------------------------------------------------------------------------- config and bad input
def test_config_takes_trl_field_names_from_flags_and_yaml(tmp_path):
    yaml_file = tmp_path / "ppo.yaml"
    yaml_file.write_text("kl_coef: 0.2\nnum_ppo_epochs: 2\nlora_target_modules: [q_proj, v_proj]\n")
    cfg = parse_ppo_args(["--config", str(yaml_file), "--output_dir", "o", "--model_name_or_path", "m",
                          "--dataset_name", "d", "--reward_fn", "a:b", "--kl_coef", "0.3", "--kl_estimator", "k3",
                          "--use_peft", "--gradient_accumulation_steps", "2", "--per_device_train_batch_size", "4"])
    assert (cfg.kl_coef, cfg.num_ppo_epochs, cfg.kl_estimator, cfg.use_peft) == (0.3, 2, "k3", True)
    assert cfg.lora_target_modules == ["q_proj", "v_proj"]
    assert cfg.mini_batch_size == 8 and cfg.local_batch_size == 8
    assert cfg.num_updates(world_size=2, num_prompts=100) == 7  # ceil(100 / 16)
    with pytest.raises(ValueError, match="exactly one of --reward_model_path"):
        PPOConfig(output_dir="o", model_name_or_path="m", dataset_name="d").validate()
    with pytest.raises(ValueError, match="temperature"):
        PPOConfig(output_dir="o", model_name_or_path="m", dataset_name="d", reward_fn="a:b", temperature=0).validate()


def test_reward_fn_that_cannot_be_imported_or_returns_wrong_length(tmp_path, reward_fn_file):
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        load_reward_function("no_such_module_xyz:score")
    with pytest.raises(ValueError, match="module:function"):
        load_reward_function("rlhf.task")
    with pytest.raises(ValueError, match="no callable 'missing'"):
        load_reward_function("rlhf.task:missing")
    fn = RewardFunction(load_reward_function(f"{reward_fn_file}:wrong_length"), "wrong_length")
    with pytest.raises(ValueError, match="returned 3 scores for 2 completions"):
        fn(["a", "b"], ["x", "y"])
    gold = RewardFunction(load_reward_function("rlhf.task:gold_reward"))
    assert gold(["Review the cafe:"], [" the coffee was great."]).tolist() == [1.0]


def test_failed_run_leaves_nothing_in_output_dir(tiny, reward_fn_file, tmp_path):
    out = tmp_path / "out"
    argv = _argv(tiny, reward_fn_file, out, "--total_episodes", "32")
    argv[argv.index("--reward_fn") + 1] = f"{reward_fn_file}:wrong_length"
    with pytest.raises(ValueError, match="one float per"):
        main(argv)
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


# ----------------------------------------------------------------------------- the trainer
def test_ppo_update_goes_through_the_classic_rl_core(tiny, reward_fn_file, tmp_path, monkeypatch):
    """One update: GAE once (gamma 1), then epochs x minibatches x micro batches of the core's clipped
    surrogate; the optimizer steps once per minibatch (accelerate's accumulation)."""
    from classic_rl.core import advantages as core_advantages
    from classic_rl.core import losses as core_losses

    calls = {}

    def spy(name, fn):
        def wrapper(*args, **kwargs):
            calls.setdefault(name, []).append((args, kwargs))
            return fn(*args, **kwargs)
        monkeypatch.setattr(ppo_module, name, wrapper)

    spy("gae", core_advantages.gae)
    spy("clipped_surrogate", core_losses.clipped_surrogate)
    cfg = parse_ppo_args(_argv(tiny, reward_fn_file, tmp_path / "o", "--total_episodes", "32",
                               "--gradient_accumulation_steps", "2", "--per_device_train_batch_size", "8"))
    trainer = PPOTrainer(cfg)
    steps = []
    inner = trainer.optimizer.optimizer
    original_step = inner.step
    monkeypatch.setattr(inner, "step", lambda *a, **k: steps.append(1) or original_step(*a, **k))
    metrics, batch = trainer.step(*trainer.next_batch())
    assert batch.responses.shape[0] == 32
    # 4 epochs x 2 minibatches x 2 micro batches of 8 sequences; 4 x 2 optimizer steps
    surrogate = calls["clipped_surrogate"]
    assert len(surrogate) == cfg.num_ppo_epochs * 4 and all(a[0].shape[0] == 8 for a, _ in surrogate)
    assert len(steps) == cfg.num_ppo_epochs * 2
    assert len(calls["gae"]) == 1 and calls["gae"][0][1]["gamma"] == 1.0
    assert metrics["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference before the first step
    for key in ("objective/kl", "objective/entropy", "objective/scores", "objective/rlhf_reward",
                "policy/approxkl_avg", "policy/clipfrac_avg", "val/clipfrac_avg", "loss/policy_avg",
                "loss/value_avg", "time/rollout", "episode", "lr"):
        assert key in metrics
    assert metrics["episode"] == 32


@pytest.mark.slow
def test_ppo_raises_the_reward_of_a_tiny_model(tiny, reward_fn_file, tmp_path):
    out = tmp_path / "run"
    summary = main(_argv(tiny, reward_fn_file, out, "--total_episodes", "480", "--learning_rate", "3e-3",
                         "--kl_coef", "0.01", "--missing_eos_penalty", "0", "--seed", "0"))
    assert summary["world_size"] == 1
    assert summary["reward_mean_after"] > summary["reward_mean_before"] + 0.05, summary
    assert summary["train_runtime"] > 0 and summary["kl_mean"] > 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == summary["num_updates"] == 15
    assert rows[-1]["episode"] == 480 and rows[-1]["lr"] < rows[0]["lr"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved["reward_mean_after"] == summary["reward_mean_after"]
    assert (out / "config.yaml").exists() and (out / "tokenizer_config.json").exists()
    AutoModelForCausalLM.from_pretrained(out)  # the policy loads back as a plain causal LM


def test_ppo_with_reward_model_critic_and_with_lora_value_head(tiny, reward_model_dir, reward_fn_file, tmp_path):
    argv = _argv(tiny, reward_fn_file, tmp_path / "rm", "--total_episodes", "32")
    i = argv.index("--reward_fn")
    argv[i : i + 2] = ["--reward_model_path", str(reward_model_dir)]
    cfg = parse_ppo_args(argv)
    trainer = PPOTrainer(cfg)
    rm_head = trainer.reward_model.score.weight
    critic_head = trainer.accelerator.unwrap_model(trainer.model).critic.head.weight
    torch.testing.assert_close(critic_head, rm_head)  # critic initialised from the reward model
    metrics, batch = trainer.step(*trainer.next_batch())
    assert batch.raw_scores.std() > 0 and metrics["objective/kl"] == pytest.approx(0.0, abs=1e-5)

    lora = parse_ppo_args(_argv(tiny, reward_fn_file, tmp_path / "lora", "--total_episodes", "32", "--use_peft",
                                "--value_head_on_policy", "--lora_r", "4", "--learning_rate", "1e-2"))
    trainer = PPOTrainer(lora)
    assert trainer.ref_policy is None  # the reference is the policy with its adapter disabled
    first, _ = trainer.step(*trainer.next_batch())
    second, _ = trainer.step(*trainer.next_batch())
    assert first["objective/kl"] == pytest.approx(0.0, abs=1e-5) and abs(second["objective/kl"]) > 1e-4


@pytest.mark.slow
def test_two_process_run_under_accelerate(tiny, reward_fn_file, tmp_path):
    out, log = tmp_path / "out", tmp_path / "log"
    log.mkdir()
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PPO_TEST_LOG": str(log),
           "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "rlhf", "ppo", *_argv(tiny, reward_fn_file, out, "--total_episodes", "64",
                                       "--per_device_train_batch_size", "8", "--learning_rate", "1e-3")]
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, textwrap.shorten(result.stderr[-3000:], 3000)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["episodes"] == 64 and summary["num_updates"] == 2
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    rank0, rank1 = (log / "rank0.txt").read_text(), (log / "rank1.txt").read_text()
    assert rank0 and rank1 and rank0 != rank1  # each rank sampled its own completions
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())
