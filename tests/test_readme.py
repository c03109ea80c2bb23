"""The README's quick start runs as printed, and its algorithm table matches `classic-rl list`.

Code blocks the README wants tested follow a marker line ``<!-- readme-test: NAME -->``; each is
run from an empty folder, as a newcomer pasting it into a shell (after ``source .venv/bin/activate``)
or a Python prompt would (``classic-rl`` commands through the console script's ``main``).
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(r"<!-- readme-test: ([\w-]+) -->\s*\n```(\w+)\n(.*?)\n```", re.S)


def marked_blocks() -> dict[str, tuple[str, str]]:
    """NAME -> (language, code) for every block after a readme-test marker."""
    return {name: (lang, code) for name, lang, code in MARKER.findall(README.read_text())}


def shell_commands(code: str) -> list[str]:
    """The commands of a shell block: comments dropped, backslash continuations joined."""
    code = code.replace("\\\n", " ")
    commands = []
    for line in code.splitlines():
        line = line.split(" # ", 1)[0].strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{shlex.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_readme_marks_the_quick_start_blocks():
    blocks = marked_blocks()
    assert set(blocks) >= {"setup", "python-quickstart", "cli-quickstart"}
    assert blocks["python-quickstart"][0] == "python" and blocks["cli-quickstart"][0] == "bash"
    # The README starts with exactly the two set-up commands.
    assert shell_commands(blocks["setup"][1]) == ["make demo", "make test"]
    first_block = re.search(r"```\w*\n(.*?)\n```", README.read_text(), re.S).group(1)
    assert first_block == blocks["setup"][1]


def test_python_quick_start_runs(tmp_path):
    lang, code = marked_blocks()["python-quickstart"]
    result = run([sys.executable, "-c", code], tmp_path)
    # Each `print(...)  # VALUE, words` line promises VALUE in its output line.
    promised = [line.split("  # ")[1].split(",")[0] for line in code.splitlines()
                if line.startswith("print(") and "  # " in line]
    printed = result.stdout.splitlines()
    assert len(printed) == len(promised) >= 2
    for value, line in zip(promised, printed):
        assert line.endswith(value), (line, value)


def test_cli_quick_start_runs_and_writes_what_it_says(tmp_path, monkeypatch, capsys):
    # In this process (the console script calls the same main), so torch is imported once, not per command.
    from classic_rl.cli import main

    monkeypatch.chdir(tmp_path)
    _, code = marked_blocks()["cli-quickstart"]
    for command in shell_commands(code):
        argv = shlex.split(command)
        assert argv[0] == "classic-rl", f"the CLI quick start should hold classic-rl commands only: {command}"
        assert main(argv[1:]) == 0, command
    text = capsys.readouterr().out
    assert "q_learning" in text and "value iteration converged in" in text
    # What the paragraph after the block promises is in a run directory.
    for name in ("config.yaml", "episodes.csv", "summary.json", "model.safetensors"):
        assert (tmp_path / "runs" / "ql" / name).is_file(), name
    assert (tmp_path / "runs" / "ql" / "curves.png").is_file() and (tmp_path / "runs" / "vi" / "values.png").is_file()


def readme_algorithm_rows() -> list[tuple[list[str], str]]:
    """(names in the `classic-rl train NAME` column, actions column) of the README's algorithm table."""
    text = README.read_text()
    table = text.split("## Algorithms", 1)[1].split("\n\n", 2)[1]
    rows = []
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows.append((re.findall(r"`([a-z0-9_]+)`", cells[1]), cells[3]))
    return rows


def test_algorithm_table_matches_the_registry():
    from classic_rl.registry import algorithms

    registry = algorithms()
    kinds = {"discrete", "continuous", "multi-agent"}
    listed = set()
    for names, actions in readme_algorithm_rows():
        for name in names:
            if name not in registry:
                continue
            listed.add(name)
            said = {word for word in re.split(r"[\s,()/]+", actions) if word in kinds}
            assert said == set(registry[name].action_kinds), f"README says {name} acts on {actions!r}"
    assert listed == set(registry), f"missing from the README table: {sorted(set(registry) - listed)}"


@pytest.mark.parametrize("command", ["make demo", "make test"])
def test_make_targets_exist(command):
    result = subprocess.run(["make", "-n", *command.split()[1:]], cwd=README.parent, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
