"""What every render must hold beyond schema validity: security, probes, autoscalers, stop path."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import CASES, Render, env_of, is_one_shot, pod_specs, pod_template_labels

WORKLOADS = ("Deployment", "StatefulSet", "Pod", "Job", "CronJob")


def workloads(render: Render) -> list[dict[str, Any]]:
    return render.of_kind(*WORKLOADS)


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for spec in pod_specs(obj):
        out += spec.get("initContainers", []) + spec.get("containers", [])
    return out


def name(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def worker_deployments(render: Render) -> list[dict[str, Any]]:
    return [
        d
        for d in render.of_kind("Deployment")
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
    ]


@pytest.mark.parametrize("case", CASES)
def test_every_container_has_requests_and_limits(renders: dict[str, Render], case: str) -> None:
    problems = []
    for obj in workloads(renders[case]):
        for c in containers(obj):
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in res.get(part, {}):
                        problems.append(f"{name(obj)} {c['name']}: no {part}.{resource}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", CASES)
def test_long_running_containers_have_probes(renders: dict[str, Render], case: str) -> None:
    problems = []
    for obj in workloads(renders[case]):
        if is_one_shot(obj):
            continue
        for spec in pod_specs(obj):
            for c in spec["containers"]:
                for probe in ("livenessProbe", "readinessProbe"):
                    if probe not in c:
                        problems.append(f"{name(obj)} {c['name']}: no {probe}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", CASES)
def test_secure_security_context_everywhere(renders: dict[str, Render], case: str) -> None:
    problems = []
    for obj in workloads(renders[case]):
        for spec in pod_specs(obj):
            pod_sc = spec.get("securityContext", {})
            if spec.get("automountServiceAccountToken") is not False:
                problems.append(f"{name(obj)}: automountServiceAccountToken is not false")
            if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
                problems.append(f"{name(obj)}: uses a host namespace")
            for c in spec.get("initContainers", []) + spec["containers"]:
                sc = c.get("securityContext", {})
                where = f"{name(obj)} {c['name']}"
                checks = {
                    "allowPrivilegeEscalation is false": sc.get("allowPrivilegeEscalation") is False,
                    "readOnlyRootFilesystem is true": sc.get("readOnlyRootFilesystem") is True,
                    "runs as non-root": (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")) is True,
                    "non-root UID": (sc.get("runAsUser", pod_sc.get("runAsUser")) or 0) >= 1000,
                    "drops ALL capabilities": "ALL" in sc.get("capabilities", {}).get("drop", []),
                    "adds no capability": not sc.get("capabilities", {}).get("add"),
                    "not privileged": not sc.get("privileged", False),
                    "seccomp RuntimeDefault": (
                        sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}
                    ).get("type")
                    == "RuntimeDefault",
                }
                problems += [f"{where}: not {what}" for what, ok in checks.items() if not ok]
    for sa in renders[case].of_kind("ServiceAccount"):
        if sa.get("automountServiceAccountToken") is not False:
            problems.append(f"{name(sa)}: automountServiceAccountToken is not false")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", CASES)
def test_writable_paths_are_emptydirs(renders: dict[str, Render], case: str) -> None:
    """Read-only root: /tmp and PROMETHEUS_MULTIPROC_DIR live on emptyDirs (api, workers)."""
    problems = []
    for obj in workloads(renders[case]):
        component = pod_template_labels(obj).get("app.kubernetes.io/component")
        for spec in pod_specs(obj):
            empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
            for c in spec["containers"]:
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                if mounts.get("/tmp") not in empty_dirs:
                    problems.append(f"{name(obj)} {c['name']}: /tmp is not an emptyDir")
                if component in ("api", "worker"):
                    env = {k: v.get("value") for k, v in env_of(c).items()}
                    settings = settings_configmap(renders[case])["data"]
                    directory = env.get("PROMETHEUS_MULTIPROC_DIR") or settings.get(
                        "PROMETHEUS_MULTIPROC_DIR"
                    )
                    if not directory or mounts.get(directory) not in empty_dirs:
                        problems.append(
                            f"{name(obj)} {c['name']}: PROMETHEUS_MULTIPROC_DIR "
                            f"{directory!r} is not an emptyDir mount"
                        )
    assert not problems, "\n".join(problems)


def settings_configmap(render: Render) -> dict[str, Any]:
    """The settings ConfigMap every Taskplane container takes envFrom."""
    api = render.get("Deployment", "taskplane-api")
    ref = api["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"]
    return render.get("ConfigMap", ref)


@pytest.mark.parametrize("case", CASES)
def test_every_pool_has_exactly_one_autoscaler_on_its_own_deployment(
    renders: dict[str, Render], case: str
) -> None:
    render = renders[case]
    targets: dict[str, list[str]] = {}
    for scaler in render.of_kind("HorizontalPodAutoscaler", "ScaledObject"):
        ref = scaler["spec"]["scaleTargetRef"]
        assert ref.get("kind", "Deployment") == "Deployment", name(scaler)
        targets.setdefault(ref["name"], []).append(name(scaler))
    pools = worker_deployments(render)
    assert pools, "no worker pool rendered"
    for deployment in pools:
        scalers = targets.get(deployment["metadata"]["name"], [])
        assert len(scalers) == 1, f"{name(deployment)} has autoscalers {scalers}"
        pool = deployment["metadata"]["labels"]["taskplane.io/pool"]
        for scaler in scalers:
            kind, scaler_name = scaler.split("/")
            obj = render.get(kind, scaler_name)
            assert obj["metadata"]["labels"]["taskplane.io/pool"] == pool
        # An autoscaled Deployment leaves replicas to its autoscaler.
        assert "replicas" not in deployment["spec"], f"{name(deployment)} pins replicas"
    for target in targets:
        assert any(d["metadata"]["name"] == target for d in render.of_kind("Deployment")), (
            f"autoscaler targets missing Deployment {target}"
        )


@pytest.mark.parametrize("case", CASES)
def test_autoscalers_scale_on_queue_metrics_fast_up_slow_down(renders: dict[str, Render], case: str) -> None:
    render = renders[case]
    for hpa in render.of_kind("HorizontalPodAutoscaler"):
        if hpa["metadata"]["labels"].get("app.kubernetes.io/component") != "worker":
            continue
        targets = {m["external"]["target"]["type"] for m in hpa["spec"]["metrics"]}
        assert targets == {"AverageValue", "Value"}, name(hpa)
        for metric in hpa["spec"]["metrics"]:
            assert metric["type"] == "External"
            queues = metric["external"]["metric"]["selector"]["matchExpressions"][0]
            assert queues["key"] == "queue" and queues["operator"] == "In" and queues["values"]
        behavior = hpa["spec"]["behavior"]
        assert (
            behavior["scaleUp"]["stabilizationWindowSeconds"]
            < behavior["scaleDown"]["stabilizationWindowSeconds"]
        )
    for so in render.of_kind("ScaledObject"):
        behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert (
            behavior["scaleUp"]["stabilizationWindowSeconds"]
            < behavior["scaleDown"]["stabilizationWindowSeconds"]
        )
        assert so["spec"]["triggers"], name(so)
        for trigger in so["spec"]["triggers"]:
            assert trigger["type"] == "prometheus", name(so)
            if so["spec"].get("minReplicaCount", 1) == 0:
                assert "activationThreshold" in trigger["metadata"], f"{name(so)}: scale to zero without it"


@pytest.mark.parametrize("case", CASES)
def test_worker_stop_path_follows_the_pool_shutdown_model(renders: dict[str, Render], case: str) -> None:
    """One shutdown model per pool: warm (SIGTERM not remapped; the grace period covers the
    pool's longest hard time limit) or soft (SIGTERM remapped to SIGQUIT; the grace period
    covers the soft-shutdown timeout, after which running tasks are handed back)."""
    for deployment in worker_deployments(renders[case]):
        spec = deployment["spec"]["template"]["spec"]
        (worker,) = spec["containers"]
        env = {k: v.get("value") for k, v in env_of(worker).items()}
        limit = int(deployment["metadata"]["annotations"]["taskplane.io/max-task-time-limit"])
        soft = int(env["WORKER_SOFT_SHUTDOWN_TIMEOUT"])
        shutdown = deployment["metadata"]["annotations"]["taskplane.io/shutdown"]
        if shutdown == "warm":
            assert env["REMAP_SIGTERM"] == "", name(deployment)
            assert spec["terminationGracePeriodSeconds"] >= limit, name(deployment)
        else:
            assert shutdown == "soft" and env["REMAP_SIGTERM"] == "SIGQUIT", name(deployment)
            assert soft <= spec["terminationGracePeriodSeconds"] < limit, name(deployment)
        assert env["WORKER_QUEUES"] == deployment["metadata"]["annotations"]["taskplane.io/queues"]
        # Liveness must detect a stuck consumer, not merely a live process.
        assert worker["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert "LIVENESS_TIMEOUT" in env
        strategy = deployment["spec"]["strategy"]["rollingUpdate"]
        assert strategy["maxUnavailable"] == 0, name(deployment)


@pytest.mark.parametrize("case", CASES)
def test_pool_time_limit_covers_the_code_tasks(renders: dict[str, Render], case: str) -> None:
    """Each pool declares at least the hard time limit of every built-in task on its queues."""
    try:
        from taskplane.tasks import load_task_modules

        registry = load_task_modules([], builtin=True)
    except Exception as exc:  # the code is another package: tolerate its absence or churn
        pytest.skip(f"taskplane's task registry is not importable here: {exc!r}")
    assert len(registry), "no built-in task registered"
    render = renders[case]
    config = settings_configmap(render)["data"]
    default_queue, default_limit = config["DEFAULT_QUEUE"], int(config["DEFAULT_TIME_LIMIT"])
    for deployment in worker_deployments(render):
        queues = set(deployment["metadata"]["annotations"]["taskplane.io/queues"].split(","))
        declared = int(deployment["metadata"]["annotations"]["taskplane.io/max-task-time-limit"])
        for spec in registry:
            if (spec.queue or default_queue) in queues:
                limit = spec.time_limit or default_limit
                assert declared >= limit, (
                    f"{name(deployment)} declares maxTaskTimeLimit {declared} but task "
                    f"{spec.name} may run {limit} s"
                )


@pytest.mark.parametrize("case", CASES)
def test_api_reads_tokens_from_a_mounted_secret(renders: dict[str, Render], case: str) -> None:
    api = renders[case].get("Deployment", "taskplane-api")
    spec = api["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = env_of(container)
    path = env["API_TOKENS"]["value"]
    assert ":" not in path, "API_TOKENS must be a file path (no ':')"
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert "secret" in volume
    assert env["API_HOST"]["value"] == "::"
    assert "REDIS_URL" in env
    if case != "flower":
        assert "API_ADMIN_TOKENS" not in env  # no operator role unless a Secret is named
        return
    operators = env["API_ADMIN_TOKENS"]["value"]  # the operators' token file, mounted too
    mount = next(m for m in container["volumeMounts"] if operators.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "taskplane-operators"


@pytest.mark.parametrize("case", CASES)
def test_redis_is_persistent_and_never_evicts(renders: dict[str, Render], case: str) -> None:
    render = renders[case]
    statefulsets = render.of_kind("StatefulSet")
    if not statefulsets:
        api = render.get("Deployment", "taskplane-api")
        redis_url = env_of(api["spec"]["template"]["spec"]["containers"][0])["REDIS_URL"]
        assert "secretKeyRef" in redis_url["valueFrom"], "external Redis URL must come from a Secret"
        return
    (redis,) = statefulsets
    data = render.get("ConfigMap", "taskplane-redis")["data"]
    config = data["redis.conf"]
    for line in ("appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction"):
        assert line in config.splitlines(), line
    service = render.get("Service", redis["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None", "Redis Service must be headless"
    if case == "sentinel":
        assert_sentinel_mode(render, redis, data)
    else:
        (container,) = redis["spec"]["template"]["spec"]["containers"]
        assert "--requirepass" in " ".join(container["command"])
    values_persistent = case != "monitoring-off"
    assert bool(redis["spec"].get("volumeClaimTemplates")) == values_persistent


def assert_sentinel_mode(render: Render, redis: dict[str, Any], data: dict[str, str]) -> None:
    """redis.sentinel.enabled: three pods, each Redis plus Sentinel from the same image; a
    master cut off from its replicas refuses writes; the master hands over on preStop; one
    pod per node; two pods kept through a drain; every app container told the sentinels."""
    assert redis["spec"]["replicas"] == 3
    spec = redis["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in spec["containers"]}
    assert sorted(containers) == ["redis", "sentinel"]
    assert containers["redis"]["image"] == containers["sentinel"]["image"]
    assert "--requirepass" in data["start-redis.sh"]
    assert "--sentinel" in data["start-sentinel.sh"]
    assert "min-replicas-to-write 1" in data["redis.conf"].splitlines()
    assert any(line.startswith("min-replicas-max-lag ") for line in data["redis.conf"].splitlines())
    assert "sentinel failover" in data["handover.sh"] and "client pause" in data["handover.sh"]
    assert containers["redis"]["lifecycle"]["preStop"]["exec"]["command"][-1].endswith(
        "handover.sh")
    conf_mount = {m["mountPath"]: m["name"] for m in containers["sentinel"]["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[conf_mount["/sentinel"]], "Sentinel rewrites its config"
    terms = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0]["topologyKey"] == "kubernetes.io/hostname"
    (pdb,) = [p for p in render.of_kind("PodDisruptionBudget")
              if p["metadata"]["name"] == "taskplane-redis"]
    assert pdb["spec"]["minAvailable"] == 2
    api = render.get("Deployment", "taskplane-api")
    env = env_of(api["spec"]["template"]["spec"]["containers"][0])
    assert env["REDIS_URL"]["value"].count("sentinel://") == 3
    assert env["REDIS_SENTINEL_MASTER"]["value"]
    assert env["REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == (
        "redis-sentinel-password")


@pytest.mark.parametrize("case", CASES)
def test_network_policies_cover_every_pod_and_guard_redis(renders: dict[str, Render], case: str) -> None:
    render = renders[case]
    policies = render.of_kind("NetworkPolicy")
    if not policies:
        assert case == "monitoring-off", "NetworkPolicies are on by default"
        return

    def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
            return False
        for expr in selector.get("matchExpressions", []):
            if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
                return False
        return True

    for obj in workloads(render):
        labels = pod_template_labels(obj)
        assert any(selects(p["spec"]["podSelector"], labels) for p in policies), (
            f"{name(obj)} is selected by no NetworkPolicy"
        )
    redis_policies = [
        p
        for p in policies
        if p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component") == "redis"
        # Flower's own policy opens Redis to Flower only (tests/chart/test_flower.py)
        and p["metadata"]["labels"].get("app.kubernetes.io/component") != "flower"
    ]
    if render.of_kind("StatefulSet"):
        (policy,) = redis_policies
        rule, *peers = policy["spec"]["ingress"]
        if case == "sentinel":  # 26379 too; the Redis pods (and the helm test) among themselves
            assert [p["port"] for p in rule["ports"]] == ["redis", "sentinel"]
            (among,) = peers
            assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                    for p in among["from"]] == ["redis", "test"]
        else:
            assert not peers
        (peer,) = rule["from"]
        allowed = peer["podSelector"]["matchExpressions"][0]
        assert allowed["key"] == "app.kubernetes.io/component"
        assert sorted(allowed["values"]) == ["api", "exporter", "scheduler", "worker"]
        assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "taskplane"


@pytest.mark.parametrize("case", CASES)
def test_selectors_match_their_pods(renders: dict[str, Render], case: str) -> None:
    render = renders[case]
    for obj in render.of_kind("Deployment", "StatefulSet"):
        labels = pod_template_labels(obj)
        for k, v in obj["spec"]["selector"]["matchLabels"].items():
            assert labels.get(k) == v, f"{name(obj)}: selector {k}={v} not on its pods"
    for svc in render.of_kind("Service"):
        selector = svc["spec"]["selector"]
        assert any(
            all(pod_template_labels(w).get(k) == v for k, v in selector.items())
            for w in render.of_kind("Deployment", "StatefulSet")
        ), f"{name(svc)} selects no pods"
    for pdb in render.of_kind("PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(
            all(pod_template_labels(w).get(k) == v for k, v in selector.items())
            for w in render.of_kind("Deployment", "StatefulSet")
        ), f"{name(pdb)} selects no pods"
        if selector.get("app.kubernetes.io/component") == "redis":  # never scaled to zero
            assert pdb["spec"].get("minAvailable") == 2, f"{name(pdb)}: keep master and a replica"
            continue
        assert "maxUnavailable" in pdb["spec"], f"{name(pdb)}: minAvailable would block drains at zero"


@pytest.mark.parametrize("case", CASES)
def test_exporter_is_a_single_replica(renders: dict[str, Render], case: str) -> None:
    exporter = renders[case].get("Deployment", "taskplane-exporter")
    assert exporter["spec"]["replicas"] == 1
    assert exporter["spec"]["strategy"]["type"] == "Recreate"


def test_monitoring_objects_follow_their_switches(renders: dict[str, Render]) -> None:
    on, off = renders["default"], renders["monitoring-off"]
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        assert on.of_kind(kind), f"default render has no {kind}"
        assert not off.of_kind(kind), f"monitoring-off render has a {kind}"
    dashboards = [cm for cm in on.of_kind("ConfigMap") if "grafana_dashboard" in cm["metadata"]["labels"]]
    assert len(dashboards) == 1 and dashboards[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert not [cm for cm in off.of_kind("ConfigMap") if "grafana_dashboard" in cm["metadata"]["labels"]]


def test_monitoring_needs_the_operator_crds(helm: str) -> None:
    """Without the prometheus-operator CRDs, no ServiceMonitor (the install would fail)."""
    from .conftest import helm_template

    text = helm_template(helm, crds=False).stdout
    assert "kind: ServiceMonitor" not in text and "kind: PrometheusRule" not in text


def test_helm_test_pod_submits_and_polls(renders: dict[str, Render]) -> None:
    pods = [
        p
        for p in renders["default"].of_kind("Pod")
        if p["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
    ]
    assert len(pods) == 1
    (container,) = pods[0]["spec"]["containers"]
    script = "\n".join(container["command"])
    for needle in ("/v1/tasks", "long_running_task", "SUCCESS", "Authorization", "deadline"):
        assert needle in script, needle
    assert pods[0]["spec"]["restartPolicy"] == "Never"


def test_shutdown_models_are_both_rendered(renders: dict[str, Render]) -> None:
    """The default pool stops warm; the two-pools case renders a soft pool too."""
    two_pools = worker_deployments(renders["two-pools"])
    models = {d["metadata"]["annotations"]["taskplane.io/shutdown"] for d in two_pools}
    assert models == {"warm", "soft"}
    (default,) = worker_deployments(renders["default"])
    assert default["metadata"]["annotations"]["taskplane.io/shutdown"] == "warm"


@pytest.mark.parametrize("case", CASES)
def test_redis_password_is_never_pasted_into_a_url(renders: dict[str, Render], case: str) -> None:
    """REDIS_PASSWORD comes from a Secret on its own; no REDIS_URL value interpolates it
    (a user's `p@ss/w0rd#1` would otherwise make the host `ss`)."""
    for workload in workloads(renders[case]):
        for container in containers(workload):
            env = env_of(container)
            url = env.get("REDIS_URL", {}).get("value", "")
            assert "$(" not in url and "@" not in url, f"{name(workload)}: REDIS_URL {url!r}"
            if "value" in env.get("REDIS_URL", {}):
                assert "secretKeyRef" in env["REDIS_PASSWORD"]["valueFrom"], name(workload)


def test_tls_redis_gets_its_ca_bundle(renders: dict[str, Render]) -> None:
    """redis.external.caSecret: every Redis client container gets REDIS_TLS_CA_FILE, a file
    of the mounted Secret."""
    render = renders["external-redis"]
    for component in ("taskplane-api", "taskplane-exporter", "taskplane-worker-default"):
        spec = render.get("Deployment", component)["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        path = env_of(container)["REDIS_TLS_CA_FILE"]["value"]
        mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == "taskplane-ci-redis-ca" and mount["readOnly"] is True


@pytest.mark.parametrize("release", ["r" * 53, "taskplane-" + "x" * 43])
def test_longest_release_name_makes_valid_distinct_names(helm: str, release: str, tmp_path: Path) -> None:
    """Helm allows 53-character release names. Every name stays a DNS label (63), a
    StatefulSet leaves room for its controller-revision-hash label (52), cutting keeps
    each component's suffix so no two objects of a kind collide, and references follow."""
    import yaml

    from .conftest import CHART, CI_VALUES

    values = next(p for p in CI_VALUES if p.name == "two-pools-values.yaml")
    proc = subprocess.run(
        [
            helm,
            "template",
            release,
            str(CHART),
            "--values",
            str(values),
            "--api-versions",
            "keda.sh/v1alpha1/ScaledObject",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    objects = [o for o in yaml.safe_load_all(proc.stdout) if o]
    seen: dict[tuple[str, str], int] = {}
    for obj in objects:
        meta = obj["metadata"]
        key = (obj["kind"], meta["name"])
        seen[key] = seen.get(key, 0) + 1
        limit = 52 if obj["kind"] == "StatefulSet" else 63
        assert len(meta["name"]) <= limit, f"{obj['kind']} {meta['name']} ({len(meta['name'])})"
        for label, value in meta.get("labels", {}).items():
            assert len(str(value)) <= 63, f"{meta['name']}: label {label}"
    assert all(n == 1 for n in seen.values()), [k for k, n in seen.items() if n > 1]
    names = {kind: sorted(n for k, n in seen if k == kind) for kind in ("Deployment", "StatefulSet")}
    assert [n.rsplit("-", 2)[-2:] for n in names["Deployment"] if "-worker-" in n] == [
        ["worker", "default"],
        ["worker", "heavy"],
    ]
    (redis,) = [o for o in objects if o["kind"] == "StatefulSet"]
    assert redis["metadata"]["name"].endswith("-redis")
    assert any(
        o["kind"] == "Service" and o["metadata"]["name"] == redis["spec"]["serviceName"] for o in objects
    )
    api = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-api"))
    url = env_of(api["spec"]["template"]["spec"]["containers"][0])["REDIS_URL"]["value"]
    assert url == f"redis://{redis['spec']['serviceName']}:6379/0"


def test_default_ingress_keeps_internal_routes_inside(helm: str) -> None:
    """An enabled Ingress with the default paths routes the task API but not /metrics,
    /openapi.json or the probes (Kubernetes Prefix matching: whole path elements)."""
    import yaml

    from .conftest import helm_template

    render = helm_template(helm, "--set", "api.ingress.enabled=true")
    (ingress,) = [o for o in yaml.safe_load_all(render.stdout) if o and o["kind"] == "Ingress"]
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]

    def routed(request_path: str) -> bool:
        for p in paths:
            if p["pathType"] == "Exact" and request_path == p["path"]:
                return True
            if p["pathType"] in ("Prefix", "ImplementationSpecific"):
                prefix = p["path"].rstrip("/").split("/")
                if request_path.split("/")[: len(prefix)] == prefix:
                    return True
        return False

    for public in ("/v1/tasks", "/v1/tasks/abc", "/start_task/hello", "/task_status/abc"):
        assert routed(public), public
    for internal in ("/metrics", "/openapi.json", "/healthz", "/readyz"):
        assert not routed(internal), internal
