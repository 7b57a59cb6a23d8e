"""The one process harness: integration tests, chaos, deploy tests and bench start processes here.

A ``Proc`` runs in its own session (so stopping it stops everything it forked), logs to
a file, and is waited for by condition with a deadline that fails fast when the process
exits first, with its log's tail in the error. Ports and binaries come from
``taskplane.localproc``, which the shipped dev stack shares: one ``free_port``, one
``find_binary``, one Prometheus command line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal as signals
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from taskplane.localproc import (
    LOOPBACK,
    MissingBinary,
    find_binary,
    free_port,
    port_free,
    prometheus_command,
    prometheus_config,
    redis_command,
)

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["LOOPBACK", "ROOT", "MissingBinary", "Proc", "ProcessExited", "Prometheus", "children",
           "descendants", "find_binary", "free_port", "group_alive", "http_ok", "port_free",
           "proc_stat", "process_groups", "prometheus_config", "redis_command", "rss_kib",
           "stop_all", "wait_for"]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds.

    An exception from ``condition`` counts as "not yet", except ``ProcessExited``, which
    ends the wait at once: nothing comes up after its process died.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except ProcessExited:
            raise
        except Exception as exc:
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}"
                       + (f" (last error: {last_exc!r})" if last_exc else ""))


class ProcessExited(RuntimeError):
    """The process exited while something waited for it to come up."""


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """Whether ``url`` answers 200 now (no exception: "no" is an answer while polling)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:
        return False


# --- /proc ----------------------------------------------------------------------------------


def proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` from the third (state) on, or None when it is gone:
    ``[0]`` state, ``[1]`` ppid, ``[2]`` pgid, ``[11:15]`` utime, stime, cutime, cstime."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces
    return stat[stat.rindex(")") + 2:].split()


def _table(zombies: bool = False) -> dict[int, tuple[str, int, int]]:
    """(state, ppid, pgid) of every process, zombies only when asked."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := proc_stat(int(entry))):
            if zombies or fields[0] not in ("Z", "X"):
                out[int(entry)] = (fields[0], int(fields[1]), int(fields[2]))
    return out


def children(pid: int) -> list[int]:
    """Live (non-zombie) direct children of ``pid``."""
    return sorted(p for p, st in _table().items() if st[1] == pid)


def descendants(pid: int, zombies: bool = False) -> list[int]:
    """Every process below ``pid`` (a supervisor's children and theirs); live ones only,
    unless ``zombies`` (exited, not yet reaped: their CPU times still count)."""
    table = _table(zombies)
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, st in table.items() if st[1] == parent]
        found += kids
        frontier += kids
    return sorted(found)


def process_groups(pids: list[int]) -> set[int]:
    """The process groups of the live ``pids``."""
    table = _table()
    return {table[p][2] for p in pids if p in table}


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still there."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a group of zombies answers too; they are stopped, only not yet reaped
    return any(st[2] == pgid for st in _table().values())


def rss_kib(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of ``pid`` in KiB: now and the peak since it started; None when gone."""
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


# --- a process --------------------------------------------------------------------------------


class Proc:
    """A child process in its own session, its output in ``log_path``.

    ``port`` and ``probe`` describe an HTTP server (``base``, ``wait_http``). ``log_dir``
    keeps the log beside a run's other files (bench); without it the log is a temp file.
    """

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], *,
                 log_dir: Path | None = None, cwd: Path = ROOT, port: int | None = None,
                 probe: str = "/") -> None:
        self.name = name
        self.args = args
        if log_dir is not None:
            self.log_path = Path(log_dir) / f"{name}.log"
        else:
            fd, path = tempfile.mkstemp(prefix=f"tp-{name}-", suffix=".log")
            os.close(fd)
            self.log_path = Path(path)
        self._log = open(self.log_path, "ab")  # closed in stop()
        self.port = port
        self.probe = probe
        self.started = time.time()
        self.proc = subprocess.Popen(args, env=dict(env), cwd=cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @property
    def base(self) -> str:
        assert self.port is not None, f"{self.name} has no port"
        return f"http://{LOOPBACK}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: int) -> None:
        """Signal the main process only (what Kubernetes does to a container's PID 1)."""
        if self.alive():
            os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or None if it still runs after ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def children(self) -> list[int]:
        return children(self.proc.pid)

    # -- readiness: every wait fails fast when the process exits ---------------------------
    def wait_until(self, ready: Callable[[], Any], timeout: float, what: str,
                   interval: float = 0.05) -> Any:
        """Poll ``ready`` until truthy; raise ``ProcessExited`` (with the log) as soon as
        the process is gone, ``TimeoutError`` after ``timeout``."""
        def check() -> Any:
            if not self.alive():
                raise ProcessExited(f"{self.name} exited ({self.proc.returncode}) before "
                                    f"{what}:\n{self.log()[-3000:]}")
            return ready()
        return wait_for(check, timeout, f"{self.name}: {what}", interval)

    def wait_log(self, text: str, timeout: float = 60) -> Proc:
        self.wait_until(lambda: text in self.log(), timeout, f"{text!r} in its log")
        return self

    def wait_http(self, path: str | None = None, timeout: float = 60) -> Proc:
        url = self.base + (self.probe if path is None else path)
        self.wait_until(lambda: http_ok(url), timeout, f"200 from {url}", interval=0.1)
        return self

    def wait_children(self, count: int, timeout: float = 30) -> Proc:
        """Until it has forked ``count`` children (gunicorn workers, a Celery pool)."""
        self.wait_until(lambda: len(self.children()) >= count, timeout, f"{count} children",
                        interval=0.1)
        return self

    def started_or_stopped(self, ready: Callable[[], Any], timeout: float, what: str) -> Proc:
        """``wait_until``, stopping the process when it never gets there: a failed start
        leaves nothing behind."""
        try:
            self.wait_until(ready, timeout, what)
        except BaseException:
            self.stop()
            raise
        return self

    # -- stopping ---------------------------------------------------------------------------
    def stop(self, sig: int = signals.SIGTERM, timeout: float = 30) -> int | None:
        """Signal the whole process group, wait, then SIGKILL what is left of it."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            if self.wait_exit(timeout) is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signals.SIGKILL)
                self.proc.wait(10)
        # a parent that exited may leave children behind in its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signals.SIGKILL)
        self._log.close()
        return self.proc.returncode


def stop_all(procs: list[Proc], sig: int = signals.SIGTERM, timeout: float = 30) -> None:
    """Signal every process group at once, then wait for each within one shared deadline:
    N processes stop in the time of the slowest, not the sum."""
    for proc in procs:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.stop(sig, timeout=max(0.1, deadline - time.monotonic()))


# --- Prometheus -------------------------------------------------------------------------------


class Prometheus:
    """A private Prometheus on a free port, its config and data in a temp folder."""

    def __init__(self, config: str, env: Mapping[str, str] | None = None,
                 workdir: Path | None = None, timeout: float = 30) -> None:
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="tp-prom-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg = self.dir / "prometheus.yml"
        cfg.write_text(config)
        port = free_port()
        args = prometheus_command(cfg, self.dir / "tsdb", port, "--log.level=warn")
        self.proc = Proc("prometheus", args, env if env is not None else os.environ,
                         log_dir=self.dir, port=port, probe="/-/ready")
        self.proc.started_or_stopped(lambda: http_ok(self.proc.base + "/-/ready"), timeout,
                                     "/-/ready")
        self.port, self.url = port, self.proc.base

    def query(self, expr: str) -> list[dict[str, Any]]:
        import requests

        body = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10).json()
        assert body["status"] == "success", f"{expr}: {body}"
        return list(body["data"]["result"])

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def close(self) -> None:
        self.proc.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
