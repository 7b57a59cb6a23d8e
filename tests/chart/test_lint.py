"""helm lint, checkov and hadolint, each with zero findings."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import CASES, CHART, CI_VALUES, ROOT, Render, find_tool, missing

DOCKERFILES = [ROOT / "Dockerfile.api", ROOT / "Dockerfile.worker"]
CHECKOV_CONFIG = CHART / ".checkov.yaml"


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=["default", *(p.name for p in CI_VALUES)])
def test_helm_lint_strict(helm: str, values: Path | None) -> None:
    cmd = [helm, "lint", "--strict", str(CHART)]
    if values is not None:
        cmd += ["--values", str(values)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_checkov_finds_nothing(renders: dict[str, Render], tmp_path: Path) -> None:
    """One checkov run over every render and both Dockerfiles (a run costs ~3 s)."""
    checkov = find_tool("checkov")
    if checkov is None:
        missing("checkov")
    for case in CASES:
        (tmp_path / f"{case}.yaml").write_text(renders[case].text)
    for dockerfile in DOCKERFILES:
        shutil.copy(dockerfile, tmp_path / dockerfile.name)
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"}
    proc = subprocess.run(
        [checkov, "--config-file", str(CHECKOV_CONFIG), "--directory", str(tmp_path), "--output", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    by_type = {r["check_type"]: r for r in reports}
    assert set(by_type) == {"kubernetes", "dockerfile"}, f"checkov scanned {sorted(by_type)}: {proc.stderr}"
    assert by_type["dockerfile"]["summary"]["resource_count"] == len(DOCKERFILES)
    failures = []
    for report in reports:
        summary = report["summary"]
        assert summary["parsing_errors"] == 0, f"{report['check_type']}: parsing errors"
        assert summary["passed"] > 0
        for check in report["results"]["failed_checks"]:
            failures.append(
                f"{check['check_id']} {check['check_name']}: {check['file_path']} {check['resource']}"
            )
    assert proc.returncode == 0 and not failures, "\n".join(failures) or proc.stderr


def test_hadolint_finds_nothing() -> None:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        missing("hadolint")
    proc = subprocess.run(
        [hadolint, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfiles_follow_the_image_rules() -> None:
    """Slim base pinned by digest, hashed lock installed before the source, no pip in the
    runtime stage, non-root user, exec-form entrypoint."""
    bases = set()
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        args = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ARG PYTHON_IMAGE=")]
        assert len(args) == 1, dockerfile
        base = args[0]
        bases.add(base)
        tag, _, digest = base.partition("@")
        assert tag.startswith("python:3.") and "-slim" in tag and tag.count(".") >= 2, base
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{dockerfile.name}: base not pinned by digest"
        froms = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
        assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"], froms
        runtime = text.split("\nFROM ")[-1]
        assert "USER 10001" in runtime and "PYTHONUNBUFFERED=1" in runtime
        assert "COPY --from=build" in runtime and "pip install" not in runtime
        assert "pip uninstall --yes pip setuptools" in runtime, "the runtime image keeps pip"
        assert "-m 1777 /run/taskplane/metrics" in runtime, "metrics dir writable by one uid only"
        assert text.index("COPY requirements.lock") < text.index("COPY services")
        assert "--require-hashes --no-deps" in text
        assert "--no-deps --no-build-isolation --no-index ." in text
        assert 'ENTRYPOINT ["taskplane", ' in text
    assert len(bases) == 1, bases


def test_image_locks_carry_hashes_and_build_backend_fits() -> None:
    """Every pin of the image locks has a sha256; the locked setuptools satisfies
    [build-system] and is new enough for the SPDX `license = "..."` string (77+)."""
    import tomllib

    for name in ("requirements.lock", "requirements-build.lock"):
        text = (ROOT / name).read_text()
        pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)
        assert pins, name
        for block in re.split(r"\n(?=[A-Za-z0-9_.-]+==)", text):
            if re.match(r"[A-Za-z0-9_.-]+==", block):
                assert "--hash=sha256:" in block, f"{name}: {block.splitlines()[0]} has no hash"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requires = project["build-system"]["requires"]
    assert requires == ["setuptools>=77"], requires
    locked = re.search(r"^setuptools==(\d+)", (ROOT / "requirements-build.lock").read_text(), re.M)
    assert locked and int(locked.group(1)) >= 77


def test_compose_runs_the_same_stack(yaml_module: Any) -> None:
    """docker-compose.yml: the four services, persistent non-evicting Redis, the
    repository's Dockerfiles, hardened containers."""
    compose = yaml_module.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {n for n, s in services.items() if not s.get("profiles")} == {
        "api", "worker", "exporter", "redis"}
    redis_command = " ".join(services["redis"]["command"])
    for flag in (
        "--appendonly yes",
        "--appendfsync everysec",
        "--maxmemory-policy noeviction",
        "--requirepass",
    ):
        assert flag in redis_command, flag
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    assert services["api"]["build"]["dockerfile"] == "Dockerfile.api"
    assert services["worker"]["build"]["dockerfile"] == "Dockerfile.worker"
    for name, service in services.items():
        assert service.get("read_only") is True and service.get("cap_drop") == ["ALL"], name
        assert str(service.get("user", "0")).split(":")[0] not in ("0", "root"), name


