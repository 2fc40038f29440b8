"""The README's figures can be reproduced: every paragraph that states a measured figure names
the command (or test) that measures it, and every script it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: A measured quantity: a speed, a time per step, a bandwidth, a ratio.
FIGURE = re.compile(r"\d(?:\.\d+)?\s?(?:GB/s|ms\b|us\b|tokens/s|x\s(?:faster|a\s)|s\s\|)")
#: How a paragraph names what reproduces its figures.
COMMAND = re.compile(r"`(?:python |numaplan |make |TVM_NUM_THREADS=\S+ python |scripts/|tests/)")
#: Figures that are inputs, not measurements: the cost model's nominal defaults.
NOMINAL = ("nominal",)


def _blocks(text: str) -> list[str]:
    """Paragraphs, each table joined to the paragraph that introduces it."""
    blocks: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        if block.lstrip().startswith("|") and blocks and not blocks[-1].lstrip().startswith("|"):
            blocks[-1] += "\n" + block
        else:
            blocks.append(block)
    return blocks


def test_every_measured_figure_names_its_command():
    missing = [b.strip()[:120] for b in _blocks(README.read_text())
               if FIGURE.search(b) and not COMMAND.search(b)
               and not any(word in b for word in NOMINAL)]
    assert not missing, missing


def test_the_scripts_the_docs_name_exist():
    docs = [README, *(ROOT / "docs").glob("*.md")]
    named = {m for d in docs for m in re.findall(r"scripts/[\w/.-]+\.py", d.read_text())}
    assert named and all((ROOT / s).is_file() for s in named), sorted(named)
