"""`rlhf ppo` pieces for scale: inverse-CDF sampling, the DeepSpeed setting checks, rank-synchronised
generation, equal evaluation work per rank, and the `--use_vllm` flag."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch
from rlhf.distributed import all_processes_finished, check_deepspeed_settings, needs_synchronised_generation
from rlhf.ppo import PPOTrainer
from rlhf.ppo_config import PPOConfig
from transformers.modeling_outputs import CausalLMOutputWithPast

from rlhf.rl.forward import entropy_from_logits, logprobs_and_entropy, token_logprobs
from rlhf.rl.prompts import PromptStream
from rlhf.rl.sampler import sample_from_logits, sample_responses

# ----------------------------------------------------------------------------- inverse-CDF sampling
LOGITS = torch.tensor([2.0, 0.5, -float("inf"), 1.0, -1.0, 0.0, -float("inf"), 1.5])


def _chi_square(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's statistic of the token counts against ``probs`` (categories with p > 0)."""
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    expected = probs.double() * tokens.numel()
    keep = expected > 0
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_inverse_cdf_sampling_draws_from_the_tempered_softmax(temperature):
    n = 200_000
    logits = LOGITS.expand(n, -1)
    tokens, logp = sample_from_logits(logits, temperature, torch.Generator().manual_seed(0))
    probs = torch.softmax(LOGITS / temperature, -1)
    # 5 degrees of freedom (6 tokens of non-zero probability): 20.5 is the 0.999 quantile.
    assert _chi_square(tokens, probs) < 20.5
    assert not torch.isin(tokens, torch.tensor([2, 6])).any()  # zero-probability tokens never drawn
    torch.testing.assert_close(logp[0], torch.log_softmax(LOGITS / temperature, -1))
    # The temperature is applied: against the other temperature's probabilities the fit is far off.
    other = torch.softmax(LOGITS / (1.5 - temperature), -1)
    assert _chi_square(tokens, other) > 1000
    # torch.multinomial on the same probabilities passes the same test (same distribution).
    reference = torch.multinomial(probs.expand(n, -1), 1, generator=torch.Generator().manual_seed(1)).squeeze(1)
    assert _chi_square(reference, probs) < 20.5


def test_inverse_cdf_sampling_is_deterministic_per_seed_and_one_draw_per_row():
    logits = torch.randn(64, 1024, generator=torch.Generator().manual_seed(0))
    a, _ = sample_from_logits(logits, 0.7, torch.Generator().manual_seed(3))
    b, _ = sample_from_logits(logits, 0.7, torch.Generator().manual_seed(3))
    c, _ = sample_from_logits(logits, 0.7, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(5)
    sample_from_logits(logits, 0.7, g)
    assert torch.equal(g.get_state(), _after_one_draw_per_row(5, 64))  # one uniform per row consumed


def _after_one_draw_per_row(seed: int, rows: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    torch.rand(rows, 1, generator=g)
    return g.get_state()


def test_sampling_loop_stops_when_the_all_finished_rule_says_so():
    """The stop rule is a parameter: with one that answers False (another rank still generating), the
    loop runs to max_new_tokens even though this batch finished at once."""

    class EveryTokenStops(torch.nn.Module):
        def forward(self, input_ids, attention_mask, position_ids, use_cache, past_key_values=None):
            return CausalLMOutputWithPast(logits=torch.zeros(input_ids.shape[0], 1, 5), past_key_values=torch.zeros(1))

    model = EveryTokenStops()
    queries, mask = torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)
    kwargs = {"max_new_tokens": 6, "temperature": 1.0, "pad_token_id": 0, "stop_token_ids": range(5)}
    assert sample_responses(model, queries, mask, **kwargs).responses.shape == (2, 1)
    out = sample_responses(model, queries, mask, all_finished=lambda done: False, **kwargs)
    assert out.responses.shape == (2, 6) and (out.responses[:, 1:] == 0).all()  # pad after the stop token
    assert all_processes_finished(torch.tensor([True, True])) and not all_processes_finished(torch.tensor([True, False]))


def test_fused_logprobs_and_entropy_equal_the_separate_functions_and_gradients():
    logits = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(0), requires_grad=True)
    tokens = torch.randint(0, 40, (3, 5), generator=torch.Generator().manual_seed(1))
    logprobs, entropy = logprobs_and_entropy(logits, tokens, 0.7)
    expected = token_logprobs(logits, tokens, 0.7)
    torch.testing.assert_close(logprobs, expected)
    torch.testing.assert_close(entropy, entropy_from_logits(logits.detach(), 0.7))
    assert not entropy.requires_grad
    (grad,) = torch.autograd.grad(logprobs.sum(), logits)
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(grad, expected_grad)


# ----------------------------------------------------------------------------- backends
def _fake_accelerator(deepspeed_config=None, fsdp_version=None, zero_stage=0, processes=2, accumulation=1):
    plugin = None if deepspeed_config is None else SimpleNamespace(deepspeed_config=deepspeed_config, zero_stage=zero_stage)
    fsdp = None if fsdp_version is None else SimpleNamespace(fsdp_version=fsdp_version)
    state = SimpleNamespace(deepspeed_plugin=plugin, fsdp_plugin=fsdp)
    return SimpleNamespace(state=state, num_processes=processes, gradient_accumulation_steps=accumulation)


