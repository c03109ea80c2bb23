"""One HTML page with every table and figure of a `make demo` run, viewable offline.

    python scripts/demo_report.py runs/demo      # rewrites runs/demo/index.html from runs/demo/demo.json

``scripts/demo.py`` writes ``demo.json``: a title and a list of sections, each with ``title``,
``text`` (paragraphs), ``tables`` (``caption``, ``header``, ``rows`` of strings), ``figures``
(``path`` relative to the demo folder, ``caption``; a PNG, or a GIF clip such as PPO's greedy episode),
``samples`` (``prompt`` and ``answers``, each ``policy``, ``text``, ``gold``; ``samples_caption``) and
``episodes`` (an LM agent's held-out episodes: ``env_seed`` and ``answers``, each ``policy``,
``messages``, ``return``, ``success``, shown side by side as conversations; ``episodes_caption``).
Figures are linked by relative paths, so the folder can be moved or zipped whole; nothing is fetched
from the network.
"""

from __future__ import annotations

import argparse
import html
import json
import re
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #eee; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: 0.3em; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-style: italic; color: #555; }
.sample td.text { font-family: ui-monospace, monospace; white-space: pre-wrap; }
.episode td { width: 33%; }
.turn { font-family: ui-monospace, monospace; white-space: pre-wrap; margin: 0.25em 0; padding: 0.25em 0.5em;
        border-radius: 0.4em; }
.turn.user { background: #f1f1f1; }
.turn.assistant { background: #ddeeff; margin-left: 2em; }
.turn.system { color: #666; font-style: italic; }
"""


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table (cells with '|' escaped)."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|", *(line(r) for r in rows)])


def _table_html(table: dict[str, Any]) -> str:
    caption = f"<caption>{html.escape(table['caption'])}</caption>" if table.get("caption") else ""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table["header"])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in table["rows"])
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _samples_html(samples: list[dict[str, Any]], caption: str) -> str:
    if not samples:
        return ""
    rows = []
    for sample in samples:
        answers = sample["answers"]
        for i, answer in enumerate(answers):
            prompt = (f'<td rowspan="{len(answers)}">{html.escape(sample["prompt"])}</td>' if i == 0 else "")
            rows.append(f"<tr>{prompt}<td>{html.escape(answer['policy'])}</td>"
                        f"<td>{answer['gold']:+.2f}</td><td class=\"text\">{html.escape(answer['text'])}</td></tr>")
    return (f'<table class="sample"><caption>{html.escape(caption)}</caption><thead><tr><th>prompt</th>'
            f"<th>policy</th><th>gold</th><th>response</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _conversation_html(messages: list[dict[str, str]]) -> str:
    return "".join(f'<div class="turn {html.escape(m.get("role", "user"), quote=True)}">'
                   f"{html.escape(str(m.get('content', '')))}</div>" for m in messages)


def _episodes_html(episodes: list[dict[str, Any]], caption: str) -> str:
    """Each held-out episode as one row of conversations, one column per policy (before and after RL)."""
    parts = []
    for episode in episodes:
        answers = episode["answers"]
        head = "".join(
            f"<th>{html.escape(a['policy'].upper())}: return {a['return']:g}"
            + ("" if a.get("success") is None else ", reached the goal" if a["success"] else ", failed")
            + f" ({a.get('turns', '?')} turns)</th>" for a in answers)
        cells = "".join(f"<td>{_conversation_html(a['messages'])}</td>" for a in answers)
        parts.append(f'<table class="episode"><caption>{html.escape(caption)}: env seed {episode["env_seed"]}'
                     f"</caption><thead><tr>{head}</tr></thead><tbody><tr>{cells}</tr></tbody></table>")
    return "".join(parts)


def render(manifest: dict[str, Any]) -> str:
    """The HTML page for a demo manifest (see the module docstring)."""
    title = html.escape(manifest.get("title", "demo"))
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{title}</title>"
             f"<style>{STYLE}</style></head><body><h1>{title}</h1>"]
    if manifest.get("seconds") is not None:
        parts.append(f"<p>Everything on this page was produced by one run of <code>make demo</code> "
                     f"({manifest['seconds']:.0f} s); each section's run directories are next to this file.</p>")
    parts.append("<ul>" + "".join(f'<li><a href="#s{i}">{html.escape(s["title"])}</a></li>'
                                  for i, s in enumerate(manifest["sections"])) + "</ul>")
    for i, section in enumerate(manifest["sections"]):
        parts.append(f'<h2 id="s{i}">{html.escape(section["title"])}</h2>')
        parts += [_table_html(t) for t in section.get("tables", [])]
        parts += [f"<p>{html.escape(p)}</p>" for p in section.get("text", [])]
        for fig in section.get("figures", []):
            src = html.escape(Path(fig["path"]).as_posix(), quote=True)
            parts.append(f'<figure><img src="{src}" alt="{html.escape(fig.get("caption", ""), quote=True)}">'
                         f"<figcaption>{html.escape(fig.get('caption', ''))}</figcaption></figure>")
        parts.append(_samples_html(section.get("samples", []), section.get(
            "samples_caption", "held-out prompts answered before (SFT) and after RL, sampled; gold = the task's scorer")))
        parts.append(_episodes_html(section.get("episodes", []), section.get("episodes_caption", "held-out episode")))
    parts.append("</body></html>\n")
    return "\n".join(p for p in parts if p)


def referenced_files(page: str) -> list[str]:
    """The local paths an HTML page links to (img src, a href, except in-page anchors)."""
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    return [html.unescape(link) for link in links if not link.startswith("#")]


def build_report(demo_dir: str | Path) -> Path:
    """Write ``demo_dir/index.html`` from ``demo_dir/demo.json``; every linked figure must exist."""
    from classic_rl.safe_io import UserError, atomic_write_text

    demo_dir = Path(demo_dir)
    manifest_path = demo_dir / "demo.json"
    if not manifest_path.is_file():
        raise UserError(f"{demo_dir} has no demo.json: pass a folder written by scripts/demo.py")
    page = render(json.loads(manifest_path.read_text()))
    missing = [link for link in referenced_files(page) if not (demo_dir / link).is_file()]
    if missing:
        raise UserError(f"{manifest_path} names figures that do not exist under {demo_dir}: {missing}")
    out = demo_dir / "index.html"
    atomic_write_text(out, page)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo_dir", help="a folder written by scripts/demo.py (holds demo.json)")
    args = parser.parse_args(argv)
    print(f"wrote {build_report(args.demo_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
