"""The processes a benchmark runs: a private Redis, Taskplane's API, workers and exporter,
the blog post's app and worker, the bare Flask app, and Prometheus.

Each process gets a log file under the run's scratch directory, its own session (so
stopping it stops its children), and a clean environment: nothing from the caller's
``REDIS_URL`` or ``PROMETHEUS_*`` leaks in, so no benchmark touches a Redis it did not
start. ``Stack`` stops everything it started when it exits, whatever happened.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal as signals
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis
from tests.support.procs import Proc, Prometheus, free_port, stop_all
from tests.support.services import RedisServer

from taskplane.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "bench" / "baseline"
VENV_BIN = Path(sys.executable).parent
TENANT = "bench"

__all__ = ["BASELINE", "ROOT", "TENANT", "Stack"]


def _bin(name: str) -> str:
    local = VENV_BIN / name
    return str(local) if local.exists() else name


class Stack:
    """Everything one benchmark run starts; ``close()`` stops it all."""

    def __init__(self, workdir: Path | None = None, keep_logs: bool = False) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="taskplane-bench-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keep_logs = keep_logs
        self.token = f"bench-{secrets.token_hex(12)}"
        self.redis: RedisServer | None = None
        self.procs: list[Proc] = []
        # Prometheus' multiprocess files live in memory, as in the chart (an emptyDir of
        # medium Memory) and the compose stack (tmpfs): on a disk file system every
        # metric update dirties a page of a file-backed mapping.
        shm = Path("/dev/shm")  # noqa: S108 - mkdtemp makes a private directory in it
        self.metrics_root = (Path(tempfile.mkdtemp(prefix="taskplane-bench-metrics-", dir=shm))
                             if shm.is_dir() and os.access(shm, os.W_OK) else self.workdir)

    # -- plumbing ---------------------------------------------------------------------
    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.stop(*reversed(self.procs), timeout=15)
        if self.redis is not None:
            self.redis.close()
            self.redis = None
        if self.metrics_root != self.workdir:
            shutil.rmtree(self.metrics_root, ignore_errors=True)
        if not self.keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def spawn(self, name: str, args: list[str], env: dict[str, str], cwd: Path = ROOT,
              port: int | None = None, probe: str = "/") -> Proc:
        proc = Proc(name, args, env, log_dir=self.workdir, cwd=cwd, port=port, probe=probe)
        self.procs.append(proc)
        return proc

    def forget(self, proc: Proc) -> None:
        if proc in self.procs:
            self.procs.remove(proc)

    def stop(self, *procs: Proc, timeout: float = 30, sig: int = signals.SIGTERM) -> None:
        """Stop these processes together: ``sig`` to all, then wait for each (SIGKILL after ``timeout``).

        Benchmarks SIGKILL workers whose work is over and accounted for: a worker's graceful
        stop takes ~1.7 s and measures nothing.
        """
        stop_all(list(procs), sig, timeout)
        for proc in procs:
            self.forget(proc)

    @property
    def redis_url(self) -> str:
        assert self.redis is not None, "start_redis() first"
        return self.redis.url

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=10)

    def env(self, **extra: Any) -> dict[str, str]:
        """A clean environment for a Taskplane process of this stack."""
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env.update({
            "REDIS_URL": self.redis_url,
            "API_TOKENS": f"{TENANT}:{self.token}",
            # The per-tenant limiter stays on (every submission spends a token in its
            # script, as in production) at a rate no benchmark reaches.
            "RATE_LIMIT": "1000000",
            "RATE_LIMIT_BURST": "1000000",
            "TASK_MODULES": "bench.tasks",
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "INFO",
        })
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def metrics_dir(self, name: str) -> str:
        path = self.metrics_root / f"metrics-{name}"
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    # -- processes --------------------------------------------------------------------
    def start_redis(self) -> RedisServer:
        self.redis = RedisServer().start()
        return self.redis

    def api_workers(self) -> int:
        """gunicorn workers per API server (``API_WORKERS``), baselines included."""
        return Settings.from_env(self.env()).api_workers

    def start_api(self, name: str = "api", metrics: bool = True, wait: bool = True, **env: Any) -> Proc:
        """Taskplane's API: ``taskplane api`` (gunicorn with Taskplane's configuration)."""
        port = free_port()
        e = self.env(API_PORT=port, METRICS_ENABLED=str(metrics).lower(),
                     PROMETHEUS_MULTIPROC_DIR=self.metrics_dir(name), **env)
        proc = self.spawn(name, [_bin("taskplane"), "api"], e, port=port, probe="/healthz")
        return proc.wait_http() if wait else proc

    def start_baseline_api(self, name: str, app: str, wait: bool = True, **env: Any) -> Proc:
        """``bare:app``, ``floor:app`` or the post's ``app:app`` under Taskplane's gunicorn
        configuration."""
        port = free_port()
        e = self.env(API_PORT=port, BASELINE_APP=app, PYTHONPATH=f"{BASELINE}:{ROOT}",
                     PROMETHEUS_MULTIPROC_DIR=self.metrics_dir(name), **env)
        args = [sys.executable, "-m", "gunicorn", "--no-control-socket", "--chdir", str(BASELINE),
                "-c", "python:gunicorn_conf"]
        probe = {"bare": "/", "floor": "/healthz"}.get(app.split(":")[0], "/task_status/probe")
        proc = self.spawn(name, args, e, cwd=BASELINE, port=port, probe=probe)
        return proc.wait_http() if wait else proc

    def start_worker(self, name: str = "w1", metrics: bool = True, concurrency: int = 2,
                     wait: bool = True, metrics_port: int | None = None, **env: Any) -> Proc:
        """A Taskplane worker pod: ``taskplane worker`` with ``concurrency`` pool processes.

        It stops by soft shutdown, 2 s, unless ``env`` says otherwise (the default is warm,
        ``taskplane.worker.SHUTDOWN_MODEL``): a benchmark stops workers that may still hold
        tasks nobody waits for (the autoscaler passes the chart's).
        """
        env.setdefault("REMAP_SIGTERM", "SIGQUIT")
        env.setdefault("WORKER_SOFT_SHUTDOWN_TIMEOUT", 2)
        e = self.env(WORKER_CONCURRENCY=concurrency, METRICS_ENABLED=str(metrics).lower(),
                     WORKER_METRICS_PORT=metrics_port if metrics_port is not None else free_port(),
                     PROMETHEUS_MULTIPROC_DIR=self.metrics_dir(f"worker-{name}"), **env)
        proc = self.spawn(f"worker-{name}", [_bin("taskplane"), "worker",
                                             f"--hostname={name}@%h"], e)
        if wait:
            self.wait_worker_ready(proc)
        return proc

    def start_seed_worker(self, name: str = "seed-worker", concurrency: int = 2,
                          wait: bool = True) -> Proc:
        """The post's worker command, ``celery -A tasks.celery_app worker -l info``.

        ``--concurrency`` is given explicitly so the pool has the same 2 processes as a
        Taskplane worker pod on any machine (it is Celery's default on a 2-core one).
        """
        e = self.env(PYTHONPATH=str(BASELINE))
        args = [_bin("celery"), "-A", "tasks.celery_app", "worker", "-l", "info",
                f"--concurrency={concurrency}", f"--hostname={name}@%h"]
        proc = self.spawn(name, args, e, cwd=BASELINE)
        if wait:
            self.wait_worker_ready(proc)
        return proc

    def start_exec_floor(self, name: str, queue_list: str, processes: int = 2,
                         wait: bool = True) -> Proc:
        """The execution floor (``baseline/exec_floor.py``): ``processes`` plain loops popping
        ``queue_list``, storing results with Taskplane's result expiry."""
        expires = Settings.from_env(self.env()).result_expires
        args = [sys.executable, str(BASELINE / "exec_floor.py"), queue_list,
                f"--processes={processes}", f"--expires={int(expires)}"]
        proc = self.spawn(name, args, self.env(PYTHONPATH=str(BASELINE)), cwd=BASELINE)
        if wait:
            self.wait_worker_ready(proc)
        return proc

    @staticmethod
    def wait_worker_ready(proc: Proc, timeout: float = 90) -> None:
        proc.wait_log(" ready.", timeout)

    def start_exporter(self, name: str = "exporter", wait: bool = True) -> Proc:
        """``taskplane exporter``: the queue metrics the autoscaler reads through Prometheus."""
        port = free_port()
        proc = self.spawn(name, [_bin("taskplane"), "exporter"], self.env(EXPORTER_PORT=port),
                          port=port, probe="/metrics")
        return proc.wait_http() if wait else proc

    def start_prometheus(self, config: str) -> Proc:
        """The harness' Prometheus, its files in this run's folder; stopped with the stack."""
        prometheus = Prometheus(config, self.env(), workdir=self.workdir / "prometheus")
        self.procs.append(prometheus.proc)
        return prometheus.proc

    def flush(self) -> None:
        self.client().flushall()
