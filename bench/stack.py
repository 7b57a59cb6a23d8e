"""The processes a benchmark runs: a private Redis, Taskplane's API, workers and exporter,
the blog post's app and worker, the bare Flask app, and Prometheus.

Each process gets a log file under the run's scratch directory, its own session (so
stopping it stops its children), and a clean environment: nothing from the caller's
``REDIS_URL`` or ``PROMETHEUS_*`` leaks in, so no benchmark touches a Redis it did not
start. ``Stack`` stops everything it started when it exits, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal as signals
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis
from tests.support.services import RedisServer, free_port, wait_for

from taskplane.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "bench" / "baseline"
VENV_BIN = Path(sys.executable).parent
TENANT = "bench"

__all__ = ["ROOT", "TENANT", "Proc", "Stack", "free_port", "wait_for"]


def _bin(name: str) -> str:
    local = VENV_BIN / name
    return str(local) if local.exists() else name


class Proc:
    """A child process in its own session, its output in ``log_path``."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logdir: Path,
                 cwd: Path = ROOT) -> None:
        self.name = name
        self.args = args
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # closed in stop()
        self.proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.started = time.time()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        """Signal the main process only (what Kubernetes does to a container's PID 1)."""
        if self.alive():
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig: int = signals.SIGTERM, timeout: float = 30) -> int | None:
        """Signal the whole process group, wait, then SIGKILL what is left."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)
        if self.wait(timeout) is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signals.SIGKILL)
            self.proc.wait(10)
        # a parent that exited may leave children behind in its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signals.SIGKILL)
        self._log.close()
        return self.proc.returncode

    def children(self) -> list[int]:
        return children_of(self.proc.pid)


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name is in parentheses and may contain spaces
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def rss_kib(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of ``pid`` in KiB: now and the peak since it started."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    if "VmRSS" not in values:
        return None
    return values["VmRSS"], values.get("VmHWM", values["VmRSS"])


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except OSError:
        return False


class Server:
    """An HTTP server the stack started: its base URL and process."""

    def __init__(self, name: str, proc: Proc, port: int, probe: str = "/") -> None:
        self.name = name
        self.proc = proc
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.probe = probe

    def wait(self, timeout: float = 60) -> Server:
        """Until ``probe`` answers 200 (raises if the process exits first)."""
        def up() -> bool:
            if not self.proc.alive():
                raise RuntimeError(f"{self.proc.name} exited:\n{self.proc.log()[-3000:]}")
            return http_ok(self.base + self.probe)
        wait_for(up, timeout, f"{self.proc.name} answering {self.base + self.probe}", interval=0.1)
        return self

    def worker_pids(self) -> list[int]:
        return self.proc.children()

    def wait_workers(self, count: int, timeout: float = 30) -> Server:
        """Until gunicorn has forked ``count`` workers: the probe answers with the first."""
        wait_for(lambda: len(self.worker_pids()) >= count, timeout,
                 f"{self.proc.name}'s {count} gunicorn workers", interval=0.1)
        return self


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

    def spawn(self, name: str, args: list[str], env: dict[str, str], cwd: Path = ROOT) -> Proc:
        proc = Proc(name, args, env, self.workdir, cwd=cwd)
        self.procs.append(proc)
        return proc

    def forget(self, proc: Proc) -> None:
        if proc in self.procs:
            self.procs.remove(proc)

    def stop(self, *items: Proc | Server, timeout: float = 30, sig: int = signals.SIGTERM) -> None:
        """Stop these processes together: ``sig`` to all, then wait for each (SIGKILL after ``timeout``).

        Benchmarks SIGKILL workers whose work is over and accounted for: a worker's graceful
        stop takes ~1.7 s and measures nothing.
        """
        procs = [item.proc if isinstance(item, Server) else item for item in items]
        for proc in procs:
            if proc.alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
        deadline = time.monotonic() + timeout
        for proc in procs:
            proc.stop(sig, timeout=max(0.1, deadline - time.monotonic()))
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

    def start_api(self, name: str = "api", metrics: bool = True, wait: bool = True, **env: Any) -> Server:
        """Taskplane's API: ``taskplane api`` (gunicorn with Taskplane's configuration)."""
        port = free_port()
        e = self.env(API_PORT=port, METRICS_ENABLED=str(metrics).lower(),
                     PROMETHEUS_MULTIPROC_DIR=self.metrics_dir(name), **env)
        proc = self.spawn(name, [_bin("taskplane"), "api"], e)
        server = Server(name, proc, port, "/healthz")
        return server.wait() if wait else server

    def start_baseline_api(self, name: str, app: str, wait: bool = True, **env: Any) -> Server:
        """``bare:app``, ``floor:app`` or the post's ``app:app`` under Taskplane's gunicorn
        configuration."""
        port = free_port()
        e = self.env(API_PORT=port, BASELINE_APP=app, PYTHONPATH=f"{BASELINE}:{ROOT}",
                     PROMETHEUS_MULTIPROC_DIR=self.metrics_dir(name), **env)
        args = [sys.executable, "-m", "gunicorn", "--no-control-socket", "--chdir", str(BASELINE),
                "-c", "python:gunicorn_conf"]
        proc = self.spawn(name, args, e, cwd=BASELINE)
        probe = {"bare": "/", "floor": "/healthz"}.get(app.split(":")[0], "/task_status/probe")
        server = Server(name, proc, port, probe)
        return server.wait() if wait else server

    def start_worker(self, name: str = "w1", metrics: bool = True, concurrency: int = 2,
                     wait: bool = True, metrics_port: int | None = None, **env: Any) -> Proc:
        """A Taskplane worker pod: ``taskplane worker`` with ``concurrency`` pool processes.

        Its soft shutdown is 2 s unless ``env`` says otherwise: a benchmark stops workers
        that may still hold tasks nobody waits for (the autoscaler passes the chart's).
        """
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
        def ready() -> bool:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.log()[-3000:]}")
            return " ready." in proc.log()
        wait_for(ready, timeout, f"{proc.name} ready", interval=0.05)

    def start_exporter(self, name: str = "exporter", wait: bool = True) -> Server:
        """``taskplane exporter``: the queue metrics the autoscaler reads through Prometheus."""
        port = free_port()
        proc = self.spawn(name, [_bin("taskplane"), "exporter"], self.env(EXPORTER_PORT=port))
        server = Server(name, proc, port, "/metrics")
        return server.wait() if wait else server

    def start_prometheus(self, config: str, name: str = "prometheus") -> Server:
        binary = shutil.which("prometheus")
        if not binary:
            raise RuntimeError("prometheus is not on PATH: run scripts/monitoring-tools.sh")
        port = free_port()
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(config)
        args = [binary, f"--config.file={cfg}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
        proc = self.spawn(name, args, self.env())
        return Server(name, proc, port, "/-/ready").wait()

    def flush(self) -> None:
        self.client().flushall()
