"""Rewrite the generated parts of README.md between their markers (settings, metrics)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from taskplane.metrics import reference_table
from taskplane.settings import settings_table

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = {"settings": settings_table, "metrics": reference_table}


def render(text: str) -> str:
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(\n<!-- END {name} -->)", re.S)
        if not pattern.search(text):
            sys.exit(f"README.md lacks the {name} markers")
        text = pattern.sub(lambda m, make=make: m.group(1) + make() + m.group(2), text)
    return text


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
