"""values.schema.json and the chart's validation helper refuse bad values, with a readable reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import CHART, helm_template

# (id, values, text the error must contain). values.schema.json: wrong types, unknown
# keys, out-of-range numbers, bad enums and patterns.
SCHEMA_REJECTS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown top-level key", {"replicas": 3}, "replicas"),
    ("unknown nested key", {"api": {"replica": 3}}, "replica"),
    (
        "unknown pool key",
        {"workers": {"pools": [{"name": "default", "queues": ["default"], "concurency": 4}]}},
        "concurency",
    ),
    ("string for integer", {"workers": {"defaults": {"concurrency": "two"}}}, "concurrency"),
    ("zero concurrency", {"workers": {"defaults": {"concurrency": 0}}}, "concurrency"),
    ("pool without queues", {"workers": {"pools": [{"name": "default"}]}}, "queues"),
    ("empty queue list", {"workers": {"pools": [{"name": "default", "queues": []}]}}, "queues"),
    ("bad queue name", {"workers": {"pools": [{"name": "default", "queues": ["Default Queue"]}]}}, "queues"),
    ("bad pool name", {"workers": {"pools": [{"name": "Heavy_Pool", "queues": ["default"]}]}}, "name"),
    ("no pools", {"workers": {"pools": []}}, "pools"),
    (
        "unknown KEDA trigger",
        {"workers": {"defaults": {"autoscaling": {"keda": {"trigger": "rabbitmq"}}}}},
        "trigger",
    ),
    (
        "negative backlog target",
        {"workers": {"defaults": {"autoscaling": {"hpa": {"targetBacklogPerReplica": -1}}}}},
        "targetBacklogPerReplica",
    ),
    ("boolean as string", {"redis": {"enabled": "false"}}, "enabled"),
    ("bad service type", {"api": {"service": {"type": "Ingress"}}}, "type"),
    ("bad pull policy", {"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ("bad log level", {"config": {"logLevel": "verbose"}}, "logLevel"),
    ("port out of range", {"exporter": {"port": 70000}}, "port"),
    ("resources removed", {"api": {"resources": None}}, "resources"),
    ("limits removed", {"exporter": {"resources": {"limits": None}}}, "limits"),
    (
        "malformed quantity",
        {
            "api": {
                "resources": {
                    "requests": {"cpu": "lots", "memory": "1Gi"},
                    "limits": {"cpu": "1", "memory": "1Gi"},
                }
            }
        },
        "cpu",
    ),
    ("external URL not redis", {"redis": {"external": {"url": "http://redis:6379"}}}, "url"),
    ("bad scrape interval", {"monitoring": {"serviceMonitor": {"interval": "often"}}}, "interval"),
    ("bad digest", {"image": {"api": {"digest": "latest"}}}, "digest"),
    (
        "the removed redis-list trigger",
        {"workers": {"defaults": {"autoscaling": {"keda": {"trigger": "redis-list"}}}}},
        "trigger",
    ),
]

# The helper included by NOTES.txt and configmap.yaml: combinations a schema cannot express.
HELPER_REJECTS: list[tuple[str, dict[str, Any], str]] = [
    (
        "HPA and KEDA on one pool",
        {"workers": {"defaults": {"autoscaling": {"keda": {"enabled": True}}}}},
        "autoscaling.hpa.enabled and autoscaling.keda.enabled are both true",
    ),
    ("default queue not consumed", {"config": {"defaultQueue": "other"}}, "consumed by no worker pool"),
    (
        "lease interval too close to the visibility timeout",
        {"config": {"visibilityTimeout": 20, "leaseInterval": 10}},
        "must be at most a third of config.visibilityTimeout",
    ),
    (
        "pool limit below the default task limit",
        {"workers": {"pools": [{"name": "default", "queues": ["default"], "maxTaskTimeLimit": 60}]}},
        "is below config.defaultTimeLimit",
    ),
    (
        "duplicate pool names",
        {"workers": {"pools": [{"name": "a", "queues": ["default"]}, {"name": "a", "queues": ["x"]}]}},
        "is used twice",
    ),
    (
        "soft limit not below hard limit",
        {"config": {"defaultSoftTimeLimit": 300}},
        "defaultSoftTimeLimit must be below",
    ),
    (
        "no Redis at all",
        {"redis": {"enabled": False}},
        "set redis.external.url or redis.external.existingSecret",
    ),
    (
        "external Redis while in-release Redis on",
        {"redis": {"external": {"url": "redis://:secretsecret@r:6379/0"}}},
        "set redis.enabled=false",
    ),
    (
        "external Redis without password",
        {"redis": {"enabled": False, "external": {"url": "redis://r:6379/0"}}},
        "has no password",
    ),
    (
        "HPA min above max",
        {"workers": {"defaults": {"autoscaling": {"hpa": {"minReplicas": 5, "maxReplicas": 2}}}}},
        "minReplicas exceeds maxReplicas",
    ),
    (
        "api extraEnv repeats a chart variable",
        {"api": {"extraEnv": [{"name": "API_PORT", "value": "9000"}]}},
        "api.extraEnv sets API_PORT, which the chart sets already",
    ),
    (
        "api extraEnv names one variable twice",
        {"api": {"extraEnv": [{"name": "FOO", "value": "1"}, {"name": "FOO", "value": "2"}]}},
        "api.extraEnv sets FOO",
    ),
    (
        "worker extraEnv repeats a chart variable",
        {"workers": {"defaults": {"extraEnv": [{"name": "REDIS_URL", "value": "redis://x:6379/0"}]}}},
        "workers.pools[default].extraEnv (or workers.defaults.extraEnv) sets REDIS_URL",
    ),
    (
        "config extraEnv repeats a ConfigMap key",
        {"config": {"extraEnv": {"LOG_LEVEL": "DEBUG"}}},
        "config.extraEnv sets LOG_LEVEL",
    ),
    (
        "preStop sleep eats the grace period",
        {"api": {"preStopSleepSeconds": 30, "terminationGracePeriodSeconds": 40}},
        "exceeds api.terminationGracePeriodSeconds (40)",
    ),
]


def render_with(helm: str, tmp_path: Path, values: dict[str, Any]) -> Any:
    path = tmp_path / "values.yaml"
    path.write_text(json.dumps(values))  # JSON is YAML
    return helm_template(helm, values=path, check=False)


@pytest.mark.parametrize(
    ("values", "needle"), [c[1:] for c in SCHEMA_REJECTS], ids=[c[0] for c in SCHEMA_REJECTS]
)
def test_schema_rejects(helm: str, tmp_path: Path, values: dict[str, Any], needle: str) -> None:
    proc = render_with(helm, tmp_path, values)
    assert proc.returncode != 0, f"accepted {values}"
    assert (
        "values don't meet the specifications of the schema" in proc.stderr or "schema" in proc.stderr.lower()
    ), proc.stderr
    assert needle in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("values", "needle"), [c[1:] for c in HELPER_REJECTS], ids=[c[0] for c in HELPER_REJECTS]
)
def test_validation_helper_rejects(helm: str, tmp_path: Path, values: dict[str, Any], needle: str) -> None:
    proc = render_with(helm, tmp_path, values)
    assert proc.returncode != 0, f"accepted {values}"
    assert "VALUES VALIDATION" in proc.stderr and needle in proc.stderr, proc.stderr


def test_one_message_names_every_problem(helm: str, tmp_path: Path) -> None:
    values = {
        "config": {"defaultQueue": "other"},
        "workers": {"defaults": {"autoscaling": {"keda": {"enabled": True}}}},
    }
    proc = render_with(helm, tmp_path, values)
    assert "consumed by no worker pool" in proc.stderr and "are both true" in proc.stderr, proc.stderr


def test_schema_forbids_unknown_keys_everywhere() -> None:
    """Every object the schema describes with properties closes itself to other keys."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and node.get("additionalProperties") is not False
            ):
                open_objects.append(path)
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk(schema, "#")
    assert not open_objects, open_objects


