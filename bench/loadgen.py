"""Load generators: ``wrk`` for closed-loop HTTP load, ``redis-benchmark`` for Redis itself,
and a small open-loop client for paced submissions.

``wrk`` runs a generated Lua script that sets the method, body and headers and, when
the run ends, prints one line ``BENCH_JSON {...}`` with the request count, errors
(non-2xx statuses included) and latency percentiles, so nothing parses wrk's
human-readable report.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

WRK_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
"""


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is not on PATH: run bench/install-tools.sh (Debian's wrk)")
    return found


def wrk_version() -> str:
    try:
        out = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal here


def wrk_script(method: str, body: str | None, headers: dict[str, str]) -> str:
    lines = [f"wrk.method = {_lua_string(method)}"]
    if body is not None:
        lines.append(f"wrk.body = {_lua_string(body)}")
    for name, value in headers.items():
        lines.append(f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}")
    return "\n".join(lines) + "\n" + WRK_DONE


@dataclass
class WrkResult:
    requests: int
    seconds: float
    errors: dict[str, int]
    latency_ms: dict[str, float]
    split: list[int] | None = None  # wrk's connections held by each server process
    attempts: int = 1  # wrk starts it took to get an even split

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "seconds": round(self.seconds, 3),
                "requests_per_s": round(self.rps, 1), "errors": self.errors,
                "latency_ms": self.latency_ms, "split": self.split, "attempts": self.attempts}


