"""Generated files are current: k8s/, the chart's copies of the monitoring files, the values table."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from .conftest import CHART, ROOT, find_tool, missing
from .tools import chartgen


def test_render_manifests_check_passes(helm: str) -> None:
    """k8s/, files/ copies and README table match what scripts/render-manifests.sh makes."""
    proc = subprocess.run(
        [str(ROOT / "scripts" / "render-manifests.sh"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_value_is_documented(yaml_module: Any) -> None:
    problems = chartgen.undocumented((CHART / "values.yaml").read_text())
    assert not problems, "\n".join(problems)


def test_values_table_lists_every_param() -> None:
    readme = (CHART / "README.md").read_text()
    for _, path, _ in chartgen.params((CHART / "values.yaml").read_text()):
        assert f"| `{path}` |" in readme, path


def test_plain_manifests_hold_no_secret_and_kustomize_makes_them(tmp_path: Path, yaml_module: Any) -> None:
    text = (ROOT / "k8s" / "taskplane.yaml").read_text()
    objects = [d for d in yaml_module.safe_load_all(text) if d]
    assert objects and not [o for o in objects if o["kind"] == "Secret"]
    assert not [o for o in objects if o["kind"] == "Pod"], "the helm test pod is not a plain manifest"
    referenced = set()
    for obj in objects:
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                referenced.add(volume["secret"]["secretName"])
        for container in spec.get("containers", []):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add(ref["name"])
    kustomization = yaml_module.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())
    generated = {g["name"] for g in kustomization["secretGenerator"]}
    assert referenced == generated, (referenced, generated)

    kubectl = find_tool("kubectl")
    if kubectl is None:
        missing("kubectl")
    work = tmp_path / "k8s"
    subprocess.run(["cp", "-r", str(ROOT / "k8s"), str(work)], check=True)
    (work / "secrets").mkdir(exist_ok=True)
    (work / "secrets" / "redis-password").write_text("p" * 32)
    (work / "secrets" / "api-tokens").write_text("default:" + "t" * 32 + "\n")
    proc = subprocess.run([kubectl, "kustomize", str(work)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    built = [d for d in yaml_module.safe_load_all(proc.stdout) if d]
    secrets = {o["metadata"]["name"]: o for o in built if o["kind"] == "Secret"}
    assert set(secrets) == generated
    assert set(secrets["taskplane-redis"]["data"]) == {"redis-password"}
    assert set(secrets["taskplane-api-tokens"]["data"]) == {"tokens"}
    assert len(built) == len(objects) + len(generated) + 1  # + the Namespace
    assert all(o["metadata"].get("namespace", "taskplane") == "taskplane" for o in built)