def test_schema_describes_every_default_value(helm: str, yaml_module: Any) -> None:
    """values.yaml passes its own schema (helm lint checks too) and each top-level key is described."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml_module.safe_load((CHART / "values.yaml").read_text())
    assert set(values) == set(schema["properties"]), set(values) ^ set(schema["properties"])


def test_extra_env_with_new_names_renders_once(helm: str, tmp_path: Path, yaml_module: Any) -> None:
    values = {
        "api": {"extraEnv": [{"name": "FOO", "value": "1"}]},
        "workers": {"defaults": {"extraEnv": [{"name": "BAR", "value": "2"}]}},
        "config": {"extraEnv": {"IDEMPOTENCY_TTL": "3600"}},
    }
    proc = render_with(helm, tmp_path, values)
    assert proc.returncode == 0, proc.stderr
    for obj in yaml_module.safe_load_all(proc.stdout):
        if obj and obj["kind"] == "Deployment":
            for container in obj["spec"]["template"]["spec"]["containers"]:
                names = [e["name"] for e in container.get("env", [])]
                assert len(names) == len(set(names)), (obj["metadata"]["name"], names)


def test_keda_needs_its_api(helm: str, tmp_path: Path) -> None:
    """Like the monitoring objects, KEDA's are gated on the cluster serving their API; a
    pool asking for KEDA where it is absent gets one readable message, not a failed apply."""
    path = tmp_path / "values.yaml"
    path.write_text(
        json.dumps(
            {"workers": {"defaults": {"autoscaling": {"hpa": {"enabled": False}, "keda": {"enabled": True}}}}}
        )
    )
    proc = helm_template(helm, values=path, crds=False, check=False)
    assert proc.returncode != 0
    assert "VALUES VALIDATION" in proc.stderr and "autoscaling.keda.enabled needs KEDA" in proc.stderr, (
        proc.stderr
    )
    assert helm_template(helm, values=path, crds=True, check=False).returncode == 0
