"""The README's result tables come from a demo run: check them against one, or rewrite them from it.

    python scripts/readme_tables.py runs/demo            # say which README tables differ from this run
    python scripts/readme_tables.py runs/demo --write    # rewrite them from runs/demo/demo.json

Each generated table in README.md sits between ``<!-- demo-table: N.M -->`` and ``<!-- /demo-table -->``:
table M (from 1) of the demo section whose title starts with ``N.`` (``demo.json``, written by
``scripts/demo.py``). Columns that measure wall-clock time are copied but never compared (they vary
from run to run; the other numbers repeat exactly on the same machine and library versions).
`make demo` runs the check at the end, so a demo whose results differ from the README says so.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from demo_report import markdown_table  # noqa: E402  (the format of results.md, cells with '|' escaped)

README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- demo-table: (\d+)\.(\d+) -->\n)(.*?)(<!-- /demo-table -->)", re.S)
TIMING = ("wall time", "wall_s", "seconds")


def demo_tables(run: Path) -> dict[tuple[int, int], dict]:
    """``(section number, table number) -> {"header", "rows"}`` of a demo run's demo.json."""
    path = run / "demo.json"
    if not path.is_file():
        raise SystemExit(f"readme_tables: {path} not found; give the folder of a finished `make demo` run")
    tables = {}
    for section in json.loads(path.read_text())["sections"]:
        number = re.match(r"(\d+)\.", section["title"])
        if number:
            for m, table in enumerate(section["tables"], start=1):
                tables[(int(number.group(1)), m)] = table
    return tables


def _cells(text: str) -> list[list[str]]:
    rows = [re.split(r"(?<!\\)\|", line.strip().strip("|")) for line in text.strip().splitlines() if line.strip().startswith("|")]
    return [[c.strip() for c in row] for row in rows if not set("".join(row)) <= set("-: ")]


def differences(readme: str, tables: dict[tuple[int, int], dict]) -> list[str]:
    """One line per README table whose numbers (timings aside) are not the run's."""
    found = []
    for match in BLOCK.finditer(readme):
        key = (int(match.group(2)), int(match.group(3)))
        table = tables.get(key)
        if table is None:
            found.append(f"table {key[0]}.{key[1]}: not in this run (a skipped step?)")
            continue
        ours, theirs = _cells(match.group(4)), _cells(markdown_table(table["header"], table["rows"]))
        timing = {i for i, name in enumerate(theirs[0]) if any(t in name.lower() for t in TIMING)} if theirs else set()
        strip = [[c for i, c in enumerate(row) if i not in timing] for row in ours], \
                [[c for i, c in enumerate(row) if i not in timing] for row in theirs]
        if strip[0] != strip[1]:
            found.append(f"table {key[0]}.{key[1]} ({' | '.join(theirs[0][:3])} ...)")
    return found


def rewrite(readme: str, tables: dict[tuple[int, int], dict]) -> str:
    def replace(match: re.Match) -> str:
        table = tables.get((int(match.group(2)), int(match.group(3))))
        if table is None:
            return match.group(0)
        return match.group(1) + markdown_table(table["header"], table["rows"]) + "\n" + match.group(5)

    return BLOCK.sub(replace, readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a demo run folder (holds demo.json)")
    parser.add_argument("--write", action="store_true", help="rewrite README.md's tables from the run")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    tables = demo_tables(args.run)
    text = args.readme.read_text()
    if args.write:
        from classic_rl.safe_io import atomic_write_text

        atomic_write_text(args.readme, rewrite(text, tables))
        print(f"readme_tables: {args.readme} tables rewritten from {args.run / 'demo.json'}")
        return 0
    diff = differences(text, tables)
    if diff:
        print(f"note: {len(diff)} README table(s) differ from this run (other hardware or library versions give "
              f"other numbers; `python scripts/readme_tables.py {args.run} --write` copies this run's):", file=sys.stderr)
        for line in diff:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"readme_tables: README.md's tables equal this run's ({args.run})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
