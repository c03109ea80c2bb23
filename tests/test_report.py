"""The demo's one-page report: every table and figure of a (fast) demo run, all links resolvable."""

import json
from pathlib import Path

import pytest
from conftest import load_script

from classic_rl.safe_io import UserError


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    demo = load_script("demo")
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert demo.main(["--out", str(out), "--skip-deep", "--skip-rlhf", "--skip-grpo", "--skip-agents", "--seeds", "2", "--episodes", "40"]) == 0
    return out


def test_fast_demo_writes_a_page_whose_links_all_exist(demo_dir):
    report = load_script("demo_report")
    page = (demo_dir / "index.html").read_text()
    links = report.referenced_files(page)
    assert "vi-4x3/values.png" in links and "cliff-curves.png" in links
    for link in links:
        assert not link.startswith(("http:", "https:", "/")), link  # offline, relative
        assert (demo_dir / link).is_file(), link
    assert page.count("<table>") >= 2
    assert "Value iteration converged in" in page and "sarsa" in page and "q_learning" in page
    # results.md holds the same tables, demo.json the manifest the page was rendered from.
    results = (demo_dir / "results.md").read_text()
    assert "| sarsa |" in results and "| 2 | ↑ 0.705 |" in results
    manifest = json.loads((demo_dir / "demo.json").read_text())
    assert [s["title"][:2] for s in manifest["sections"]] == ["1.", "2."]


def test_rlhf_section_with_table_curves_and_samples(tmp_path):
    demo = load_script("demo")
    report = load_script("demo_report")
    (tmp_path / "rlhf").mkdir()
    (tmp_path / "rlhf" / "results.md").write_text(
        "| metric | value |\n|--------|-------|\n| RM held-out pairwise accuracy | 0.890 |\n"
        "| KL(PPO policy || SFT reference) | 3.306 |\n| KL(PPO policy \\|\\| SFT reference) | 3.306 |\n"
    )
    (tmp_path / "rlhf" / "ppo_curves.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    table = demo.read_markdown_table(tmp_path / "rlhf" / "results.md")
    assert table["header"] == ["metric", "value"] and table["rows"][0] == ["RM held-out pairwise accuracy", "0.890"]
    assert table["rows"][1] == table["rows"][2] == ["KL(PPO policy || SFT reference)", "3.306"]
    samples = [{"prompt": "Review the cafe <next door>:", "answers": [
        {"policy": "SFT", "text": "the coffee is cold.", "gold": -0.5},
        {"policy": "PPO", "text": "the coffee is great.", "gold": 1.0}]}]
    manifest = {"title": "t", "sections": [demo._section(
        "4. RLHF", tables=[table], figures=[{"path": "rlhf/ppo_curves.png", "caption": "reward and KL"}],
        samples=samples)]}
    (tmp_path / "demo.json").write_text(json.dumps(manifest))
    page = report.build_report(tmp_path).read_text()
    assert 'src="rlhf/ppo_curves.png"' in page
    assert "Review the cafe &lt;next door&gt;:" in page  # escaped, not markup
    assert "the coffee is great." in page and "+1.00" in page and "0.890" in page
    # A figure that is not there is an error naming it, and no page is written.
    manifest["sections"][0]["figures"].append({"path": "rlhf/missing.png", "caption": ""})
    (tmp_path / "demo.json").write_text(json.dumps(manifest))
    (tmp_path / "index.html").unlink()
    with pytest.raises(UserError, match="missing.png"):
        report.build_report(tmp_path)
    assert not (tmp_path / "index.html").exists()


def test_agents_section_shows_episodes_before_and_after_rl_as_conversations(tmp_path):
    demo = load_script("demo")
    report = load_script("demo_report")
    moves = {"SFT": ["left", "up"], "GRPO": ["right", "down"]}
    episode = {"env_seed": 1000003, "answers": [
        {"policy": policy, "return": float(policy == "GRPO"), "success": policy == "GRPO", "turns": 2,
         "messages": [{"role": "user", "content": "You are at <row 0>. Moves: left, down, right, up."},
                      *({"role": "assistant", "content": m} for m in replies)]}
        for policy, replies in moves.items()]}
    table = {"header": ["agent", "success rate"], "rows": [["tiny LM: SFT + GRPO", "0.88"]]}
    manifest = {"title": "t", "sections": [demo._section("6. LM agents", tables=[table], episodes=[episode],
                                                         episodes_caption="held-out episode")]}
    (tmp_path / "demo.json").write_text(json.dumps(manifest))
    page = report.build_report(tmp_path).read_text()
    assert "held-out episode: env seed 1000003" in page
    assert "SFT: return 0, failed (2 turns)" in page and "GRPO: return 1, reached the goal (2 turns)" in page
    assert "You are at &lt;row 0&gt;." in page  # escaped, not markup
    # each policy's conversation in its own column, its replies in order, as assistant turns
    sft_cell, grpo_cell = page.split('<table class="episode">')[1].split("<td>")[1:3]
    assert sft_cell.index(">left<") < sft_cell.index(">up<") and ">right<" not in sft_cell
    assert grpo_cell.count('class="turn assistant"') == 2 and ">down<" in grpo_cell
    assert (tmp_path / "demo.json").read_text() and "0.88" in page


def test_readme_grid_world_table_is_the_demos(demo_dir):
    # The README copies the demo's tables; this one is deterministic and cheap, so it is checked.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    results = (demo_dir / "results.md").read_text()
    table = results.split("## 1.", 1)[1].split("\n\n")[2]
    assert table.startswith("| row |") and table in readme
    manifest = json.loads((demo_dir / "demo.json").read_text())
    sweeps = manifest["sections"][0]["text"][0].split(" sweeps")[0].rsplit(" ", 1)[1]
    assert f"converged in {sweeps} sweeps" in readme

