"""`rlhf <command> --help` / `--help-all`: fast (no torch, transformers, TRL or DeepSpeed import), the stored
texts equal what each command prints live, every command's help shows the dataset formats it reads, no empty
heading, no description cut short, one final newline, and `rlhf pipeline --help-all` works."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf.cli import COMMANDS
from rlhf.cli import main as rlhf_main
from rlhf.common import help as rlhf_help

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "trl", "deepspeed", "datasets", "accelerate")


def test_stored_help_is_what_every_command_prints_live():
    assert rlhf_help.cached("grpo", "short") is not None, (
        "rlhf/common/help_texts.json is out of date: run `python -m rlhf.common.help --write`")
    for command in COMMANDS:
        for kind in ("short", "all"):
            assert rlhf_help.cached(command, kind) == rlhf_help.generate(command, kind), (command, kind)


def test_help_imports_no_heavy_library_and_is_fast():
    code = ("import sys, time; t = time.perf_counter(); from rlhf.cli import main; rc = main(['grpo', '--help']); "
            f"print('RESULT', rc, round(time.perf_counter() - t, 3), [m for m in {HEAVY!r} if m in sys.modules])")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    wall = time.perf_counter() - start
    result = next(line for line in out.splitlines() if line.startswith("RESULT"))
    assert result.endswith(" []") and result.startswith("RESULT 0 "), result  # none of them imported
    assert wall < 5, wall  # the process, Python start-up included (was 8-13 s)


def test_a_stale_text_is_never_shown(monkeypatch, capsys):
    monkeypatch.setattr(rlhf_help, "fingerprint", lambda: "another version")
    assert rlhf_help.cached("sft", "short") is None
    with pytest.raises(SystemExit):  # the command prints its help live instead
        rlhf_main(["sft", "--help"])
    assert "usage: rlhf sft" in capsys.readouterr().out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_shape(command, capsys):
    for flag in ("--help", "--help-all"):
        assert rlhf_main([command, flag]) == 0
        text = capsys.readouterr().out
        assert text.endswith("\n") and not text.endswith("\n\n"), (command, flag)
        lines = text.splitlines()
        if flag == "--help":  # (--help-all is argparse's, with the command's docstring as written)
            for heading, following in zip(lines, [*lines[1:], ""]):
                assert not (heading.endswith(":") and not heading.startswith(" ") and not following.strip()), (
                    command, heading)  # a heading with nothing under it
            assert not [line for line in lines if line.rstrip().endswith(" ...")], command  # nothing cut short


def test_every_command_help_shows_the_dataset_formats_it_reads(capsys):
    expected = {
        "sft": ['{"prompt": ', '"completion": ', '{"messages": [{"role": "user", "content": '],
        "reward": ['"chosen": ', '"rejected": ', '"responses": ["best"', "best to worst"],
        **{m: ['{"prompt": '] for m in ("ppo", "grpo", "rloo", "reinforce_pp")},
        "label": ["{prompt, responses: [...]}", "{prompt, chosen, rejected}", "{prompt, responses: [best, ...,"],
    }
    for command, pieces in expected.items():
        rlhf_main([command, "--help"])
        text = capsys.readouterr().out
        for piece in pieces:
            assert piece in text, (command, piece)


def test_readme_documents_every_dataset_format():
    readme = (REPO / "README.md").read_text()
    for piece in ('{"prompt": "...", "completion": "..."}', '{"messages": [', '{"prompt": "...", "chosen": "...", '
                  '"rejected": "..."}', '{"prompt": "...", "responses": [', '{"prompt": "..."}'):
        assert piece in readme, piece
