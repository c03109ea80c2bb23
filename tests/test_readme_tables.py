"""The README's result tables are generated from a demo run (scripts/readme_tables.py), and a demo run
says when its tables differ from the README's."""

from __future__ import annotations

import json

from conftest import load_script

README = """intro

<!-- demo-table: 3.1 -->
| steps | wall time (s) | greedy return (10 episodes) |
|---|---|---|
| 30208 | 9 | 500.0 +- 0.0 |
<!-- /demo-table -->

<!-- demo-table: 4.1 -->
| metric | value |
|---|---|
| KL(PPO policy \\|\\| SFT reference) | 3.306 |
<!-- /demo-table -->
"""


def _run(tmp_path, wall: int, kl: str):
    run = tmp_path / f"run-{wall}-{kl}"
    run.mkdir()
    sections = [
        {"title": "3. PPO on CartPole-v1", "tables": [{"header": ["steps", "wall time (s)", "greedy return (10 episodes)"],
                                                      "rows": [[30208, wall, "500.0 +- 0.0"]]}]},
        {"title": "4. RLHF", "tables": [{"header": ["metric", "value"], "rows": [["KL(PPO policy || SFT reference)", kl]]}]},
    ]
    (run / "demo.json").write_text(json.dumps({"sections": sections}))
    return run


def test_differences_ignore_wall_time_and_name_the_changed_table(tmp_path):
    tables = load_script("readme_tables")
    same = tables.demo_tables(_run(tmp_path, wall=14, kl="3.306"))
    assert tables.differences(README, same) == []  # only the wall time moved
    changed = tables.demo_tables(_run(tmp_path, wall=9, kl="2.682"))
    (line,) = tables.differences(README, changed)
    assert line.startswith("table 4.1")


def test_write_copies_the_runs_tables_and_then_they_agree(tmp_path, capsys):
    tables = load_script("readme_tables")
    readme = tmp_path / "README.md"
    readme.write_text(README)
    run = _run(tmp_path, wall=11, kl="2.682")
    assert tables.main([str(run), "--readme", str(readme)]) == 1
    assert "1 README table(s) differ" in capsys.readouterr().err
    assert tables.main([str(run), "--readme", str(readme), "--write"]) == 0
    text = readme.read_text()
    assert "| KL(PPO policy \\|\\| SFT reference) | 2.682 |" in text and "| 30208 | 11 | 500.0 +- 0.0 |" in text
    assert text.startswith("intro\n") and text.count("<!-- /demo-table -->") == 2
    assert tables.main([str(run), "--readme", str(readme)]) == 0


def test_the_readme_marks_every_demo_table():
    tables = load_script("readme_tables")
    keys = {(int(m.group(2)), int(m.group(3))) for m in tables.BLOCK.finditer(tables.README.read_text())}
    assert {(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)} <= keys
