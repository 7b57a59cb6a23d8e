"""The bench smoke tests: every benchmark at tiny size, so none of them rots.

They check that each benchmark runs and writes well-formed results, never how fast
anything was. They need what `make bench` needs (bench/install-tools.sh installs it):
wrk, redis-benchmark, prometheus, helm and matplotlib.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bench: runs the benchmarks at tiny size (tests/bench)")
