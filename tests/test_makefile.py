"""The Makefile's developer targets: `make test-fast` ends with pytest's pass count, and a
TORCH_INDEX given for an existing .venv prints a note instead of being ignored silently."""

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _recipe_line(target: str, word: str) -> str:
    lines = (REPO / "Makefile").read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith(f"{target}:")))
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        if word in line:
            return line.strip()
    raise AssertionError(f"no {word!r} line in the {target} recipe")


def test_test_fast_prints_the_pass_count():
    command = _recipe_line("test-fast", "pytest").replace("$(BIN)/python", shlex.quote(sys.executable))
    argv = [arg if arg != "tests" else "tests/test_safe_io.py" for arg in shlex.split(command)]  # one small file
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^\d+ passed", result.stdout, re.MULTILINE), result.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_torch_index_on_an_existing_venv_prints_a_note(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    installed = venv / "bin" / ".installed"
    installed.touch()
    later = time.time() + 3600
    os.utime(installed, (later, later))  # newer than pyproject.toml: nothing to reinstall

    def make(*args):
        return subprocess.run(["make", "-s", "-C", str(REPO), "install", f"VENV={venv}", *args],
                              capture_output=True, text=True, timeout=60)

    result = make("TORCH_INDEX=https://download.pytorch.org/whl/cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and "TORCH_INDEX applies only to a fresh install" in result.stdout
    assert f"rm -rf {venv}" in result.stdout
    assert make().stdout == ""  # no TORCH_INDEX, no note
