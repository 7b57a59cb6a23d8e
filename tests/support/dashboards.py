"""The shipped dashboard's queries and a real Prometheus to run them: one place for the
standalone stack's dashboard test (tests/integration/test_prometheus.py) and the Redis HA
row's (tests/ha/test_dashboard.py)."""

from __future__ import annotations

import json
import os
import re

import pytest

from taskplane.devstack import RULE_FILES
from taskplane.metrics import SENTINEL_ONLY
from tests.support.procs import MissingBinary, Prometheus, find_binary, prometheus_config
from tests.support.services import ROOT

DASHBOARD = ROOT / "monitoring" / "dashboards" / "taskplane.json"
_SENTINEL_NAMES = re.compile("|".join(re.escape(m.name) for m in SENTINEL_ONLY))


def prometheus(targets: dict[str, str]) -> Prometheus:
    """The harness' Prometheus scraping ``targets`` every second with the shipped rules; a
    skip without the binary (a failure in CI)."""
    try:
        find_binary("prometheus")
    except MissingBinary as exc:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(str(exc))
    return Prometheus(prometheus_config(targets, [str(ROOT / p) for p in RULE_FILES], "1s"))


def dashboard_exprs() -> list[tuple[str, str]]:
    """Every (panel title, query) of the dashboard, rows' nested panels included."""
    doc = json.loads(DASHBOARD.read_text())
    panels = list(doc.get("panels", []))
    for panel in list(panels):
        panels += panel.get("panels", [])
    return [(p.get("title", "?"), t["expr"]) for p in panels for t in p.get("targets", [])
            if t.get("expr")]


def needs_sentinel(expr: str) -> bool:
    """Whether the query reads a series only a Sentinel deployment has (``SENTINEL_ONLY``)."""
    return bool(_SENTINEL_NAMES.search(expr))


def substitute(expr: str) -> str:
    """Grafana's variables as Grafana would send them with 'All' selected."""
    expr = re.sub(r"\$\{?(queue|task)(:\w+)?\}?", ".*", expr)
    expr = re.sub(r"\$\{?__rate_interval\}?|\$\{?__interval\}?|\$\{?__range\}?", "1m", expr)
    return expr
