"""Where the time goes: a CPU breakdown of one extra benchmark round, sampled by py-spy.

After the measured rounds of figures 1 and 2, one more round runs with
``py-spy record --format raw --subprocesses`` attached to the process tree that serves
it (the API's gunicorn master and its workers; the worker pod's main process and its
pool children). That round is not counted in any throughput figure: py-spy pauses
each process for every sample, which slows it down.

How the samples are read:

* **Which samples count: the thread holding the GIL (``--gil``), not idle (no ``--idle``).**
  Every Python instruction runs under its process's GIL, so the GIL holder's stack is
  where the process's user-space CPU goes. Without ``--gil`` py-spy counts every thread
  the OS shows as runnable (state R), and on this busy 2-core machine that is mostly
  threads just woken (a gthread pool thread handed a connection, the selector loop)
  and waiting for a core or for the GIL: tried, it put a fifth of the API's samples in
  ``concurrent.futures``' idle ``_worker`` loop and more than doubled the sampled time
  over the CPU time the kernel accounted. py-spy pauses the process for each sample
  (its default, blocking mode), so the GIL holder and its stack are read consistently.
* **Kernel time is its own row.** A thread releases the GIL around system calls
  (socket sends and receives, epoll, futex waits), so GIL samples cannot see kernel
  time. The processes' user time (utime) is divided among the components by their
  share of the samples, and their system time (stime) is the row "kernel (system
  calls)": the socket I/O to Redis and to the clients, polling and locks of every
  component together.
* **Which component a sample belongs to.** Its frames are read from the innermost out;
  the first frame whose file matches a pattern of the component table (``API`` or
  ``WORKER``, ordered: within one frame the first matching row wins) decides. Frames of
  the standard library's generic modules (socket, threading, re, uuid, ...) match
  nothing, so their time goes to the component that called them: a ``socket.sendall``
  under redis-py is redis-py's, under gunicorn gunicorn's. A sample no frame of which
  matches is "other".
* **µs per request or task.** The profiled processes' CPU time over the round is read
  from ``/proc/<pid>/stat`` (utime and stime of the root and of each descendant, plus
  what the root reaped); a component's µs are its share of that, divided by the
  requests or tasks of the round.
* **Redis.** ``INFO cpu`` and ``INFO commandstats`` before and after the round give the
  Redis server's CPU and its commands per request or task (the bench's own polling for
  results is included; it is a few commands per second).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal as signals
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from tests.support.procs import descendants, proc_stat

#: (component, file patterns): a frame belongs to the first row with a pattern that is a
#: substring of its file's path ('/'-separated; py-spy is run with --full-filenames).
Table = Sequence[tuple[str, Sequence[str]]]

#: The API's components, for ``POST /v1/tasks`` under gunicorn.
API: Table = (
    ("access log (logging)", ("/logging/", "/gunicorn/glogging.py")),
    ("Prometheus metrics", ("/prometheus_client/", "/taskplane/metrics.py", "/taskplane/api/observe.py")),
    ("JSON encoding/decoding", ("/json/", "/kombu/utils/json.py")),
    ("redis-py client", ("/redis/",)),
    ("auth", ("/taskplane/api/auth.py",)),
    ("body parsing + schema validation", ("/taskplane/api/body.py", "/taskplane/api/schemas.py",
                                          "/taskplane/tasks/", "/jsonschema/", "/jsonschema_rs/",
                                          "/referencing/", "/rpds/")),
    ("Celery message building (celery/kombu)", ("/celery/", "/kombu/", "/vine/", "/billiard/", "/amqp/")),
    ("Taskplane routes, submit and lifecycle", ("/taskplane/",)),
    ("Flask/werkzeug request handling", ("/flask/", "/werkzeug/", "/blinker/", "/itsdangerous/",
                                         "/markupsafe/", "/jinja2/")),
    ("gunicorn HTTP parsing/writing", ("/gunicorn/",)),
)

#: The worker pod's components, draining no-op tasks.
WORKER: Table = (
    ("logging", ("/logging/", "/celery/utils/log.py")),
    ("Prometheus metrics", ("/prometheus_client/", "/taskplane/metrics.py")),
    ("JSON encoding/decoding", ("/json/", "/kombu/utils/json.py")),
    ("redis-py client", ("/redis/",)),
    ("the task itself", ("/bench/tasks.py",)),
    ("result backend", ("/celery/backends/", "/taskplane/results.py")),
    ("prefork pool IPC (billiard)", ("/billiard/", "/celery/concurrency/")),
    ("kombu consumer/transport", ("/kombu/", "/taskplane/broker.py")),
    ("Taskplane worker signals/lifecycle", ("/taskplane/",)),
    ("Celery worker/tracer/request", ("/celery/", "/vine/", "/click/", "/amqp/")),
)

OTHER = "other"
KERNEL = "kernel (system calls: sockets, polling, locks)"
PROCESS_FRAME = re.compile(r'^process (\d+):')
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
#: How long py-spy gets, once it says it is sampling, to find the root's children.
ATTACH_SETTLE_S = 0.5


# -- the pure part: parsing and classifying samples ----------------------------------------

@dataclass(frozen=True)
class Sample:
    """One line of py-spy's raw output: a stack (outermost first) seen ``count`` times."""

    pids: tuple[int, ...]  # the process frames, root first: pids[-1] is the sampled process
    frames: tuple[str, ...]  # "function (file:line)", outermost first
    count: int


