"""Tools and renders shared by the chart tests.

The tools come from scripts/chart-tools.sh: helm 4 and kubectl in ./.tools/bin,
kubernetes-validate and hadolint in the project venv, checkov in ./.tools/checkov,
the CRD models in ./.tools/node. Each is looked up in ./.tools/bin, .venv/bin, then
PATH. A test whose tool is missing is skipped with the command that installs it,
except under CI=true, where a missing tool fails the test: CI installs them first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "taskplane"
TOOLS_BIN = ROOT / ".tools" / "bin"
VENV_BIN = ROOT / ".venv" / "bin"
NODE_TOOLS = ROOT / ".tools" / "node"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
#: Render cases: the defaults and every ci/*-values.yaml, by name.
CASES = ["default", *(p.name.removesuffix("-values.yaml") for p in CI_VALUES)]
RELEASE = "taskplane"
NAMESPACE = "taskplane"
#: Custom resources the chart may render; helm template sees them as installed.
CRD_API_VERSIONS = (
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
    "keda.sh/v1alpha1/ScaledObject",
)
INSTALL_HINT = "run scripts/chart-tools.sh"


def missing(what: str) -> None:
    """Skip (or, under CI, fail) a test whose tool is not installed."""
    message = f"{what} is not available ({INSTALL_HINT})"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def find_tool(name: str, accept: Any = None) -> str | None:
    """First `name` in ./.tools/bin, .venv/bin, then PATH that `accept(path)` approves."""
    candidates = [TOOLS_BIN / name, VENV_BIN / name]
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            if accept is None or accept(str(candidate)):
                return str(candidate)
    return None


def _is_helm4(path: str) -> bool:
    try:
        out = subprocess.run(
            [path, "version", "--template", "{{.Version}}"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.startswith("v4.")


@cache
def helm_path() -> str | None:
    return find_tool("helm", _is_helm4)


@pytest.fixture(scope="session")
def helm() -> str:
    path = helm_path()
    if path is None:
        missing("helm 4")
    return path


@pytest.fixture(scope="session")
def yaml_module() -> Any:
    try:
        import yaml
    except ImportError:
        missing("PyYAML (installed with kubernetes-validate)")
    return yaml


@dataclass
class Render:
    """One `helm template` of the chart: the text and its objects."""

    case: str
    text: str
    objects: list[dict[str, Any]] = field(default_factory=list)

    def of_kind(self, *kinds: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] in kinds]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for obj in self.objects:
            if obj["kind"] == kind and obj["metadata"]["name"] == name:
                return obj
        raise KeyError(f"{kind}/{name} not rendered in case {self.case}")


def helm_template(
    helm: str, *args: str, values: Path | None = None, crds: bool = True, check: bool = True
) -> subprocess.CompletedProcess[str]:
    cmd = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if crds:
        for api in CRD_API_VERSIONS:
            cmd += ["--api-versions", api]
    if values is not None:
        cmd += ["--values", str(values)]
    cmd += list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return proc


def values_file(case: str) -> Path | None:
    return None if case == "default" else CHART / "ci" / f"{case}-values.yaml"


@pytest.fixture(scope="session")
def renders(helm: str, yaml_module: Any) -> dict[str, Render]:
    """Every case rendered once per session, test pods included."""
    out = {}
    for case in CASES:
        text = helm_template(helm, values=values_file(case)).stdout
        objects = [d for d in yaml_module.safe_load_all(text) if d]
        out[case] = Render(case, text, objects)
    return out


def pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod spec of a workload or Pod object (none for other kinds)."""
    kind = obj["kind"]
    if kind == "Pod":
        yield obj["spec"]
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield obj["spec"]["template"]["spec"]
    elif kind == "CronJob":
        yield obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def pod_template_labels(obj: dict[str, Any]) -> dict[str, str]:
    if obj["kind"] == "Pod":
        return obj["metadata"].get("labels", {})
    return obj["spec"]["template"]["metadata"].get("labels", {})


def is_one_shot(obj: dict[str, Any]) -> bool:
    """helm test hooks and Jobs run to completion: no probes expected."""
    hook = obj["metadata"].get("annotations", {}).get("helm.sh/hook", "")
    return obj["kind"] in ("Job", "CronJob") or (obj["kind"] == "Pod" and bool(hook))


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


def run_json(cmd: list[str], stdin: str | None = None, timeout: int = 300) -> tuple[int, str, str]:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
