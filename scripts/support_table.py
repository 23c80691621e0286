"""Write the README's table of verified architectures from bcosify.models.VERIFIED_MODELS.

Usage: python scripts/support_table.py   (rewrites the block between the markers in README.md)
"""

from __future__ import annotations

import re
from pathlib import Path

from bcosify.models import VERIFIED_MODELS

START, END = "<!-- support-table:start -->", "<!-- support-table:end -->"


def table() -> str:
    rows = ["| model | library | family | tested at |", "| --- | --- | --- | --- |"]
    for name, info in VERIFIED_MODELS.items():
        size = info["test_size"]
        rows.append(f"| `{name}` | {info['library']} | {info['family']} | {size}×{size} |")
    return "\n".join(rows)


def main() -> None:
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    block = f"{START}\n{table()}\n{END}"
    new = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    readme.write_text(new)


if __name__ == "__main__":
    main()