def parse_raw(text: str) -> list[Sample]:
    """py-spy's ``--format raw`` (collapsed stacks: ``frame;frame;... count``)."""
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        pids, frames = [], []
        for frame in stack.split(";"):
            match = PROCESS_FRAME.match(frame)
            if match and not frames:
                pids.append(int(match.group(1)))
            else:
                frames.append(frame)
        samples.append(Sample(tuple(pids), tuple(frames), int(count)))
    return samples


def frame_file(frame: str) -> str:
    """The file of a frame, '/'-separated and with a leading '/' so patterns anchor."""
    match = FRAME.match(frame)
    path = (match.group("file") if match else frame).replace("\\", "/")
    return path if path.startswith("/") else "/" + path


def frame_function(frame: str) -> str:
    match = FRAME.match(frame)
    return match.group("function") if match else frame


def classify(frames: Sequence[str], table: Table) -> tuple[str, str | None]:
    """(component, the frame that decided it): the innermost frame matching a row of
    ``table`` (rows tried in order for each frame); if none does, (``OTHER``, the
    innermost frame), or (``OTHER``, None) for an empty stack."""
    for frame in reversed(frames):
        path = frame_file(frame)
        for component, patterns in table:
            if any(p in path for p in patterns):
                return component, frame
    return OTHER, (frames[-1] if frames else None)


