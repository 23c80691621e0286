"""Write the README's support section from bcosify.support (the CI-verified table and the measured
support matrix).

Usage: python scripts/support_table.py   (rewrites the block between the markers in README.md)
"""

from __future__ import annotations

import re
from pathlib import Path

from bcosify.support import VERIFIED_MODELS, support_matrix

START, END = "<!-- support-table:start -->", "<!-- support-table:end -->"


def table() -> str:
    rows = [
        "One model per family is checked in CI (equivalence at B=1 and completeness):",
        "",
        "| model | library | family | tested at |",
        "| --- | --- | --- | --- |",
    ]
    for name, info in VERIFIED_MODELS.items():
        size = info["test_size"]
        rows.append(f"| `{name}` | {info['library']} | {info['family']} | {size}×{size} |")
    matrix = support_matrix()
    if matrix:

        def passing(library: str) -> str:
            lib = [r for r in matrix if r["library"] == library]
            return f"{library}: {sum(r['status'] == 'pass' for r in lib)} of {len(lib)}"

        passed = sum(r["status"] == "pass" for r in matrix)
        unjudged = sum(r["status"] in ("not judged", "input-blind") for r in matrix)
        rows += [
            "",
            f"The full support matrix, [docs/support.md](docs/support.md), lists {len(matrix)} "
            f"models ({passed} pass; {passing('torchvision')}, {passing('timm')}; {unjudged} "
            "random-weight sources the check cannot judge) with their measured input dependence, "
            "equivalence and completeness errors (BatchNorm statistics from a batch), conversion "
            "times and the reason of every failure (`python scripts/support_matrix.py "
            "--timm-families`; `bcosify models` prints it).",
        ]
    return "\n".join(rows)


def main() -> None:
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    block = f"{START}\n{table()}\n{END}"
    new = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    readme.write_text(new)


if __name__ == "__main__":
    main()
