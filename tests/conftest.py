"""Suite-wide settings: one torch thread (tiny models on a shared 2-core machine run 10-100x
faster that way) and no Hugging Face Hub access (every model and dataset here is local); the
`ctrl_c_at_step` fixture presses Ctrl-C at a known point of training."""

import os
import signal
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(1)



@pytest.fixture
def ctrl_c_at_step(monkeypatch):
    """``press = ctrl_c_at_step; undo = press(300)``: what a user's Ctrl-C does, at a known point.

    ``RunLogger.advance`` (steps, or episodes for episode budgets) sends SIGINT once, when the count
    reaches ``step``; ``undo()`` puts the plain ``advance`` back (before resuming in the same test)."""
    from classic_rl.logger import RunLogger

    advance = RunLogger.advance

    def press(step: int):
        count = [0]

        def advance_then_ctrl_c(self, n=1):
            advance(self, n)
            count[0] += n
            if count[0] >= step and count[0] - n < step:
                signal.raise_signal(signal.SIGINT)

        monkeypatch.setattr(RunLogger, "advance", advance_then_ctrl_c)
        return lambda: monkeypatch.setattr(RunLogger, "advance", advance)

    return press


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    """Import ``scripts/NAME.py`` as module ``NAME`` (the scripts are not a package)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def save_tiny_model(path: Path, **overrides) -> Path:
    """A small random-init Llama and its tokenizer saved in ``path`` (hidden 32, 2 layers, vocab 300 unless
    ``overrides`` say otherwise): the policy of the rlhf unit tests."""
    from rlhf.steps.tiny_model import TinyModelConfig, build_tiny_model

    settings = {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 2, **overrides}
    model, tokenizer = build_tiny_model(TinyModelConfig(output_dir=str(path), **settings))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