def short_frame(frame: str) -> str:
    """``function (package/module.py)``: the frame without its line and site prefix."""
    path = frame_file(frame)
    for marker in ("/site-packages/", "/dist-packages/", "/services/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/lib/python3":  # the standard library: drop "11/"
                path = path.split("/", 1)[1] if "/" in path else path
            break
    else:
        path = "/".join(path.rsplit("/", 2)[-2:])
    return f"{frame_function(frame)} ({path})"


def shares(samples: Iterable[Sample], table: Table, roles: dict[str, str] | None = None,
           top: int = 3) -> dict[str, Any]:
    """Samples per component (with share %), per process role, and each component's
    hottest deciding frames. ``roles``: names for {"root": ..., "children": ...}."""
    by_component: Counter[str] = Counter()
    by_role: Counter[str] = Counter()
    by_role_component: dict[str, Counter[str]] = {}
    frames: dict[str, Counter[str]] = {}
    total = 0
    for sample in samples:
        component, frame = classify(sample.frames, table)
        by_component[component] += sample.count
        total += sample.count
        if frame is not None:
            frames.setdefault(component, Counter())[short_frame(frame)] += sample.count
        if roles:
            # process frames nest from the root py-spy attached to: one frame is the root itself
            role = roles["root"] if len(sample.pids) <= 1 else roles["children"]
            by_role[role] += sample.count
            by_role_component.setdefault(component, Counter())[role] += sample.count

    def pct(n: int) -> float:
        return round(100.0 * n / total, 2) if total else 0.0

    rows = []
    for component, n in sorted(by_component.items(), key=lambda kv: (-kv[1], kv[0])):
        rows.append({
            "component": component, "samples": n, "share_pct": pct(n),
            "by_role_pct": {role: pct(k) for role, k in by_role_component.get(component, {}).items()},
            "top_frames": [{"frame": f, "share_pct": pct(k)}
                           for f, k in frames.get(component, Counter()).most_common(top)],
        })
    return {"samples": total, "components": rows,
            "roles": {role: {"samples": n, "share_pct": pct(n)} for role, n in by_role.most_common()}}


# -- CPU time from /proc ------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int, reaped: bool = False) -> tuple[float, float] | None:
    """(user, system) CPU seconds of ``pid`` (with ``reaped``: plus its reaped children's)."""
    fields = proc_stat(pid)
    if fields is None:
        return None
    # fields[11:15] are utime, stime, cutime, cstime (the stat file's 14th-17th)
    user, system = int(fields[11]), int(fields[12])
    if reaped:
        user, system = user + int(fields[13]), system + int(fields[14])
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def tree_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """(user, system) CPU seconds of ``pid`` (with what it reaped) and of each live descendant."""
    out = {}
    root = cpu_seconds(pid, reaped=True)
    if root is not None:
        out[pid] = root
    for child in descendants(pid, zombies=True):
        value = cpu_seconds(child)
        if value is not None:
            out[child] = value
    return out


# -- Redis --------------------------------------------------------------------------------

def redis_stats(client: redis.Redis) -> dict[str, Any]:
    cpu = client.info("cpu")
    commands = client.info("commandstats")
    return {
        "cpu_s": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        "commands": {name.removeprefix("cmdstat_"): {"calls": int(v["calls"]), "usec": int(v["usec"])}
                     for name, v in commands.items()},
    }


def redis_delta(before: dict[str, Any], after: dict[str, Any], units: int, top: int = 8) -> dict[str, Any]:
    """Redis CPU and commands per unit between two ``redis_stats``."""
    n = max(1, units)
    rows = []
    for name, now in after["commands"].items():
        was = before["commands"].get(name, {"calls": 0, "usec": 0})
        calls, usec = now["calls"] - was["calls"], now["usec"] - was["usec"]
        if calls > 0:
            rows.append({"command": name, "calls_per_unit": round(calls / n, 3),
                         "usec_per_unit": round(usec / n, 2)})
    rows.sort(key=lambda r: (-r["usec_per_unit"], r["command"]))
    cpu = after["cpu_s"] - before["cpu_s"]
    return {"cpu_s": round(cpu, 3), "cpu_us_per_unit": round(cpu * 1e6 / n, 1),
            "commands_per_unit": round(sum(r["calls_per_unit"] for r in rows), 2),
            "commands": rows[:top],
            "how": "INFO cpu (used_cpu_user + used_cpu_sys) and INFO commandstats deltas over the "
                   "round; commands called inside Lua scripts are counted as well as the script call"}


# -- py-spy -------------------------------------------------------------------------------

def py_spy_binary() -> str:
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if not found:
        raise RuntimeError("py-spy is not installed: `make install` installs it (the dev extra, "
                           "requirements-dev.lock); or pip install py-spy")
    return found


def py_spy_version() -> str:
    try:
        out = subprocess.run([py_spy_binary(), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return "missing"
    return out.stdout.strip().removeprefix("py-spy ") or "unknown"


@dataclass
class Window:
    """What was measured between ``Sampler.window``'s entry and exit."""

    started: float = 0.0
    ended: float = 0.0
    cpu_before: dict[int, tuple[float, float]] = field(default_factory=dict)
    cpu_after: dict[int, tuple[float, float]] = field(default_factory=dict)
    redis_before: dict[str, Any] | None = None
    redis_after: dict[str, Any] | None = None

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def cpu_by_pid(self) -> dict[int, tuple[float, float]]:
        """(user, system) CPU seconds each process used in the window (a process born in it:
        all of its own)."""
        out = {}
        for pid, (user, system) in self.cpu_after.items():
            was_user, was_system = self.cpu_before.get(pid, (0.0, 0.0))
            out[pid] = (user - was_user, system - was_system)
        return out


class Sampler:
    """``py-spy record`` on ``pid`` and its descendants while the ``with`` block runs.

    ``window()`` marks the part of the block that is measured (CPU, Redis); py-spy starts
    before it and stops after it, and samples only running threads, so the idle moments
    around the window add no samples.
    """

    def __init__(self, pid: int, *, rate: int, workdir: Path, name: str) -> None:
        self.pid = pid
        self.rate = rate
        self.out = workdir / f"py-spy-{name}.txt"
        self.log_path = workdir / f"py-spy-{name}.log"
        self.args = [py_spy_binary(), "record", "--pid", str(pid), "--subprocesses", "--format", "raw",
                     "--rate", str(rate), "--gil", "--full-filenames", "--output", str(self.out)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.windows: list[Window] = []

    @property
    def command(self) -> str:
        return "py-spy " + " ".join(a for a in self.args[1:] if not a.startswith("/")).replace(
            f" --pid {self.pid}", " --pid <pid>").replace(" --output", "")

    def __enter__(self) -> Sampler:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while "Sampling process" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"py-spy did not start sampling pid {self.pid} (it needs ptrace: "
                                   f"root or CAP_SYS_PTRACE):\n{self.log()[-2000:]}")
            time.sleep(0.05)
        time.sleep(ATTACH_SETTLE_S)  # --subprocesses finds the children by polling
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGINT (py-spy's Ctrl-C: it writes its output and exits), then wait."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signals.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    @contextlib.contextmanager
    def window(self, client: redis.Redis | None = None) -> Iterator[Window]:
        w = Window()
        w.redis_before = redis_stats(client) if client is not None else None
        w.cpu_before = tree_cpu(self.pid)
        w.started = time.time()
        yield w
        w.ended = time.time()
        w.cpu_after = tree_cpu(self.pid)
        w.redis_after = redis_stats(client) if client is not None else None
        self.windows.append(w)

    def samples(self) -> list[Sample]:
        if self.proc is None or self.proc.poll() is None:
            raise RuntimeError("py-spy is still running: read the samples after the with block")
        if not self.out.exists():
            raise RuntimeError(f"py-spy wrote no output ({self.proc.returncode}):\n{self.log()[-2000:]}")
        return parse_raw(self.out.read_text(errors="replace"))


def cpu_shares(counted: dict[str, Any], user_s: float, system_s: float, units: int) -> list[dict[str, Any]]:
    """Each component's share of the processes' CPU: its share of the GIL samples times the
    user time, plus the kernel row (system time); with µs per unit. Shares sum to 100."""
    total = user_s + system_s
    n = max(1, units)
    rows = []
    scale = user_s / total if total else 0.0  # a share of the samples → a share of the CPU
    for row in counted["components"]:
        cpu = row["share_pct"] / 100 * user_s
        rows.append({**row, "samples_pct": row["share_pct"],
                     "share_pct": round(row["share_pct"] * scale, 2),
                     "us_per_unit": round(cpu * 1e6 / n, 1),
                     "top_frames": [{"frame": f["frame"], "share_pct": round(f["share_pct"] * scale, 2)}
                                    for f in row["top_frames"]]})
    rows.append({"component": KERNEL, "samples": 0, "samples_pct": None,
                 "share_pct": round(100 * system_s / total, 2) if total else 0.0,
                 "us_per_unit": round(system_s * 1e6 / n, 1), "by_role_pct": {}, "top_frames": []})
    rows.sort(key=lambda r: (-r["share_pct"], r["component"]))
    return rows


def breakdown(sampler: Sampler, window: Window, *, units: int, unit: str, table: Table,
              roles: dict[str, str], what: str) -> dict[str, Any]:
    """The JSON of one profiled round: components, shares, µs per unit, processes, Redis."""
    counted = shares(sampler.samples(), table, roles=roles)
    by_pid = window.cpu_by_pid()
    user = sum(u for u, _ in by_pid.values())
    system = sum(s for _, s in by_pid.values())
    n = max(1, units)

    def role_cpu(pids: list[int]) -> dict[str, Any]:
        u = sum(by_pid[p][0] for p in pids if p in by_pid)
        s = sum(by_pid[p][1] for p in pids if p in by_pid)
        return {"pids": pids, "user_s": round(u, 3), "system_s": round(s, 3),
                "cores_busy": round((u + s) / window.seconds, 2) if window.seconds > 0 else None,
                "us_per_unit": round((u + s) * 1e6 / n, 1)}

    processes = {roles["root"]: role_cpu([sampler.pid]),
                 roles["children"]: role_cpu(sorted(p for p in by_pid if p != sampler.pid))}
    for role, info in processes.items():
        info["samples_pct"] = counted["roles"].get(role, {}).get("share_pct", 0.0)
    out = {
        "what": what,
        "profiler": sampler.command,
        "rate_hz": sampler.rate,
        "unit": unit,
        "units": units,
        "seconds": round(window.seconds, 2),
        "units_per_s_under_profiler": round(units / window.seconds, 1) if window.seconds > 0 else None,
        "samples": counted["samples"],
        "cpu_s": round(user + system, 3),
        "user_s": round(user, 3),
        "system_s": round(system, 3),
        "cpu_us_per_unit": round((user + system) * 1e6 / n, 1),
        "processes": processes,
        "components": cpu_shares(counted, user, system, units),
        "how": "share of CPU = share of the GIL-holding samples x the processes' user time, and the "
               "kernel row = their system time (/proc); us per unit = share x CPU time / units",
    }
    if window.redis_before is not None and window.redis_after is not None:
        out["redis"] = redis_delta(window.redis_before, window.redis_after, units)
    return out
