"""What every chaos test needs: a stack of real processes, a ledger, submitters.

Nothing here waits for a fixed time: every wait is ``wait_for`` with a deadline. The only
sleeps are pacing (a submitter spacing its requests, backing off after a 503), never a
substitute for a condition.
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

from tests.support.procs import children, rss_kib, stop_all
from tests.support.services import TEST_TOKENS, Api, Process, RedisServer, start_worker, wait_for

__all__ = ["SCALE", "Attempt", "Ledger", "Stack", "Submitter", "children", "percentile",
           "results_path", "rss_mb", "work"]


#: Sizes grow with CHAOS_SCALE (1: small, for CI; `make chaos` runs 10).
SCALE = max(1, int(os.environ.get("CHAOS_SCALE", "1") or "1"))

#: Lease timing of the suite: short, so a dead worker's tasks come back within seconds.
VISIBILITY_TIMEOUT, LEASE_INTERVAL, RESTORE_INTERVAL = 8, 2, 1

#: Environment of every API and worker in the suite. Only the chaos tasks are loaded, and
#: every hard time limit (6 s at most) stays below VISIBILITY_TIMEOUT, as the settings ask.
CHAOS_ENV = {
    "TASK_MODULES": "tests.chaos.tasks",
    "BUILTIN_TASKS": "false",
    "DEFAULT_TIME_LIMIT": "6",
    "DEFAULT_SOFT_TIME_LIMIT": "5",
    "VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
    "LEASE_INTERVAL": str(LEASE_INTERVAL),
    "UNACKED_RESTORE_INTERVAL": str(RESTORE_INTERVAL),
    "WORKER_METRICS_PORT": "0",  # several workers per test, and other suites on this machine
    "RATE_LIMIT": "0",
}

ACME = {"Authorization": f"Bearer {TEST_TOKENS['acme']}"}


# --- the stack ------------------------------------------------------------------------------


class Ledger:
    """Reads what the chaos tasks counted in the ledger Redis."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.client = server.client()

    def _hash(self, name: str) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.client.hgetall(name).items()}

    def started(self) -> dict[str, int]:
        return self._hash("chaos:started")

    def done(self) -> dict[str, int]:
        return self._hash("chaos:done")

    def last_start(self) -> dict[str, float]:
        return {k.decode(): float(v) for k, v in self.client.hgetall("chaos:last_start").items()}

    def running_key(self, pid: int) -> str | None:
        value = self.client.get(f"chaos:running:{pid}")
        return value.decode() if value else None

    def wait_done(self, keys: Iterable[str], timeout: float, what: str) -> dict[str, int]:
        wanted = set(keys)

        def all_done() -> dict[str, int] | None:
            done = self.done()
            return done if all(done.get(k, 0) >= 1 for k in wanted) else None

        try:
            return wait_for(all_done, timeout, what, interval=0.2)
        except TimeoutError as exc:
            done = self.done()
            missing = sorted(k for k in wanted if done.get(k, 0) < 1)
            raise TimeoutError(f"{exc}: {len(missing)} of {len(wanted)} never finished, "
                               f"e.g. {missing[:10]}") from None


