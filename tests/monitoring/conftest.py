"""Files, tools and the metric catalogue shared by the monitoring tests.

promtool comes from scripts/monitoring-tools.sh (PATH first, else Debian's
`prometheus` package); PROMTOOL may name another binary. A test that needs a missing
tool or library is skipped with the command that installs it, except under CI, where
it fails: CI installs them first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
RULES_FILE = MONITORING / "rules" / "taskplane.rules.yaml"
RULE_TESTS = sorted((MONITORING / "rules" / "tests").glob("*.yaml"))
DASHBOARD_FILE = MONITORING / "dashboards" / "taskplane.json"
INSTALL_HINT = "run scripts/monitoring-tools.sh"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(what: str, hint: str = INSTALL_HINT) -> None:
    """Skip (or, under CI, fail) a test whose tool is not installed."""
    message = f"{what} is not available ({hint})"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


@cache
def promtool_path() -> str | None:
    candidate = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if candidate and os.access(candidate, os.X_OK):
        return candidate
    return None


@pytest.fixture(scope="session")
def promtool() -> str:
    path = promtool_path()
    if path is None:
        missing("promtool")
    return path


def run_promtool(promtool: str, *args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="session")
def yaml_module() -> Any:
    try:
        import yaml
    except ImportError:
        missing("PyYAML", "pip install pyyaml into .venv; scripts/chart-tools.sh brings it")
    return yaml


@pytest.fixture(scope="session")
def rules(yaml_module: Any) -> dict[str, Any]:
    return yaml_module.safe_load(RULES_FILE.read_text())


@pytest.fixture(scope="session")
def all_rules(rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in rules["groups"] for rule in group["rules"]]


@pytest.fixture(scope="session")
def recorded(all_rules: list[dict[str, Any]]) -> dict[str, str]:
    """Recording rule name → expression."""
    return {r["record"]: r["expr"] for r in all_rules if "record" in r}


@pytest.fixture(scope="session")
def alerts(all_rules: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in all_rules if "alert" in r}


@pytest.fixture(scope="session")
def rule_tests(yaml_module: Any) -> dict[str, dict[str, Any]]:
    """promtool test files by name."""
    return {p.name: yaml_module.safe_load(p.read_text()) for p in RULE_TESTS}


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text())


@pytest.fixture(scope="session")
def catalogue() -> Any:
    """taskplane.metrics, the one source of metric names."""
    from taskplane import metrics

    return metrics
