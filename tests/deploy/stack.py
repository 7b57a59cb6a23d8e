"""Run the chart's containers with podman, the way the rendered chart runs them.

A Kubernetes pod is approximated by one private network namespace: a real
``redis-server`` runs in it (on the chart's port 6379, which is free there whatever
the machine runs), and the API, worker, exporter and ``helm test`` containers join it
with ``--network ns:...``. Service names resolve to the namespace's loopback through
``--add-host``. Nothing is published on the host: the test talks to the containers
with ``nsenter --net`` into the same namespace.

Everything a container gets is read from ``helm template``: image, command and
arguments, environment (ConfigMap ``envFrom``, ``valueFrom.secretKeyRef`` from the
rendered Secrets, ``$(VAR)`` references expanded as the kubelet does), user, group,
read-only root, dropped capabilities, no privilege escalation, and volumes
(``emptyDir`` as fresh host folders, Secret volumes as files).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.procs import Proc, find_binary

#: Brings the new namespace's loopback up (SIOCGIFFLAGS / SIOCSIFFLAGS), then becomes
#: redis-server: no dependency on iproute2.
LOOPBACK_UP = """
import fcntl, os, socket, struct, sys
s = socket.socket()
req = struct.pack("16sh", b"lo", 0)
flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, req))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 1))
os.execvp(sys.argv[1], sys.argv[1:])
"""

#: One HTTP request from inside the namespace; prints status and body as JSON.
HTTP_CALL = """
import json, sys, urllib.error, urllib.request
method, url, headers, body = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
req = urllib.request.Request(url, data=body.encode() if body else None, headers=headers, method=method)
try:
    with urllib.request.urlopen(req, timeout=5) as resp:
        out = {"status": resp.status, "body": resp.read().decode()}
except urllib.error.HTTPError as exc:
    out = {"status": exc.code, "body": exc.read().decode()}
except OSError as exc:
    out = {"status": 0, "body": repr(exc)}
