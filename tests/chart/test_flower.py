"""The chart's optional Flower: off by default; when on, behind its login and NetworkPolicy,
running Taskplane's Flower configuration (the chart's copy of taskplane/flowerconfig.py)."""

from __future__ import annotations

from typing import Any

from .conftest import CHART, ROOT, Render, env_of


def components(render: Render) -> set[str]:
    return {o["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")
            for o in render.objects}


def test_the_charts_flower_configuration_is_taskplanes() -> None:
    ours = (ROOT / "services" / "taskplane" / "flowerconfig.py").read_text()
    assert (CHART / "files" / "flowerconfig.py").read_text() == ours, (
        "copy services/taskplane/flowerconfig.py to charts/taskplane/files/")


def test_flower_is_off_by_default(renders: dict[str, Render]) -> None:
    assert "flower" not in components(renders["default"])
    assert "flower" in components(renders["flower"])


def test_flower_asks_its_login_and_runs_taskplanes_configuration(
        renders: dict[str, Render]) -> None:
    render = renders["flower"]
    deployment = render.get("Deployment", "taskplane-flower")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = env_of(container)
    ref = env["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]
    secret = render.get("Secret", ref["name"])
    assert ref["key"] in secret["data"]
    assert "FLOWER_UNAUTHENTICATED_API" not in env
    assert "--broker=$(REDIS_URL)" in container["args"] and "REDIS_URL" in env
    conf = next(a for a in container["args"] if a.startswith("--conf="))
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    directory, _, filename = conf.removeprefix("--conf=").rpartition("/")
    volume = next(v for v in spec["volumes"] if v["name"] == mounts[directory])
    config = render.get("ConfigMap", volume["configMap"]["name"])
    assert config["data"][filename] == (CHART / "files" / "flowerconfig.py").read_text()
    assert deployment["spec"]["replicas"] == 1


def test_only_the_listed_peers_reach_flower_and_flower_reaches_redis(
        renders: dict[str, Render], yaml_module: Any) -> None:
    render = renders["flower"]
    values = yaml_module.safe_load((CHART / "ci" / "flower-values.yaml").read_text())
    policy = render.get("NetworkPolicy", "taskplane-flower")
    flower_labels = render.get("Deployment", "taskplane-flower")["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["podSelector"]["matchLabels"] == flower_labels
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == values["flower"]["ingressFrom"]
    assert [p["port"] for p in rule["ports"]] == ["http"]

    redis = render.get("NetworkPolicy", "taskplane-redis-from-flower")
    redis_labels = render.get("StatefulSet", "taskplane-redis")["spec"]["selector"]["matchLabels"]
    assert redis["spec"]["podSelector"]["matchLabels"] == redis_labels
    (rule,) = redis["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": flower_labels}}]