def connection_split(port: int, pids: Sequence[int]) -> list[int]:
    """How many established connections to ``port`` each of ``pids`` holds (``ss -tnp``)."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, timeout=10, check=True)
    counts = dict.fromkeys(pids, 0)
    for line in out.stdout.splitlines():
        for pid in {int(p) for p in re.findall(r"pid=(\d+)", line)}:
            if pid in counts:
                counts[pid] += 1
    return [counts[pid] for pid in pids]


def even(split: Sequence[int], connections: int) -> bool:
    """Every process holds at least half its fair share of the connections."""
    return bool(split) and min(split) * 2 * len(split) >= connections


def _settled_split(spread: Callable[[], list[int]], connections: int,
                   proc: subprocess.Popen[str], within: float = 2.0) -> list[int]:
    """The split once wrk has opened all its connections (or after ``within`` seconds)."""
    deadline = time.monotonic() + within
    split = spread()
    while sum(split) < connections and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
        split = spread()
    return split


#: wrk starts allowed per run before an uneven split is accepted (and recorded as such).
SPLIT_ATTEMPTS = 15
#: Pause before a restart, so the server has closed the abandoned connections.
SPLIT_PAUSE_S = 0.3


def run_wrk(url: str, *, seconds: float, connections: int, threads: int = 1,
            method: str = "GET", body: str | None = None,
            headers: dict[str, str] | None = None, workdir: Path,
            timeout_s: float = 10, spread: Callable[[], list[int]] | None = None) -> WrkResult:
    """One closed-loop wrk run against ``url``; raises if wrk fails or prints no result.

    ``spread`` (the connections each server process holds, e.g. ``connection_split``):
    gunicorn leaves a new connection to whichever worker wakes first, and wrk opens all
    of its keep-alive connections at once, so one worker often ends up with nearly all
    of them and the server runs on one core, halving the figure at random. A run whose
    connections are not spread evenly (``even``) is stopped at once and started again,
    so every side is measured as a load balancer would spread clients over its workers.
    """
    script = workdir / f"wrk-{abs(hash((url, method, body))) % 10**8}.lua"
    script.write_text(wrk_script(method, body, headers or {}))
    duration = max(1, round(seconds))
    args = [wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{duration}s",
            f"--timeout={timeout_s:g}s", "-s", str(script), url]
    split = None
    for attempt in range(1, SPLIT_ATTEMPTS + 1):
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if spread is not None:
            split = _settled_split(spread, connections, proc)
            if not even(split, connections) and attempt < SPLIT_ATTEMPTS:
                proc.kill()
                proc.communicate()
                time.sleep(SPLIT_PAUSE_S)
                continue
        try:
            stdout, stderr = proc.communicate(timeout=duration + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        break
    line = next((ln for ln in stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {stdout[-2000:]} {stderr[-2000:]}")
    data = json.loads(line[len("BENCH_JSON "):])
    lat = {k: round(v / 1000.0, 3) for k, v in data["latency_us"].items()}
    return WrkResult(requests=int(data["requests"]), seconds=data["duration_us"] / 1e6,
                     errors={k: int(v) for k, v in data["errors"].items()}, latency_ms=lat,
                     split=split, attempts=attempt)


# -- redis-benchmark ----------------------------------------------------------------------

def redis_benchmark(port: int, *, requests: int, clients: int = 50,
                    tests: str = "lpush,rpop") -> dict[str, dict[str, float]]:
    """``redis-benchmark -t lpush,rpop --csv`` on the private Redis: ops/s and latency (ms)."""
    binary = shutil.which("redis-benchmark")
    if not binary:
        raise RuntimeError("redis-benchmark is not on PATH (Debian's redis-tools)")
    args = [binary, "-h", "127.0.0.1", "-p", str(port), "-n", str(requests), "-c", str(clients),
            "-t", tests, "--csv"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"redis-benchmark failed: {out.stderr[-2000:]}")
    rows = list(csv.reader(io.StringIO(out.stdout)))
    header, body = rows[0], rows[1:]
    results: dict[str, dict[str, float]] = {}
    for row in body:
        record = dict(zip(header, row, strict=False))
        name = record.pop("test").split()[0].lower()
        results[name] = {"ops_per_s": float(record["rps"]),
                         **{k.replace("_latency_ms", "_ms"): float(v) for k, v in record.items()
                            if k.endswith("_latency_ms")}}
    return results


def redis_benchmark_version() -> str:
    binary = shutil.which("redis-benchmark")
    if not binary:
        return "missing"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return out.stdout.strip() or out.stderr.strip()


# -- a small HTTP client for paced (open-loop) submissions -------------------------------

class Client:
    """One keep-alive connection (not thread-safe: one per thread)."""

    def __init__(self, base: str, token: str | None = None, timeout: float = 30) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        headers = {**self.headers, **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
                continue
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            try:
                return response.status, json.loads(raw) if raw else None
            except ValueError:
                return response.status, raw.decode(errors="replace")
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@dataclass
class Paced:
    """What a paced run did: per submission its intended and actual send times and outcome."""

    intended: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)
    extra: list[Any] = field(default_factory=list)


def paced(n: int, rate: float, send: Callable[[Client, int], tuple[int, Any, Any]],
          make_client: Callable[[], Client], threads: int = 8,
          progress: Callable[[int], None] | None = None, duration: float | None = None) -> Paced:
    """Call ``send(client, i)`` for i in 0..n-1 at ``rate`` per second (open loop).

    Submission i is due at ``start + i / rate``; a free thread takes the next one and
    sleeps until it is due. ``send`` returns (status, body, extra); the time just before
    it runs and the time it returned are recorded. With ``duration``, nothing is sent
    after that many seconds (the rest keep status 0 and are dropped from the result).
    """
    result = Paced()
    result.intended = [0.0] * n
    result.sent = [0.0] * n
    result.answered = [0.0] * n
    result.status = [0] * n
    result.bodies = [None] * n
    result.extra = [None] * n
    lock = threading.Lock()
    counter = iter(range(n))
    done = [0]
    start = time.time() + 0.2

    def run() -> None:
        client = make_client()
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None or (duration is not None and time.time() > start + duration):
                    return
                due = start + i / rate
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
                result.intended[i] = due
                result.sent[i] = time.time()
                try:
                    status, body, extra = send(client, i)
                except Exception as exc:  # a failed submission is a result, not a crash
                    status, body, extra = 0, repr(exc), None
                result.answered[i] = time.time()
                result.status[i], result.bodies[i], result.extra[i] = status, body, extra
                with lock:
                    done[0] += 1
                    if progress:
                        progress(done[0])
        finally:
            client.close()

    workers = [threading.Thread(target=run, daemon=True) for _ in range(max(1, min(threads, n)))]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if duration is not None:  # keep only what was sent
        sent = [i for i in range(n) if result.sent[i]]
        for name in ("intended", "sent", "answered", "status", "bodies", "extra"):
            values = getattr(result, name)
            setattr(result, name, [values[i] for i in sent])
    return result
