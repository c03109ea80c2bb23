"""A full disk while a run writes: one line "no space left on device writing FILE; the last complete checkpoint
is step N ...", exit 1, no staging folder left behind, every earlier checkpoint intact. The writers are made to
fail as they do on a full disk: safetensors' SafetensorError ("... No space left on device"), an
OSError(ENOSPC) from torch.save."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf import cli

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "rlhf" / "data"
REWARD = f"{REPO / 'tests' / 'same_numbers_reward.py'}:letter_fraction"


class SafetensorError(Exception):
    """What safetensors raises when the disk is full (its own exception type, not an OSError)."""


FULL = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("full_disk") / "tiny"
    assert cli.main(["tiny-model", "--output_dir", str(path), "--vocab_size", "300", "--hidden_size", "32",
                     "--intermediate_size", "64", "--num_hidden_layers", "1", "--num_attention_heads", "2"]) == 0
    return path


def _fail_on_call(monkeypatch, target: str, nth: int, error: BaseException) -> None:
    """Make ``target`` (module.attribute) raise ``error`` on its ``nth`` call (1-based), as a disk filling up."""
    module_name, attribute = target.rsplit(".", 1)
    module = __import__(module_name, fromlist=[attribute])
    original, calls = getattr(module, attribute), [0]

    def write(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(module, attribute, write)


def _the_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def _no_staging(out: Path) -> None:
    assert not (out / ".staging").exists() and not (out / ".rlhf-staging").exists(), sorted(p.name for p in out.iterdir())


def _sft(tiny: Path, out: Path) -> list[str]:
    return ["sft", "--model_name_or_path", str(tiny), "--dataset_name", str(DATA / "sft_eval.jsonl"),
            "--output_dir", str(out), "--max_steps", "4", "--save_steps", "2", "--per_device_train_batch_size", "4",
            "--report_to", "none", "--disable_tqdm", "true", "--eval_holdout_fraction", "0"]


def test_sft_checkpoint_on_a_full_disk(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sft"
    # save_pretrained of checkpoint-2 is the first weight file written, checkpoint-4's the second
    _fail_on_call(monkeypatch, "transformers.modeling_utils.safe_save_file", 2, SafetensorError(FULL))
    assert cli.main(_sft(tiny, out)) == 1
    line = _the_line(capsys)
    assert line == (f"rlhf sft: error: no space left on device writing {out / 'checkpoint-4'}; the last complete "
                    f"checkpoint is step 2 ({out / 'checkpoint-2'}); free some space and continue with the same "
                    "command and --resume_from_checkpoint true")
    _no_staging(out)
    assert load_file(out / "checkpoint-2" / "model.safetensors")  # intact
    assert not (out / "checkpoint-4").exists() and not (out / "model.safetensors").exists()


def test_sft_final_model_on_a_full_disk(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sft"
    _fail_on_call(monkeypatch, "transformers.modeling_utils.safe_save_file", 3, SafetensorError(FULL))
    assert cli.main(_sft(tiny, out)) == 1
    assert _the_line(capsys).startswith(f"rlhf sft: error: no space left on device writing {out}; the last "
                                        "complete checkpoint is step 4")
    _no_staging(out)
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-2", "checkpoint-4"}
    assert not (out / "model.safetensors").exists() and not (out / "summary.json").exists()


def test_ppo_checkpoint_on_a_full_disk(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ppo"
    original_save = torch.save

    def save(obj, path, *args, **kwargs):
        if "checkpoint-2" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert cli.main(["ppo", "--model_name_or_path", str(tiny), "--dataset_name", str(DATA / "prompts.jsonl"),
                     "--output_dir", str(out), "--reward_fn", REWARD, "--total_episodes", "12",
                     "--per_device_train_batch_size", "4", "--response_length", "4", "--num_eval_prompts", "4",
                     "--save_steps", "1", "--report_to", "none", "--disable_tqdm", "true"]) == 1
    line = _the_line(capsys)
    assert line.startswith(f"rlhf ppo: error: no space left on device writing {out / 'checkpoint-2'}/"), line
    assert f"the last complete checkpoint is step 1 ({out / 'checkpoint-1'})" in line
    _no_staging(out)
    assert (out / "checkpoint-1" / "trainer_state.json").is_file() and not (out / "checkpoint-2").exists()
