"""The tiny model builder and model/tokenizer loading: determinism, special tokens, pad handling,
clear errors for missing models, and the reward model's score offset."""

from __future__ import annotations

import json

import pytest
import torch
from rlhf.models import (
    PAD_TOKEN,
    OffsetScore,
    get_score_bias,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    set_score_bias,
)
from rlhf.tiny_model import TinyModelConfig, build_tiny_model
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

pytest_plugins = [f"{__package__}.rlhf_fixtures" if __package__ else "rlhf_fixtures"]

SMALL = {"vocab_size": 400, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


def test_tiny_model_is_deterministic_given_the_seed(tmp_path):
    model_a, tok_a = build_tiny_model(TinyModelConfig(output_dir=str(tmp_path), seed=3, **SMALL))
    model_b, tok_b = build_tiny_model(TinyModelConfig(output_dir=str(tmp_path), seed=3, **SMALL))
    model_c, _ = build_tiny_model(TinyModelConfig(output_dir=str(tmp_path), seed=4, **SMALL))
    assert tok_a.get_vocab() == tok_b.get_vocab()
    state_a, state_b, state_c = model_a.state_dict(), model_b.state_dict(), model_c.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not torch.equal(state_a["model.embed_tokens.weight"], state_c["model.embed_tokens.weight"])


def test_tiny_model_directory_has_model_tokenizer_and_chat_template(rlhf_tiny_model):
    summary = json.loads((rlhf_tiny_model / "summary.json").read_text())
    assert 200_000 <= summary["parameters"] <= 2_000_000
    tokenizer = AutoTokenizer.from_pretrained(rlhf_tiny_model)
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    text = "Review the cafe: the coffee was great."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert len(tokenizer(text)["input_ids"]) <= 10  # task words are single tokens
    chat = [{"role": "user", "content": "Review the cafe:"}, {"role": "assistant", "content": " the coffee was great."}]
    out = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assistant = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(assistant) == " the coffee was great." + tokenizer.eos_token
    model = load_causal_lm(str(rlhf_tiny_model), tokenizer)
    assert model.config.model_type == "llama"
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_missing_model_says_local_path_missing_and_hub_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as err:
        load_causal_lm("nobody-here/no-such-model")
    assert "no such local directory" in str(err.value)
    assert "cannot be reached offline" in str(err.value)
    with pytest.raises(FileNotFoundError, match="no such local directory"):
        load_tokenizer(str(tmp_path / "missing"))


def test_tokenizer_without_pad_token_gets_a_dedicated_one(rlhf_tiny_model, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(rlhf_tiny_model)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.pad_token is None
    fixed = load_tokenizer(str(tmp_path))
    assert fixed.pad_token == PAD_TOKEN and fixed.pad_token_id != fixed.eos_token_id
    # a tokenizer that pads with EOS is fixed the same way (EOS padding teaches a policy never to stop)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(tmp_path / "eos_pad")
    assert load_tokenizer(str(tmp_path / "eos_pad")).pad_token_id != tokenizer.eos_token_id


def test_model_grows_its_embeddings_for_an_added_pad_token(rlhf_tiny_model, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(rlhf_tiny_model)
    vocab = len(tokenizer)
    model = load_causal_lm(str(rlhf_tiny_model))
    model.resize_token_embeddings(vocab - 1)  # a model whose vocabulary has no room for the pad token
    model.save_pretrained(tmp_path)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    fixed = load_tokenizer(str(tmp_path))
    model = load_causal_lm(str(tmp_path), fixed)
    assert model.get_input_embeddings().num_embeddings == len(fixed) >= vocab
    batch = fixed(["Review the cafe:", "How was it"], return_tensors="pt", padding=True)
    assert (batch["input_ids"] == fixed.pad_token_id).any()
    assert torch.isfinite(model(**batch).logits).all()


def test_score_offset_shifts_scores_and_survives_saving(rlhf_tiny_model, tmp_path):
    tokenizer = load_tokenizer(str(rlhf_tiny_model))
    torch.manual_seed(0)
    rm = load_reward_model(str(rlhf_tiny_model), tokenizer)
    batch = tokenizer(["Review the cafe: the coffee was great.", "How was it?"], return_tensors="pt", padding=True)
    base = rm(**batch).logits[:, 0]
    set_score_bias(rm, 1.25)
    assert isinstance(rm.score, OffsetScore) and get_score_bias(rm) == 1.25
    assert torch.allclose(rm(**batch).logits[:, 0], base + 1.25)
    rm.save_pretrained(tmp_path)
    assert set(load_file(tmp_path / "model.safetensors")) >= {"score.weight"}
    assert "score.offset" not in load_file(tmp_path / "model.safetensors")  # the weights stay plain
    again = load_reward_model(str(tmp_path), tokenizer)
    assert torch.allclose(again(**batch).logits[:, 0], base + 1.25, atol=1e-6)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path)  # loads; just without the offset
    assert torch.allclose(plain(**batch).logits[:, 0], base, atol=1e-6)


def test_new_reward_head_uses_the_rlhf_init(rlhf_tiny_model):
    torch.manual_seed(0)
    rm = load_reward_model(str(rlhf_tiny_model))
    d_model = rm.score.weight.shape[1]
    assert rm.score.weight.std().item() == pytest.approx((d_model + 1) ** -0.5, rel=0.25)