class Stack:
    """A broker Redis, a ledger Redis, an API and workers; ``close`` stops all of it."""

    def __init__(self, **redis_options: Any) -> None:
        self.redis = RedisServer(**redis_options).start()
        self.ledger_server = RedisServer().start()
        self.ledger = Ledger(self.ledger_server)
        self.api: Api | None = None
        self.workers: list[Process] = []
        self.env = {**CHAOS_ENV, "CHAOS_LEDGER_URL": self.ledger_server.url}

    def start_api(self, workers: int = 1, **env: str) -> Api:
        self.api = Api(self.redis.url, workers=workers, **{**self.env, **env})
        return self.api

    def start_worker(self, name: str, concurrency: int = 2, **env: str) -> Process:
        proc = start_worker(self.redis.url, name=name, concurrency=concurrency,
                            **{**self.env, **env})
        self.workers.append(proc)
        return proc

    def broker(self) -> redis.Redis:
        return self.redis.client()

    def unacked(self) -> int:
        return int(self.broker().hlen("unacked"))

    def unacked_task_ids(self) -> list[str]:
        ids = []
        for raw in self.broker().hvals("unacked"):
            message = json.loads(raw)[0]
            ids.append(message["headers"]["id"])
        return ids

    def queue(self, name: str = "default") -> dict[str, Any]:
        assert self.api is not None
        r = self.api.get("/v1/queues")
        assert r.status_code == 200, r.text
        return next(q for q in r.json()["items"] if q["name"] == name)

    def result_states(self, task_ids: list[str]) -> dict[str, str]:
        """Celery's stored state of each task, read from the result backend in batches."""
        out: dict[str, str] = {}
        client = self.broker()
        for i in range(0, len(task_ids), 500):
            batch = task_ids[i:i + 500]
            for task_id, raw in zip(batch, client.mget([f"celery-task-meta-{t}" for t in batch]),
                                    strict=True):
                out[task_id] = json.loads(raw)["status"] if raw else "PENDING"
        return out

    def api_states(self, task_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Each task as the API shows it (status code and body), one GET each."""
        assert self.api is not None
        out = {}
        for task_id in task_ids:
            r = self.api.get(f"/v1/tasks/{task_id}")
            out[task_id] = {"http": r.status_code, **(r.json() if r.content else {})}
        return out

    def logs(self) -> str:
        """For a failure report: each process's warnings and errors, then its last lines."""
        parts = []
        for proc in [*(self.workers), *([self.api.process] if self.api else [])]:
            text = proc.log()
            flagged = [ln for ln in text.splitlines()
                       if ("WARNING/" in ln or "ERROR/" in ln or "CRITICAL/" in ln
                           or "dead-lettered" in ln or "[ERROR]" in ln)]
            parts.append(f"----- {proc.name} (pid {proc.pid}, full log {proc.log_path}) -----\n"
                         + "\n".join(flagged[:40])
                         + f"\n..... last lines .....\n{text[-2500:]}")
        return "\n".join(parts)

    def close(self) -> None:
        stop_all(self.workers, signal.SIGKILL, timeout=10)
        if self.api is not None:
            self.api.close()
        self.redis.close()
        self.ledger_server.close()


# --- submitting -----------------------------------------------------------------------------


@dataclass
class Attempt:
    key: str
    status: int  # 0: no HTTP answer (connection refused or reset)
    latency: float
    at: float  # time.time() when the answer came
    task_id: str | None = None
    retry_after: str | None = None
    error_code: str | None = None


@dataclass
class Submitter:
    """Threads POSTing tasks until ``target`` are accepted (202) or ``max_attempts`` were made.

    ``body(key)`` builds each request; every key is tried once. ``pace`` spaces each
    thread's requests (seconds), ``backoff`` follows a refused one (503, no answer).
    """

    base_url: str
    body: Callable[[str], dict[str, Any]]
    target: int
    prefix: str
    threads: int = 2
    pace: float = 0.0
    backoff: float = 0.05
    max_attempts: int | None = None
    attempts: list[Attempt] = field(default_factory=list)
    accepted: dict[str, Attempt] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0
        self._inflight = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        if self.max_attempts is None:
            self.max_attempts = self.target * 20

    def _take(self) -> str | None:
        with self._lock:
            # Requests in flight count: a burst of threads must not overshoot the target.
            if (self._stop.is_set() or len(self.accepted) + self._inflight >= self.target
                    or self._next >= (self.max_attempts or 0)):
                return None
            self._next += 1
            self._inflight += 1
            return f"{self.prefix}-{self._next:06d}"

    def _run(self) -> None:
        session = requests.Session()
        try:
            while (key := self._take()) is not None:
                started = time.monotonic()
                try:
                    r = session.post(self.base_url + "/v1/tasks", json=self.body(key),
                                     headers=ACME, timeout=30)
                    attempt = Attempt(key, r.status_code, time.monotonic() - started, time.time(),
                                      retry_after=r.headers.get("Retry-After"))
                    if r.status_code == 202:
                        attempt.task_id = r.json()["id"]
                    elif r.headers.get("Content-Type", "").startswith("application/json"):
                        attempt.error_code = (r.json().get("error") or {}).get("code")
                except requests.RequestException:
                    attempt = Attempt(key, 0, time.monotonic() - started, time.time())
                with self._lock:
                    self._inflight -= 1
                    self.attempts.append(attempt)
                    if attempt.status == 202:
                        self.accepted[key] = attempt
                if attempt.status != 202:
                    time.sleep(self.backoff)  # pacing: do not spin against an outage
                elif self.pace:
                    time.sleep(self.pace)  # pacing: a stream, not one burst
        finally:
            session.close()

    def start(self) -> Submitter:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, name=f"{self.prefix}-submit-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.join(60)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "submitters did not finish"

    def accepted_count(self) -> int:
        with self._lock:
            return len(self.accepted)

    def first_accepted(self) -> Attempt:
        with self._lock:
            return next(iter(self.accepted.values()))

    def statuses(self) -> dict[int, int]:
        with self._lock:
            out: dict[int, int] = {}
            for a in self.attempts:
                out[a.status] = out.get(a.status, 0) + 1
            return out


def work(seconds: float) -> Callable[[str], dict[str, Any]]:
    """Request bodies of ``chaos.work`` tasks that sleep ``seconds``, for a Submitter."""
    return lambda key: {"task": "chaos.work", "kwargs": {"key": key, "seconds": seconds}}


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (0 if it is gone)."""
    value = rss_kib(pid)
    return value[0] / 1024 if value else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def results_path() -> Path:
    """``$CHAOS_RESULTS`` (``make chaos`` keeps them under bench/results/), else a temp file."""
    explicit = os.environ.get("CHAOS_RESULTS")
    if explicit:
        return Path(explicit)
    return Path(tempfile.gettempdir()) / "taskplane-chaos-latest.json"
