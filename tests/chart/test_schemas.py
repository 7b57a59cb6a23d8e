"""Every rendered object is valid for Kubernetes 1.30-1.35, custom resources for their CRDs.

Built-in kinds: `kubernetes-validate --strict` (unknown fields rejected), one run per
Kubernetes version over every render. Custom resources (KEDA, prometheus-operator),
which kubernetes-validate only warns about: tests/chart/tools/validate_crds.mjs with
the @kubernetes-models packages.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import CASES, NODE_TOOLS, ROOT, Render, dumps, find_tool, missing

KUBERNETES_VERSIONS = ["1.30", "1.31", "1.32", "1.33", "1.34", "1.35"]
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
CRD_VALIDATOR = ROOT / "tests" / "chart" / "tools" / "validate_crds.mjs"


def is_custom(obj: dict[str, Any]) -> bool:
    return obj["apiVersion"].startswith(CRD_GROUPS)


@pytest.fixture(scope="session")
def kubernetes_validate() -> str:
    path = find_tool("kubernetes-validate")
    if path is None:
        missing("kubernetes-validate")
    return path


@pytest.fixture(scope="session")
def render_files(renders: dict[str, Render], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    directory = tmp_path_factory.mktemp("renders")
    files = []
    for case in CASES:
        path = directory / f"{case}.yaml"
        path.write_text(renders[case].text)
        files.append(path)
    return files


def run_kubernetes_validate(tool: str, version: str, files: list[Path]) -> tuple[int, list[str]]:
    proc = subprocess.run(
        [tool, "--strict", "--kubernetes-version", version, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, (proc.stdout + proc.stderr).splitlines()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_objects_match_kubernetes_schemas(
    renders: dict[str, Render], render_files: list[Path], kubernetes_validate: str, version: str
) -> None:
    rc, lines = run_kubernetes_validate(kubernetes_validate, version, render_files)
    problems = [line for line in lines if not line.startswith(("INFO ", "WARN "))]
    # A warning means "no schema for this kind": acceptable for custom resources only.
    problems += [
        line
        for line in lines
        if line.startswith("WARN ") and not any(f"api version {group}" in line for group in CRD_GROUPS)
    ]
    builtin = sum(1 for case in CASES for obj in renders[case].objects if not is_custom(obj))
    passed = sum(1 for line in lines if line.startswith("INFO ") and " passed for resource " in line)
    assert rc == 0 and not problems, "\n".join(problems)
    assert passed == builtin, f"{passed} objects passed, {builtin} built-in objects rendered"


def test_strict_validation_rejects_unknown_fields(kubernetes_validate: str, tmp_path: Path) -> None:
    """The check above would catch a misspelt field (guards the strict mode)."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80, "targetPort": 8000}], "selctor": {"a": "b"}},
    }
    path = tmp_path / "service.yaml"
    path.write_text(json.dumps(service))
    rc, lines = run_kubernetes_validate(kubernetes_validate, "1.35", [path])
    assert rc != 0 and any("selctor" in line for line in lines), lines


@pytest.fixture(scope="session")
def node() -> str:
    path = find_tool("node")
    if path is None:
        missing("node")
    for package in ("keda", "prometheus-operator"):
        if not (NODE_TOOLS / "node_modules" / "@kubernetes-models" / package).is_dir():
            missing(f"@kubernetes-models/{package} in {NODE_TOOLS}")
    return path


def validate_custom(node: str, objects: list[dict[str, Any]]) -> tuple[int, str]:
    proc = subprocess.run(
        [node, str(CRD_VALIDATOR)], input=json.dumps(objects), capture_output=True, text=True, timeout=120
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_custom_resources_match_their_crds(renders: dict[str, Render], node: str) -> None:
    objects, seen = [], set()
    for case in CASES:
        for obj in renders[case].objects:
            if is_custom(obj) and dumps(obj) not in seen:
                seen.add(dumps(obj))
                objects.append(obj)
    kinds = {o["kind"] for o in objects}
    assert {
        "ScaledObject",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
    } <= kinds, f"the render cases no longer cover every custom kind: {sorted(kinds)}"
    rc, out = validate_custom(node, objects)
    assert rc == 0, out


def test_crd_validator_rejects_a_bad_scaledobject(node: str) -> None:
    bad = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "bad"},
        "spec": {"scaleTargetRef": {"name": "x"}, "minReplicaCount": "0", "triggers": {}},
    }
    rc, out = validate_custom(node, [bad])
    assert rc == 1 and "minReplicaCount" in out and "triggers" in out, out
