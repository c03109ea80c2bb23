"""The sampler interface: the built-in sampler is seeded, and evaluation samples through it exactly as
training does (the pipeline's comparison, the label page and the reward calibration use the same samples)."""

from __future__ import annotations

import torch

from rlhf.rl.sampler import HFSampler, Sampler, SamplingSettings, truncate_after_stop
from rlhf.steps.evaluate import sample_completions
from rlhf.steps.tiny_model import TinyModelConfig, build_tiny_model

PROMPTS = ["Review the cafe near the station:", "How was the museum?", "Review the park:"]


def _tiny():
    model, tokenizer = build_tiny_model(TinyModelConfig(output_dir="unused", vocab_size=300, hidden_size=32,
                                                        intermediate_size=64, num_hidden_layers=2, num_attention_heads=2))
    return model.eval(), tokenizer


def test_same_seed_same_samples_and_the_engine_logprobs_are_the_models():
    model, tokenizer = _tiny()
    sampler = HFSampler(model, SamplingSettings(12, 0.8, tokenizer.pad_token_id, tokenizer.eos_token_id, batch_size=2), "cpu")
    assert isinstance(sampler, Sampler)  # name, sample, sync_weights, close
    assert all(callable(getattr(sampler, name)) for name in ("sample", "sync_weights", "close"))
    ids = tokenizer(PROMPTS)["input_ids"] * 2
    first = sampler.sample(ids, torch.Generator().manual_seed(5))
    again = sampler.sample(ids, torch.Generator().manual_seed(5))
    other = sampler.sample(ids, torch.Generator().manual_seed(6))
    assert torch.equal(first.responses, again.responses) and torch.equal(first.logprobs, again.logprobs)
    assert not torch.equal(first.responses, other.responses)
    assert first.responses.shape[0] == len(ids) and first.responses.shape[1] <= 12
    # the log-probabilities it returns are the tempered softmax of the model's own forward
    from rlhf.rl.forward import left_pad, logits_for_responses, token_logprobs

    queries, mask = left_pad(ids, tokenizer.pad_token_id)
    cut = truncate_after_stop(first.responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
    qr = torch.cat([queries, cut.responses], 1)
    am = torch.cat([mask, cut.mask.long()], 1)
    with torch.no_grad():
        recomputed = token_logprobs(logits_for_responses(model, qr, am, queries.shape[1]), cut.responses, 0.8)
    torch.testing.assert_close(recomputed * cut.mask, first.logprobs * cut.mask, atol=1e-4, rtol=1e-4)


def test_evaluation_samples_through_the_training_sampler():
    model, tokenizer = _tiny()
    got = sample_completions(model, tokenizer, PROMPTS, max_new_tokens=10, temperature=1.0, seed=3)
    sampler = HFSampler(model, SamplingSettings(10, 1.0, tokenizer.pad_token_id, tokenizer.eos_token_id), "cpu")
    samples = sampler.sample(tokenizer(PROMPTS)["input_ids"], torch.Generator().manual_seed(3))
    cut = truncate_after_stop(samples.responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
    expected = tokenizer.batch_decode(cut.responses.masked_fill(~cut.mask, tokenizer.pad_token_id), skip_special_tokens=True)
    assert got.completions == expected and got.ended == cut.has_stop.tolist()
    greedy = sample_completions(model, tokenizer, PROMPTS, max_new_tokens=10, temperature=0.0, seed=0)
    assert greedy.completions == sample_completions(model, tokenizer, PROMPTS, max_new_tokens=10, temperature=0.0, seed=9).completions
