"""`rlhf tiny-model`: a small random-init causal LM and a tokenizer trained on shipped text, built offline.

    rlhf tiny-model --output_dir runs/tiny [--hidden_size 128 --num_hidden_layers 2 ...] [--config FILE.yaml]

The model is a standard transformers Llama (`LlamaForCausalLM`), so every code path that serves a real
checkpoint serves it too. The tokenizer is a byte-level BPE (GPT-2 style: any text encodes, no unknown
tokens) trained with `tokenizers` on rlhf/data/corpus.txt, with an EOS token, a distinct pad token, and
a chat template whose assistant turns end with EOS and are marked for assistant-only losses.
Both are saved with `save_pretrained`. The same seed gives the same weights and vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from classic_rl.seeding import seed_everything
from rlhf.common.checkpoints import locked_output_dir
from rlhf.common.data import shipped_data_dir
from rlhf.common.models import PAD_TOKEN
from rlhf.common.utils import (
    command_options,
    count_parameters,
    is_main_process,
    parse_args,
    staged_output,
    world_size,
    write_config,
    write_json,
)

EOS_TOKEN = "<|endoftext|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# Turns are "<|role|>\ncontent\n"; an assistant turn ends with EOS. {% generation %} marks the tokens that
# `assistant_only_loss` trains on.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass
class TinyModelConfig:
    """Size of the tiny Llama and of its tokenizer; defaults give about 0.5M parameters."""

    output_dir: str = field(metadata={"help": "Directory to write the model and tokenizer to."})
    vocab_size: int = field(default=1024, metadata={"help": "BPE vocabulary size, special tokens included."})
    hidden_size: int = field(default=128, metadata={"help": "Width of the residual stream."})
    intermediate_size: int = field(default=256, metadata={"help": "Width of the MLP."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Transformer blocks."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads."})
    max_position_embeddings: int = field(default=256, metadata={"help": "Longest sequence (tokens)."})
    corpus: str | None = field(
        default=None, metadata={"help": "Text file to train the tokenizer on (default: rlhf/data/corpus.txt)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the weight initialisation."})


def train_tokenizer(lines: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `lines`; add EOS, pad and chat-role special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = [EOS_TOKEN, PAD_TOKEN, *ROLE_TOKENS]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(lines, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(cfg: TinyModelConfig) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """The random-init model and trained tokenizer described by `cfg` (deterministic given cfg.seed)."""
    corpus = Path(cfg.corpus) if cfg.corpus else shipped_data_dir() / "corpus.txt"
    if not corpus.exists():
        raise FileNotFoundError(f"corpus '{corpus}' not found; run scripts/make_rlhf_data.py or pass --corpus")
    lines = [line for line in corpus.read_text().splitlines() if line.strip()]
    tokenizer = train_tokenizer(lines, cfg.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    seed_everything(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model, tokenizer


def main(argv: list[str] | None = None) -> dict:
    """Build the tiny model and tokenizer and save both to --output_dir; return the summary."""
    (cfg,) = parse_args([TinyModelConfig], argv, description=__doc__, command="tiny-model")
    model, tokenizer = build_tiny_model(cfg)
    summary = {
        "command": "tiny-model",
        "parameters": count_parameters(model),
        "vocab_size": len(tokenizer),
        "world_size": world_size(),  # under a launcher every rank builds the same model; rank 0 saves it
        "seed": cfg.seed,
    }
    from accelerate import PartialState

    PartialState()  # join the process group under a launcher: every rank checks the folder before rank 0 writes
    with locked_output_dir(cfg.output_dir, overwrite=command_options().overwrite_output_dir) as out, \
            staged_output(out) as staging:  # files replace earlier ones only once all are written
        if is_main_process():
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            write_config(staging, {"tiny_model": cfg})
            write_json(staging / "summary.json", summary)
    if is_main_process():
        print(f"rlhf tiny-model: {summary['parameters']:,} parameters, vocabulary {summary['vocab_size']} "
              f"-> {cfg.output_dir}")
    return summary
