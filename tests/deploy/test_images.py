"""The images, built from the repository's Dockerfiles and run the way the chart runs them.

`make images` builds both images (scripts/images.sh: podman here, with a stand-in base
image from Debian packages where no registry answers). The chart is rendered with
`helm template` and tests/deploy/values.yaml; the API, worker, exporter and `helm test`
containers then start from that render (see stack.py) against a private
password-protected redis-server. A task runs to SUCCESS, all three /metrics answer,
the chart's `helm test` script passes inside the API image, and SIGTERM stops each
container with exit code 0 within its grace period; the worker finishes a task longer
than its soft-shutdown timeout first.

Needs root (a network namespace per run) and podman, which scripts/images.sh installs
from Debian's packages when missing. Where neither can be had the tests skip, saying
why; under CI=true they fail instead.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .stack import Pod, Rendered, podman

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "taskplane"
VALUES = Path(__file__).with_name("values.yaml")
RELEASE = "taskplane"
TAG = "imagetest"
API_IMAGE = f"localhost/taskplane-api:{TAG}"
WORKER_IMAGE = f"localhost/taskplane-worker:{TAG}"
#: The user's Redis Secret (redis.auth.existingSecret in values.yaml), with the issue's
#: password: pasted into a URL it would make the host "ss".
REDIS_SECRET = "taskplane-redis-auth"
REDIS_PASSWORD = "p@ss/w0rd#1"
#: Seconds the whole image build may take here (stand-in base included).
BUILD_TIMEOUT = 420

pytestmark = pytest.mark.timeout(900)


def unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def helm() -> str:
    proc = subprocess.run(
        [str(ROOT / "scripts" / "chart-tools.sh")], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        unavailable(f"scripts/chart-tools.sh could not install helm: {proc.stderr[-2000:]}")
    return str(ROOT / ".tools" / "bin" / "helm")


@pytest.fixture(scope="module")
def images() -> dict[str, float]:
    """Both images built by `make images` (scripts/images.sh) with podman; the build's seconds."""
    if os.geteuid() != 0:
        unavailable("the image test needs root: it runs containers in a network namespace of its own")
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} (util-linux) is missing")
    env = {**os.environ, "BUILDER": "podman", "IMAGE_TAG": TAG, "IMAGE_PREFIX": "localhost/"}
    if shutil.which("podman") is None:
        env.pop("BUILDER")  # `make images` installs podman when it finds no builder
    start = time.monotonic()
    proc = subprocess.run(
        ["make", "-C", str(ROOT), "images"], capture_output=True, text=True, env=env, timeout=BUILD_TIMEOUT
    )
    if shutil.which("podman") is None:
        unavailable(f"podman is not installed and could not be: {proc.stderr[-2000:]}")
    assert proc.returncode == 0, proc.stderr[-5000:]
    return {"build_seconds": time.monotonic() - start}