def test_compose_ha_profile_is_the_charts_sentinel_mode(yaml_module: Any) -> None:
    """The `ha` profile: a master and two replicas refusing writes without a replica, three
    sentinels watching the chart's master set with its quorum and timings; the app services
    take the Sentinel settings from the environment (empty: a single node)."""
    compose = yaml_module.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    values = yaml_module.safe_load((CHART / "values.yaml").read_text())["redis"]["sentinel"]
    ha = {n for n, s in services.items() if s.get("profiles") == ["ha"]}
    nodes = {n for n in ha if n.startswith("redis-ha-")}
    sentinels = {n for n in ha if n.startswith("redis-sentinel-")}
    assert len(nodes) == 3 and len(sentinels) == 3 and ha == nodes | sentinels
    for name in nodes:
        command = " ".join(services[name]["command"])
        assert services[name]["hostname"] == name
        assert f"--min-replicas-to-write {values['minReplicasToWrite']}" in command
        assert f"--min-replicas-max-lag {values['minReplicasMaxLag']}" in command
        assert "--replicaof redis-ha-0 6379" in command and "--appendonly yes" in command
        assert any(v.endswith(":/data") for v in services[name]["volumes"]), name
    for name in sentinels:
        command = " ".join(services[name]["command"])
        assert services[name]["hostname"] == name and "--sentinel" in command
        assert f"sentinel monitor {values['masterSet']} redis-ha-0 6379 {values['quorum']}" \
            in command
        for option, value in (("down-after-milliseconds", values["downAfterMilliseconds"]),
                              ("failover-timeout", values["failoverTimeout"])):
            assert f"sentinel {option} {values['masterSet']} {value}" in command
    env = compose["x-taskplane-env"]
    assert env["REDIS_SENTINEL_MASTER"] == "${TASKPLANE_REDIS_SENTINEL_MASTER:-}"
    assert env["REDIS_URL"].startswith("${TASKPLANE_REDIS_URL:-redis://redis:6379/0")


#: Variables whose value differs between compose and the chart by design: the Redis
#: host and password source, and the token list inline instead of a mounted file.
#: The Sentinel settings are empty (or auto) unless the `ha` profile's variables are given.
COMPOSE_OWN = {"REDIS_URL", "REDIS_PASSWORD", "API_TOKENS", "REDIS_SENTINEL_MASTER",
               "REDIS_SENTINEL_PASSWORD", "SUBMIT_RIDE_THROUGH"}


def test_compose_settings_match_the_rendered_chart(helm: str, yaml_module: Any) -> None:
    """Every variable, grace period, user and read-only root the chart's defaults give the
    API, the default worker pool and the exporter, compose gives its service too."""
    from .conftest import helm_template

    objects = [o for o in yaml_module.safe_load_all(helm_template(helm, "--skip-tests").stdout) if o]
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    services = yaml_module.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for service, deployment in (
        ("api", "taskplane-api"),
        ("worker", "taskplane-worker-default"),
        ("exporter", "taskplane-exporter"),
    ):
        spec = by_name[("Deployment", deployment)]["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        chart_env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            chart_env.update(by_name[("ConfigMap", source["configMapRef"]["name"])]["data"])
        for item in container["env"]:
            chart_env[item["name"]] = item.get("value", "<from a Secret>")
        compose_env = {k: str(v) for k, v in services[service]["environment"].items()}
        if "LOG_LEVEL" in compose_env:  # compose lets TASKPLANE_LOG_LEVEL override it
            compose_env["LOG_LEVEL"] = (
                compose_env["LOG_LEVEL"].replace("${TASKPLANE_LOG_LEVEL:-", "").rstrip("}")
            )
        mismatched = {
            k: (chart_env.get(k), compose_env.get(k))
            for k in set(chart_env) | set(compose_env)
            if k not in COMPOSE_OWN and chart_env.get(k) != compose_env.get(k)
        }
        assert not mismatched, f"{service}: (chart, compose) {mismatched}"
        assert set(COMPOSE_OWN) & set(chart_env) <= set(compose_env), service
        grace = int(str(services[service]["stop_grace_period"]).removesuffix("s"))
        assert grace == spec["terminationGracePeriodSeconds"], service
        sc = {**spec["securityContext"], **container["securityContext"]}
        assert services[service]["user"] == f"{sc['runAsUser']}:{sc['runAsGroup']}", service
        assert services[service]["read_only"] is sc["readOnlyRootFilesystem"], service
