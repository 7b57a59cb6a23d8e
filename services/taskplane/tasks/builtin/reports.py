"""Per-column statistics of CSV text: the report-generation use case of the post."""

from __future__ import annotations

import csv
import io
import math
import statistics
from typing import Any

from ..base import progress
from ..registry import task


@task(
    "reports.summary",
    schema={
        "properties": {
            "csv": {"type": "string", "minLength": 1},
            "delimiter": {"type": "string", "minLength": 1, "maxLength": 1},
        },
        "required": ["csv"],
    },
    time_limit=120,
    soft_time_limit=100,
)
def summary(csv: str, delimiter: str = ",") -> dict[str, Any]:
    """Count, missing values and, for numeric columns, min/max/mean/median/stdev of each column.

    The first row names the columns. A column is numeric when every non-empty cell
    parses as a finite number; otherwise it reports distinct values and the most
    common one.
    """
    rows = list(_reader(csv, delimiter))
    if not rows:
        return {"rows": 0, "columns": {}}
    header, body = rows[0], rows[1:]
    columns: dict[str, Any] = {}
    for i, name in enumerate(header):
        cells = [row[i].strip() if i < len(row) else "" for row in body]
        present = [c for c in cells if c != ""]
        columns[name or f"column_{i + 1}"] = _describe(present, len(cells) - len(present))
        progress(100.0 * (i + 1) / len(header), f"column {i + 1} of {len(header)}")
    return {"rows": len(body), "columns": columns}


def _reader(text: str, delimiter: str) -> Any:
    return csv.reader(io.StringIO(text), delimiter=delimiter)


def _describe(values: list[str], missing: int) -> dict[str, Any]:
    numbers = [_number(v) for v in values]
    if values and all(n is not None for n in numbers):
        nums = [n for n in numbers if n is not None]
        return {
            "type": "numeric", "count": len(nums), "missing": missing,
            "min": min(nums), "max": max(nums), "mean": statistics.fmean(nums),
            "median": statistics.median(nums),
            "stdev": statistics.stdev(nums) if len(nums) > 1 else 0.0,
        }
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    top = max(counts.items(), key=lambda kv: kv[1]) if counts else (None, 0)
    return {"type": "text", "count": len(values), "missing": missing,
            "distinct": len(counts), "top": top[0], "top_count": top[1]}


def _number(value: str) -> float | None:
    try:
        n = float(value)
    except ValueError:
        return None
    return n if math.isfinite(n) else None