@pytest.fixture(scope="module")
def rendered(helm: str) -> Rendered:
    cmd = [helm, "template", RELEASE, str(CHART), "--namespace", RELEASE, "--values", str(VALUES)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    objects = [d for d in yaml.safe_load_all(proc.stdout) if d]
    # What `kubectl create secret generic taskplane-redis-auth --from-literal=password=...` makes.
    password = base64.b64encode(REDIS_PASSWORD.encode()).decode()
    objects.append({"kind": "Secret", "metadata": {"name": REDIS_SECRET}, "data": {"password": password}})
    return Rendered(objects)


def workload(rendered: Rendered, kind: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    obj = rendered.get(kind, name)
    spec = obj["spec"] if kind == "Pod" else obj["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


def probe(container: dict[str, Any], kind: str = "readinessProbe") -> tuple[int, str]:
    """The port and path of a container's HTTP probe, as rendered."""
    get = container[kind]["httpGet"]
    port = get["port"]
    if isinstance(port, str):
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
    return int(port), get["path"]


#: The chart's long-running components, by Deployment suffix.
COMPONENTS = ("api", "exporter", "worker-default")


def api_port(rendered: Rendered) -> int:
    return probe(workload(rendered, "Deployment", f"{RELEASE}-api")[1])[0]


@pytest.fixture(scope="module")
def stack(
    images: dict[str, float], rendered: Rendered, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pod]:
    suffix = f"{os.getpid()}"
    # Service names the containers use, all on the namespace's loopback.
    hosts = [f"{RELEASE}-redis", f"{RELEASE}-api", f"{RELEASE}-exporter"]
    pod = Pod(tmp_path_factory.mktemp("stack"), hosts)
    try:
        pod.start_redis(rendered.secret_value(REDIS_SECRET, "password"))
        for component in COMPONENTS:
            spec, container = workload(rendered, "Deployment", f"{RELEASE}-{component}")
            name = f"tp-{component}-{suffix}"
            pod.run_container(name, rendered, spec, container)
            pod.names[component] = name
            port, path = probe(container)
            pod.wait_http(port, path, container=name, timeout=90)
        yield pod
    finally:
        pod.close()


def token(rendered: Rendered) -> str:
    line = rendered.secret_value(f"{RELEASE}-api-tokens", "tokens").strip().splitlines()[0]
    return line.split(":", 1)[1]


def submit(pod: Pod, rendered: Rendered, seconds: float) -> str:
    status, body = pod.http(
        "POST",
        api_port(rendered),
        "/v1/tasks",
        {"Authorization": f"Bearer {token(rendered)}"},
        {"task": "long_running_task", "kwargs": {"data": "image-test", "seconds": seconds}},
    )
    assert status == 202, body
    return json.loads(body)["id"]


def wait_state(pod: Pod, rendered: Rendered, task_id: str, states: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        status, body = pod.http(
            "GET", api_port(rendered), f"/v1/tasks/{task_id}", {"Authorization": f"Bearer {token(rendered)}"}
        )
        if status == 200:
            state = json.loads(body)["state"]
            if state in states:
                return state
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} still {state} after {timeout} s, not in {states}")


def test_images_run_as_the_chart_says(images: dict[str, float], rendered: Rendered) -> None:
    """The rendered chart names the images just built, and their runtime has no installer."""
    for component, image in (("api", API_IMAGE), ("worker-default", WORKER_IMAGE)):
        _, container = workload(rendered, "Deployment", f"{RELEASE}-{component}")
        assert container["image"] == image
        probe = (
            "import importlib.util as u; "
            "print(','.join(m for m in ('pip', 'setuptools', 'wheel') if u.find_spec(m)))"
        )
        proc = podman(
            "run", "--rm", "--no-healthcheck", "--pull=never", "--entrypoint", "python", image, "-c", probe
        )
        assert proc.stdout.strip() == "", f"{image} still has {proc.stdout.strip()}"


def test_a_task_runs_to_success(stack: Pod, rendered: Rendered) -> None:
    task_id = submit(stack, rendered, 0)
    assert wait_state(stack, rendered, task_id, {"SUCCESS", "FAILURE"}, 60) == "SUCCESS"


def test_every_component_serves_metrics(stack: Pod, rendered: Rendered) -> None:
    expected = {
        "api": "taskplane_api_tasks_accepted_total",
        "exporter": "taskplane_queue_waiting",
        "worker-default": "taskplane_tasks_total",
    }
    for component, name in expected.items():
        port, _ = probe(workload(rendered, "Deployment", f"{RELEASE}-{component}")[1])
        status, body = stack.http("GET", port, "/metrics")
        assert status == 200 and name in body, f":{port}/metrics lacks {name}: {body[:500]}"


def test_servers_answer_over_ipv4_and_ipv6(stack: Pod, rendered: Rendered) -> None:
    """The chart's `::` binds every address: IPv6-only and dual-stack clusters reach the
    API, the exporter and the worker's probes as IPv4 ones do."""
    if not Path("/proc/net/if_inet6").exists():
        pytest.skip("this kernel has no IPv6")
    for component in COMPONENTS:
        port, path = probe(workload(rendered, "Deployment", f"{RELEASE}-{component}")[1], "livenessProbe")
        for host in ("127.0.0.1", "[::1]"):
            status, body = stack.http("GET", port, path, host=host)
            assert status == 200, f"{host}:{port}{path} -> {status} {body[:200]}"


def test_helm_test_script_passes_in_the_api_image(stack: Pod, rendered: Rendered) -> None:
    spec, container = workload(rendered, "Pod", f"{RELEASE}-test-task")
    assert container["image"] == API_IMAGE
    name = f"tp-helm-test-{os.getpid()}"
    proc = stack.run_container(name, rendered, spec, container, detach=False, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("component", "port", "probe"), [("api", 8001, "/readyz"), ("worker", 9810, "/readyz")]
)
def test_images_run_under_an_arbitrary_uid(
    stack: Pod, rendered: Rendered, component: str, port: int, probe: str
) -> None:
    """OpenShift's arbitrary uids, `docker run --user`: no volume mounted, a uid the image
    does not know, group 0. The process starts and serves its probe and /metrics."""
    _, container = workload(
        rendered, "Deployment", f"{RELEASE}-{'api' if component == 'api' else 'worker-default'}"
    )
    env = {
        "REDIS_URL": f"redis://{RELEASE}-redis:6379/0",
        "REDIS_PASSWORD": REDIS_PASSWORD,
        "API_PORT": str(port),
        "API_TOKENS": "uid-test:" + "t" * 32,
        "WORKER_METRICS_PORT": str(port),
        "METRICS_HOST": "127.0.0.1",
        "WORKER_QUEUES": "uid-test",
        "QUEUES": "uid-test",
    }
    name = f"tp-uid-{component}-{os.getpid()}"
    stack.run_plain(name, container["image"], env, "123456:0")
    stack.wait_http(port, probe, container=name, timeout=60)
    status, body = stack.http("GET", port, "/metrics")
    assert status == 200, body
    code, _ = stack.stop(name, timeout=60)
    assert code == 0, stack.logs(name)


def test_worker_sigterm_finishes_a_task_longer_than_the_soft_timeout(stack: Pod, rendered: Rendered) -> None:
    """SIGTERM during a task that outlives WORKER_SOFT_SHUTDOWN_TIMEOUT: the pool's
    shutdown model (warm here) lets it end SUCCESS, then the worker exits 0 within the
    grace period the chart gives it."""
    spec, container = workload(rendered, "Deployment", f"{RELEASE}-worker-default")
    env = {e["name"]: e.get("value") for e in container["env"]}
    soft = float(env["WORKER_SOFT_SHUTDOWN_TIMEOUT"])
    task_seconds = soft + 4
    task_id = submit(stack, rendered, task_seconds)
    wait_state(stack, rendered, task_id, {"STARTED", "PROGRESS"}, 30)
    code, took = stack.stop(stack.names["worker-default"], timeout=spec["terminationGracePeriodSeconds"])
    assert code == 0, stack.logs(stack.names["worker-default"])
    assert took < spec["terminationGracePeriodSeconds"]
    assert wait_state(stack, rendered, task_id, {"SUCCESS", "FAILURE"}, 5) == "SUCCESS"


@pytest.mark.parametrize("component", ["api", "exporter"])
def test_sigterm_stops_cleanly_within_the_grace_period(
    stack: Pod, rendered: Rendered, component: str
) -> None:
    spec, _ = workload(rendered, "Deployment", f"{RELEASE}-{component}")
    name = stack.names[component]
    code, took = stack.stop(name, timeout=spec["terminationGracePeriodSeconds"] + 10)
    assert code == 0, stack.logs(name)
    assert took < spec["terminationGracePeriodSeconds"], took