print(json.dumps(out))
"""


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    conf = Path(__file__).resolve().parents[2] / ".tools" / "containers.conf"
    if not Path("/etc/containers/containers.conf").exists() and conf.exists():
        env.setdefault("CONTAINERS_CONF", str(conf))
    return env


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=podman_env()
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@dataclass
class Rendered:
    """The objects of one ``helm template``, by kind and name."""

    objects: list[dict[str, Any]]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for obj in self.objects:
            if obj["kind"] == kind and obj["metadata"]["name"] == name:
                return obj
        raise KeyError(f"{kind}/{name} is not rendered")

    def secret_value(self, name: str, key: str) -> str:
        return base64.b64decode(self.get("Secret", name)["data"][key]).decode()

    def config_value(self, name: str, key: str) -> str:
        return self.get("ConfigMap", name)["data"][key]


def expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, value)


def container_env(rendered: Rendered, container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(rendered.get("ConfigMap", source["configMapRef"]["name"])["data"])
        elif "secretRef" in source:
            data = rendered.get("Secret", source["secretRef"]["name"])["data"]
            env.update({k: base64.b64decode(v).decode() for k, v in data.items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(str(item["value"]), env)
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = rendered.secret_value(ref["name"], ref["key"])
        elif "configMapKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = rendered.config_value(ref["name"], ref["key"])
        else:
            raise AssertionError(f"env {item['name']}: source not supported by the image test")
    return env


@dataclass
class Pod:
    """The private network namespace, its redis-server and the containers started in it."""

    workdir: Path
    hosts: list[str]
    redis: Proc | None = None
    containers: list[str] = field(default_factory=list)
    #: Container name by component (api, exporter, worker-default).
    names: dict[str, str] = field(default_factory=dict)

    @property
    def netns(self) -> str:
        assert self.redis is not None
        return f"/proc/{self.redis.pid}/ns/net"

    def start_redis(self, password: str, port: int = 6379) -> None:
        data = self.workdir / "redis"
        data.mkdir()
        self.redis = Proc(
            "redis",
            [
                "unshare",
                "--net",
                sys.executable,
                "-c",
                LOOPBACK_UP,
                find_binary("redis-server"),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(data),
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                password,
            ],
            os.environ,
            log_dir=self.workdir,
        )

        def pong() -> bool:
            probe = self.run_inside(
                ["redis-cli", "-p", str(port), "--no-auth-warning", "-a", password, "ping"]
            )
            return probe.stdout.strip() == "PONG"

        self.redis.wait_until(pong, 20, "PONG inside the pod's namespace", interval=0.1)

    def run_inside(self, cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", f"--net={self.netns}", *cmd], capture_output=True, text=True, timeout=timeout
        )

    def http(
        self,
        method: str,
        port: int,
        path: str,
        headers: dict[str, str] | None = None,
        body: Any = None,
        host: str = "127.0.0.1",
    ) -> tuple[int, str]:
        data = "" if body is None else json.dumps(body)
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        proc = self.run_inside(
            [
                sys.executable,
                "-c",
                HTTP_CALL,
                method,
                f"http://{host}:{port}{path}",
                json.dumps(all_headers),
                data,
            ]
        )
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        return out["status"], out["body"]

    def wait_http(
        self, port: int, path: str, status: int = 200, timeout: float = 60, container: str | None = None
    ) -> None:
        deadline = time.monotonic() + timeout
        last: tuple[int, str] = (0, "")
        while time.monotonic() < deadline:
            last = self.http("GET", port, path)
            if last[0] == status:
                return
            if container and not self.running(container):
                raise AssertionError(f"{container} exited:\n{self.logs(container)}")
            time.sleep(0.25)
        raise AssertionError(
            f"GET :{port}{path} still {last} after {timeout} s\n"
            + (self.logs(container) if container else "")
        )

    def run_container(
        self,
        name: str,
        rendered: Rendered,
        pod_spec: dict[str, Any],
        container: dict[str, Any],
        detach: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """``podman run`` one container of a rendered pod spec, as the kubelet would."""
        pod_sc = pod_spec.get("securityContext", {})
        sc = {**pod_sc, **container.get("securityContext", {})}
        args = ["run", "--name", name, "--network", f"ns:{self.netns}", "--no-healthcheck", "--pull=never"]
        args += [f"--add-host={host}:127.0.0.1" for host in self.hosts]
        user, group = sc.get("runAsUser"), sc.get("runAsGroup")
        if user is not None:
            args += ["--user", f"{user}:{group if group is not None else 0}"]
        if pod_sc.get("fsGroup") is not None:
            args += ["--group-add", str(pod_sc["fsGroup"])]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        for cap in sc.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", cap]
        for cap in sc.get("capabilities", {}).get("add", []):
            args += ["--cap-add", cap]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        assert not sc.get("privileged"), name
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            args += ["-v", self._volume(name, volumes[mount["name"]], rendered, mount)]
        env = container_env(rendered, container)
        env_file = self.workdir / f"{name}.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items() if "\n" not in v))
        args += ["--env-file", str(env_file)]
        for k, v in env.items():
            if "\n" in v:
                args += ["-e", f"{k}={v}"]
        command = container.get("command")
        if command:
            args += ["--entrypoint", json.dumps(command)]
        if detach:
            args.append("-d")
        args.append(container["image"])
        args += [expand(a, env) for a in container.get("args", [])]
        self.containers.append(name)
        return podman(*args, check=detach, timeout=timeout)

    def run_plain(self, name: str, image: str, env: dict[str, str], user: str) -> None:
        """``podman run`` an image as a plain `docker run --user` would: no volumes."""
        args = [
            "run",
            "-d",
            "--name",
            name,
            "--network",
            f"ns:{self.netns}",
            "--no-healthcheck",
            "--pull=never",
            "--user",
            user,
        ]
        args += [f"--add-host={host}:127.0.0.1" for host in self.hosts]
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        self.containers.append(name)
        podman(*args, image)

    def _volume(
        self, container: str, volume: dict[str, Any], rendered: Rendered, mount: dict[str, Any]
    ) -> str:
        host = self.workdir / "volumes" / container / volume["name"]
        if "emptyDir" in volume:
            host.mkdir(parents=True)
            host.chmod(0o1777)  # an emptyDir is writable by the pod's user
        elif "secret" in volume:
            host.mkdir(parents=True)
            secret = rendered.get("Secret", volume["secret"]["secretName"])["data"]
            items = volume["secret"].get("items") or [{"key": k, "path": k} for k in secret]
            for item in items:
                path = host / item["path"]
                path.write_bytes(base64.b64decode(secret[item["key"]]))
                path.chmod(0o444)
        else:
            raise AssertionError(f"volume {volume['name']}: kind not supported by the image test")
        ro = ":ro" if mount.get("readOnly") else ""
        return f"{host}:{mount['mountPath']}{ro}"

    def running(self, name: str) -> bool:
        proc = podman("inspect", "--format", "{{.State.Running}}", name, check=False)
        return proc.stdout.strip() == "true"

    def logs(self, name: str) -> str:
        proc = podman("logs", name, check=False)
        return f"--- {name} logs ---\n{proc.stdout}{proc.stderr}"

    def stop(self, name: str, timeout: float) -> tuple[int, float]:
        """SIGTERM, as the kubelet sends it; the exit code and seconds until the exit."""
        start = time.monotonic()
        podman("kill", "--signal", "TERM", name)
        proc = podman("wait", name, timeout=timeout)
        return int(proc.stdout.strip().splitlines()[-1]), time.monotonic() - start

    def close(self) -> None:
        for name in self.containers:
            podman("rm", "--force", "--time", "0", name, check=False)
        if self.redis is not None:
            self.redis.stop(timeout=10)