def test_deepspeed_settings_must_match_accumulation_and_clipping():
    check_deepspeed_settings(_fake_accelerator(), 4, 1.0)  # no DeepSpeed: nothing to check
    check_deepspeed_settings(_fake_accelerator({"gradient_accumulation_steps": 2, "gradient_clipping": 1.0}), 2, 1.0)
    check_deepspeed_settings(_fake_accelerator({"gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}), 3, 0.5)
    with pytest.raises(ValueError, match="gradient_accumulation_steps: 1 but --gradient_accumulation_steps is 2"):
        check_deepspeed_settings(_fake_accelerator({"gradient_accumulation_steps": 1, "gradient_clipping": 1.0}), 2, 1.0)
    with pytest.raises(ValueError, match="gradient_clipping: 1.0 but --max_grad_norm is 0.5"):
        check_deepspeed_settings(_fake_accelerator({"gradient_accumulation_steps": 1, "gradient_clipping": 1.0}), 1, 0.5)
    check_deepspeed_settings(_fake_accelerator({"gradient_accumulation_steps": 1, "gradient_clipping": 0.0}), 1, None)
    # accelerate's own plugin, as built from configs/accelerate/deepspeed_zero3.yaml's fields
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin(zero_stage=3, gradient_accumulation_steps=1, gradient_clipping=1.0)
    accelerator = _fake_accelerator(plugin.deepspeed_config, zero_stage=3)
    check_deepspeed_settings(accelerator, 1, 1.0)
    with pytest.raises(ValueError, match="gradient_accumulation_steps: 1 but --gradient_accumulation_steps is 4"):
        check_deepspeed_settings(accelerator, 4, 1.0)


def test_generation_is_synchronised_only_where_a_forward_is_a_collective():
    assert not needs_synchronised_generation(_fake_accelerator())  # DDP
    assert not needs_synchronised_generation(_fake_accelerator(fsdp_version=2, processes=1))
    assert needs_synchronised_generation(_fake_accelerator(fsdp_version=2))
    assert needs_synchronised_generation(_fake_accelerator(fsdp_version=1))
    zero3 = _fake_accelerator({"gradient_accumulation_steps": 1}, zero_stage=3)
    assert not needs_synchronised_generation(zero3, gather_deepspeed3_params=True)  # gathered once: local forwards
    assert needs_synchronised_generation(zero3, gather_deepspeed3_params=False)
    assert not needs_synchronised_generation(_fake_accelerator({"gradient_accumulation_steps": 1}, zero_stage=2), False)


def test_held_out_evaluation_gives_every_rank_the_same_work_and_counts_each_prompt_once():
    """5 held-out prompts over 2 ranks: both ranks roll out 3 (rank 1 repeats one with weight 0)."""
    sizes: list[int] = []

    def rollout(prompts, ids, generator):
        sizes.append(len(prompts))
        scores = torch.tensor([float(p) for p in prompts])
        zeros = torch.zeros(len(prompts), 2)
        return SimpleNamespace(raw_scores=scores, scores=scores, logprobs=zeros, ref_logprobs=zeros,
                               mask=torch.ones(len(prompts), 2, dtype=torch.bool), loss_mask=torch.ones(len(prompts), 2),
                               has_stop=torch.ones(len(prompts), dtype=torch.bool), prompts=prompts)

    reduced = []
    for rank in (0, 1):
        trainer = PPOTrainer.__new__(PPOTrainer)
        trainer.config = PPOConfig(per_device_train_batch_size=2, seed=0)
        trainer.rank, trainer.world_size, trainer.device = rank, 2, torch.device("cpu")
        trainer.prompts = PromptStream.__new__(PromptStream)
        trainer.prompts.rank, trainer.prompts.world_size = rank, 2
        trainer.prompts.eval_prompts = ["10", "11", "12", "13", "14"]
        trainer.prompts.eval_ids = [[i] for i in range(5)]
        trainer.rollout = rollout
        trainer.accelerator = SimpleNamespace(reduce=lambda sums, reduction: reduced.append(sums.clone()) or sums)
        trainer.evaluate_reward()
    assert sizes == [2, 1, 2, 1]  # 3 prompts per rank in chunks of the local batch size 2
    total = reduced[0] + reduced[1]
    assert total[4].item() == 5 and total[0].item() == pytest.approx(10 + 11 + 12 + 13 + 14)


@pytest.mark.slow
def test_lora_under_sharded_training_is_refused_before_loading_anything(tmp_path):
    config = PPOConfig(output_dir=str(tmp_path), model_name_or_path="never-loaded", dataset_name="d", reward_fn="a:b",
                       use_peft=True, use_cpu=True)
    for sharded in (_fake_accelerator({"gradient_accumulation_steps": 1}, zero_stage=3), _fake_accelerator(fsdp_version=2)):
        sharded.process_index, sharded.device = 0, torch.device("cpu")
        with pytest.raises(ValueError, match="--use_peft under DeepSpeed ZeRO-3 or FSDP"):
            PPOTrainer(config, accelerator=sharded)


# ----------------------------------------------------------------------------- vLLM
def test_use_vllm_without_vllm_names_the_extra(tmp_path):
    config = PPOConfig(output_dir=str(tmp_path), model_name_or_path="m", dataset_name="d", reward_fn="a:b", use_vllm=True)
    if importlib.util.find_spec("vllm") is not None:
        config.validate()  # installed: accepted (tests/test_rlhf_vllm.py runs it)
        return
    with pytest.raises(ValueError, match="--use_vllm") as err:
        config.validate()
    assert "rl-course-toolkit[vllm]" in str(err.value)
    config.use_vllm = False
    config.validate()
