"""BENCHMARKS.md is generated from bench/results/latest.json: the two must agree."""

from __future__ import annotations

import json

from bench import report


def test_benchmarks_md_is_rendered_from_the_committed_results() -> None:
    results = json.loads(report.RESULTS.read_text())
    assert report.current_section(report.MARKDOWN) == report.section(results), (
        "BENCHMARKS.md is stale: run `python -m bench.report` (or `make bench`)")
