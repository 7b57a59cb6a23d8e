"""The chart's scheduler: two replicas that may overlap during a rollout (exactly-once
rests on each tick's Idempotency-Key), a PodDisruptionBudget, no autoscaler, scraped."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import CASES, Render, env_of, helm_template

NAME = "taskplane-scheduler"


@pytest.mark.parametrize("case", CASES)
def test_scheduler_runs_two_replicas_with_a_pdb_and_no_autoscaler(
        renders: dict[str, Render], case: str) -> None:
    render = renders[case]
    deployment = render.get("Deployment", NAME)
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["type"] == "RollingUpdate", "Recreate is not needed: no 2-beat problem"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (container,) = spec["template"]["spec"]["containers"]
    assert container["command"] == ["taskplane", "scheduler"]
    env = env_of(container)
    assert env["SCHEDULER_METRICS_PORT"]["value"] == str(container["ports"][0]["containerPort"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pdb = render.get("PodDisruptionBudget", NAME)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "scheduler"
    for scaler in render.of_kind("HorizontalPodAutoscaler", "ScaledObject"):
        assert scaler["spec"]["scaleTargetRef"]["name"] != NAME, "the scheduler is never autoscaled"
    if case == "default":
        monitors = {m["metadata"]["name"] for m in render.of_kind("ServiceMonitor")}
        assert NAME in monitors


def test_scheduler_can_be_switched_off(helm: str, yaml_module: Any, tmp_path: Any) -> None:
    values = tmp_path / "off.yaml"
    values.write_text("scheduler:\n  enabled: false\n")
    text = helm_template(helm, values=values).stdout
    names = {d["metadata"]["name"] for d in yaml_module.safe_load_all(text) if d}
    assert NAME not in names
