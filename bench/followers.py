"""Figure 7: followers. Thousands of ``?wait`` requests and event streams on one API pod of
two processes, against the targets of issue 27:

* every follower gets its task's final state within 1 s of the task ending;
* p99 submit latency while they are open at most 2x its idle value;
* the API's memory and Redis's client count per 1,000 followers, and the pod's ceiling.

The run: submit the followed tasks to a queue no worker consumes yet, open the event
streams and the ``?wait=30`` requests on raw sockets read by one selector loop (a follower
costs this process nothing but a socket), measure submit latency (paced, open loop) idle
and with everything open, then tell the worker to consume that queue (``add_consumer``)
and time each follower's final answer against its task's ``finished_at``.

Also measured, for the choice of worker class (README, ``api/gunicorn_conf.py``): the
submit rate of the API under ``gevent`` and under ``gthread``, interleaved.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from tests.support.procs import Proc, rss_kib

from taskplane.celery_app import create_celery
from taskplane.settings import Settings

from .figures import (
    NOOP_BODY,
    SUBMIT_PATH,
    Sizes,
    auth_headers,
    median,
    metric_total,
    percentile,
    rounded,
    scrape,
)
from .loadgen import Client, connection_split, paced, run_wrk
from .machine import load_average
from .stack import Stack

#: The targets the figure is judged by.
DELIVERY_TARGET_S = 1.0
SUBMIT_P99_RATIO_TARGET = 2.0
FINAL = (b'"state":"SUCCESS"', b'"state":"FAILURE"', b'"state":"REVOKED"')
QUEUE = "followed"
#: Bounds of the API pod under test: the defaults, but no tenant share below the crowd
#: (the benchmark follows as one tenant).
API_ENV = {"API_WORKERS": 2, "QUEUES": QUEUE, "MAX_FOLLOWERS_PER_TENANT": 3000}


@dataclass
class _Conn:
    kind: str  # "events" or "wait"
    task_id: str
    buffer: bytearray = field(default_factory=bytearray)
    done_at: float | None = None
    body: Any = None
    status: int = 0


class Crowd:
    """Many followers on raw non-blocking sockets, read by one selector thread."""

    def __init__(self, base: str, token: str) -> None:
        parts = urlsplit(base)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.token = token
        self.selector = selectors.DefaultSelector()
        self.conns: list[_Conn] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def open(self, kind: str, task_id: str, wait: float = 30) -> None:
        path = f"{SUBMIT_PATH}/{task_id}/events" if kind == "events" \
            else f"{SUBMIT_PATH}/{task_id}?wait={wait:g}"
        sock = socket.create_connection(self.address, timeout=10)
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: bench\r\n"
                      f"Authorization: Bearer {self.token}\r\n\r\n").encode())
        sock.setblocking(False)
        conn = _Conn(kind, task_id)
        with self._lock:
            self.conns.append(conn)
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                ready = self.selector.select(timeout=0) if self.selector.get_map() else []
            if not ready:
                time.sleep(0.005)
                continue
            now = time.time()
            for key, _ in ready:
                sock, conn = key.fileobj, key.data
                try:
                    chunk = sock.recv(65536)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                conn.buffer += chunk
                try:
                    complete = not chunk or self._complete(conn)
                except ValueError:  # not the answer expected: counted as missing
                    complete = True
                if complete:
                    conn.done_at = conn.done_at or now
                    with self._lock:
                        self.selector.unregister(sock)
                    sock.close()  # type: ignore[union-attr]

    @staticmethod
    def _complete(conn: _Conn) -> bool:
        data = bytes(conn.buffer)
        if conn.kind == "events":
            if not any(f in data for f in FINAL):
                return False
            for line in reversed(data.split(b"\n")[:-1]):  # whole lines only
                if line.startswith(b"data: ") and any(f in line for f in FINAL):
                    conn.body = json.loads(line[len(b"data: "):])
                    conn.status = 200
                    return True
            return False
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            return False
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        if len(rest) < length:
            return False
        conn.status = int(head.split(b" ", 2)[1])
        conn.body = json.loads(rest[:length])
        return True

    def finished(self) -> int:
        return sum(1 for c in self.conns if c.done_at is not None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()


def _finished_at(body: Any) -> float | None:
    stamp = body.get("finished_at") if isinstance(body, dict) else None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None


def _submit_latency(api: Proc, token: str, n: int, rate: float) -> dict[str, Any]:
    """Paced submissions (open loop): p50/p99 of the time to the 202."""
    run = paced(n, rate, lambda client, i: (*client.request("POST", SUBMIT_PATH, NOOP_BODY), None),
                lambda: Client(api.base, token), threads=4)
    ms = [(a - s) * 1000 for a, s, st in zip(run.answered, run.sent, run.status, strict=True)
          if st == 202]
    return {"samples": len(ms), "refused": n - len(ms), "p50_ms": rounded(percentile(ms, 50), 2),
            "p99_ms": rounded(percentile(ms, 99), 2)}


def _api_rss_kib(api: Proc) -> int:
    pids = [api.pid, *api.children()]
    return sum((rss_kib(pid) or (0, 0))[0] for pid in pids)


def _all_open(api: Proc, crowd: Crowd, count: int, timeout: float = 120) -> None:
    """Until the API holds ``count`` followers (none of the crowd's answered early)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            held = metric_total(scrape(api.base + "/metrics"), "taskplane_api_followers_open")
        except OSError:  # the scrape queued behind thousands of new connections
            held = -1
        if held >= count:
            return
        if time.monotonic() > deadline or crowd.finished():
            raise RuntimeError(f"{held:g} of {count:,} followers open; "
                               f"{crowd.finished()} answered early")
        time.sleep(0.5)


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used (``/proc/<pid>/stat``)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def _worker_classes(stack: Stack, sizes: Sizes, rep: logging.Logger) -> dict[str, Any]:
    """Submit requests/s under each worker class (interleaved rounds), and the API's CPU per
    request: on a busy machine requests/s also measures how much CPU the scheduler grants
    (a gthread process has a thread per request to schedule, a gevent one a single
    thread), while CPU per request is what a request costs either way."""
    servers = {cls: stack.start_api(f"api-{cls}", API_WORKER_CLASS=cls) for cls in
               ("gevent", "gthread")}
    body = json.dumps(NOOP_BODY)
    runs: dict[str, list[float]] = {cls: [] for cls in servers}
    cpu: dict[str, list[float]] = {cls: [] for cls in servers}
    for _ in range(max(1, sizes.enqueue_rounds // 2)):
        for cls, server in servers.items():
            server.wait_children(2)
            pids = server.children()
            before = _cpu_seconds(pids)
            result = run_wrk(server.base + SUBMIT_PATH, seconds=sizes.enqueue_seconds,
                             connections=sizes.connections, method="POST", body=body,
                             headers=auth_headers(stack), workdir=stack.workdir,
                             spread=partial(connection_split, server.port, pids))
            runs[cls].append(round(result.requests / result.seconds, 1))
            cpu[cls].append(round((_cpu_seconds(pids) - before) / max(1, result.requests) * 1e6))
    stack.stop(*servers.values())
    rep.info("worker classes: " + ", ".join(f"{c} {median(r):.0f}/s, {median(cpu[c]):.0f} us "
                                           "CPU/request" for c, r in runs.items()))
    return {cls: {"requests_per_s": median(r), "rounds": r,
                  "cpu_us_per_request": median(cpu[cls]), "cpu_rounds": cpu[cls]}
            for cls, r in runs.items()}


def followers(stack: Stack, sizes: Sizes, rep: logging.Logger) -> dict[str, Any]:
    streams, waits = sizes.follower_streams, sizes.follower_waits
    settings = Settings.from_env(stack.env(**API_ENV))
    stack.flush()
    api = stack.start_api("api-followers", **API_ENV)
    api.wait_children(settings.api_workers)
    # The worker consumes the followed queue only when told to (``add_consumer``), once
    # every follower is open: the tasks then end together, as fast as it drains them.
    worker = stack.start_worker("followers", concurrency=2, WORKER_QUEUES="default", QUEUES=QUEUE)
    token = stack.token
    client = stack.client()
    idle_rate, samples = sizes.follower_submit_rate, sizes.follower_submit_samples
    rep.info(f"figure 7: submit latency idle ({samples} at {idle_rate:g}/s)")
    idle = _submit_latency(api, token, samples, idle_rate)
    base_rss, base_clients = _api_rss_kib(api), len(client.client_list())

    total = streams + waits
    rep.info(f"figure 7: {total:,} tasks waiting in {QUEUE!r}; opening {streams:,} event "
            f"streams, then {waits:,} ?wait=30")
    sub = Client(api.base, token)
    ids = []
    for _ in range(total):
        status, body = sub.request("POST", SUBMIT_PATH, {**NOOP_BODY, "queue": QUEUE})
        if status != 202:
            raise RuntimeError(f"submit failed: {status} {body}")
        ids.append(body["id"])
    sub.close()
    # the queue is first in, first out: the waits' tasks first, so none outlives its 30 s
    wait_ids, stream_ids = ids[:waits], ids[waits:]
    crowd = Crowd(api.base, token)
    try:
        opened = time.time()
        for task_id in stream_ids:
            crowd.open("events", task_id)
        _all_open(api, crowd, streams)
        for task_id in wait_ids:
            crowd.open("wait", task_id)
        _all_open(api, crowd, total)
        open_s = time.time() - opened
        loaded_rss, loaded_clients = _api_rss_kib(api), len(client.client_list())
        pubsub_clients = len(client.client_list(_type="pubsub"))
        rep.info(f"figure 7: {total:,} open in {open_s:.1f}s; submit latency under them")
        loaded = _submit_latency(api, token, samples, idle_rate)
        control = create_celery(Settings.from_env(stack.env(QUEUES=QUEUE)))
        if not control.control.add_consumer(QUEUE, reply=True, timeout=10):
            raise RuntimeError(f"the worker did not start consuming {QUEUE!r}")
        end, shown = time.monotonic() + 90, time.monotonic()
        while crowd.finished() < total and time.monotonic() < end:
            if time.monotonic() - shown >= 5:
                rep.info(f"figure 7: {crowd.finished():,} of {total:,} followers answered")
                shown = time.monotonic()
            time.sleep(0.25)
    finally:
        crowd.close()
        stack.stop(worker, api)

    delays: dict[str, list[float]] = {"events": [], "wait": []}
    missing = {"events": 0, "wait": 0}
    for conn in crowd.conns:
        ended = _finished_at(conn.body)
        if conn.done_at is None or ended is None or conn.status != 200:
            missing[conn.kind] += 1
            continue
        delays[conn.kind].append(conn.done_at - ended)
    every = delays["events"] + delays["wait"]
    per_k = 1000 / total
    ratio = loaded["p99_ms"] / idle["p99_ms"] if idle["p99_ms"] else None
    result = {
        "streams": streams, "waits": waits, "api_workers": settings.api_workers,
        "open_seconds": rounded(open_s, 2),
        "delivery": {kind: {"answered": len(v), "missing": missing[kind],
                            "p50_s": rounded(percentile(v, 50), 3),
                            "p99_s": rounded(percentile(v, 99), 3),
                            "max_s": rounded(max(v), 3) if v else None}
                     for kind, v in delays.items()},
        "submit_idle": idle, "submit_loaded": loaded,
        "submit_p99_ratio": rounded(ratio, 2) if ratio else None,
        "api_rss_mib": {"idle": rounded(base_rss / 1024, 1), "loaded": rounded(loaded_rss / 1024, 1),
                        "per_1000_followers": rounded((loaded_rss - base_rss) / 1024 * per_k, 1)},
        "redis_clients": {"idle": base_clients, "loaded": loaded_clients,
                          "per_1000_followers": rounded((loaded_clients - base_clients) * per_k, 2),
                          "pubsub": pubsub_clients},
        "ceiling": {"max_followers_per_process": settings.max_followers,
                    "pod": settings.max_followers * settings.api_workers},
    }
    late = [d for d in every if d > DELIVERY_TARGET_S]
    result["met"] = {
        "delivery_within_1s": not late and not any(missing.values()),
        "submit_p99_within_2x": ratio is not None and ratio <= SUBMIT_P99_RATIO_TARGET,
    }
    rep.info(f"figure 7: answered {len(every):,}/{total:,}, p99 {result['delivery']}, submit p99 "
            f"{idle['p99_ms']} -> {loaded['p99_ms']} ms")
    result["worker_classes"] = _worker_classes(stack, sizes, rep)
    result["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["load_average"] = load_average()
    return result
