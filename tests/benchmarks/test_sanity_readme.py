"""The README's sanity tables are what benchmarks/sanity.py prints (produced by the script, not typed in)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import lightning_vitx.explainers as X

ROOT = Path(__file__).parents[2]
BEGIN, END = "<!-- sanity:begin", "<!-- sanity:end -->"


def rows(text: str) -> dict[tuple[str, str], list[float]]:
    """(model, explainer) -> the row's numbers, for each table of a sanity block."""
    found, model = {}, ""
    for line in text.splitlines():
        heading = re.match(r"\*\*(\w+)\*\*", line)
        if heading:
            model = heading.group(1)
        cell = re.match(r"\| `(\w+)` \|(.*)\|$", line)
        if cell:
            found[(model, cell.group(1))] = [float(v) for v in cell.group(2).split("|")]
    return found


def test_the_readme_block_is_the_scripts_output():
    printed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sanity.py")], check=True, capture_output=True, text=True
    ).stdout
    readme = (ROOT / "README.md").read_text()
    block = readme.split(BEGIN)[1].split(END)[0]
    expected, documented = rows(printed), rows(block)
    for kind in ("vit", "swin"):
        names = {name for name in X.available() if kind in X.get_info(name).families}
        assert {name for model, name in expected if model == kind} == names
    assert set(documented) == set(expected), "run `python benchmarks/sanity.py --write-readme`"
    for key, values in expected.items():
        # two decimals; another thread count moves the last digit at most
        assert all(abs(a - b) <= 0.03 for a, b in zip(documented[key], values, strict=True)), (
            f"{key}: README {documented[key]}, script {values}: run `python benchmarks/sanity.py --write-readme`"
        )
