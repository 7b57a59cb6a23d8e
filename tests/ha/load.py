"""A steady load against the platform while a fault hits its Redis master set.

``HaStack``: a Sentinel master set (``tests/support/sentinel.py``), a ledger Redis the
faults never touch (the chaos tasks count their runs there), gunicorn, two worker
processes and the scheduler. ``Load``: threads submitting a mix of short, long and delayed
``chaos.work`` tasks, every other one with an Idempotency-Key, recording every answer.

A submission with a key answered ``503 outcome_unknown`` is repeated with the same key,
as a client is told to, until it is answered 202: then it is a promise like any other. One
without a key answered ``outcome_unknown`` is no promise (it may or may not exist) and is
left out of the count of what must survive. Pacing sleeps only space requests.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests

from taskplane.broker import UNACKED_KEY
from tests.chaos.harness import ACME, CHAOS_ENV, Ledger
from tests.schedules.conftest import fires
from tests.support.sentinel import SentinelSet
from tests.support.services import (
    Api,
    Process,
    RedisServer,
    start_scheduler,
    start_worker,
    wait_for,
)

#: The schedule every fault test runs beside the load: a tick a second (the shortest
#: ``every``), each tick's task counted in the ledger under ``TICK_KEY``. ``catch_up: all``
#: so a tick the outage delays still fires: a tick missing is then the fault's doing.
TICK_SCHEDULE = "ha-tick"
TICK_KEY = "tick"
#: (kind, seconds the task sleeps, countdown) cycled through by the submitters.
MIX = (("short", 0.05, 0), ("long", 2.5, 0), ("delayed", 0.05, 2), ("short", 0.05, 0))


@dataclass
class Answer:
    key: str
    status: int  # 0: no HTTP answer
    code: str | None
    at: float  # time.monotonic() of the answer
    task_id: str | None = None
    sent: float = 0.0  # time.monotonic() the request went out


@dataclass
class Load:
    """Submitters until :meth:`stop`; ``accepted`` maps a key to its 202-answered task id."""

    base: str
    threads: int = 3
    pace: float = 0.02
    answers: list[Answer] = field(default_factory=list)
    accepted: dict[str, str] = field(default_factory=dict)
    unknown_without_key: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next = 0
        self._workers: list[threading.Thread] = []
        self._sent: list[float] = []  # when each request went out, answered or not yet

    def _body(self, n: int, key: str) -> dict[str, Any]:
        _kind, seconds, countdown = MIX[n % len(MIX)]
        body: dict[str, Any] = {"task": "chaos.work", "kwargs": {"key": key, "seconds": seconds}}
        if countdown:
            body["countdown"] = countdown
        return body

    def _run(self, index: int) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                with self._lock:
                    self._next += 1
                    n = self._next
                key = f"t{index}-{n:05d}"
                body, idempotent = self._body(n, key), n % 2 == 0
                headers = {**ACME, **({"Idempotency-Key": key} if idempotent else {})}
                while True:  # a keyed submission is repeated until it has an answer that holds
                    answer = self._post(session, key, body, headers)
                    with self._lock:
                        self.answers.append(answer)
                        if answer.status == 202:
                            self.accepted[key] = answer.task_id or ""
                    if answer.status == 202 or not idempotent or self._stop.is_set() or \
                            answer.code != "outcome_unknown":
                        break
                    time.sleep(0.1)  # pacing a replay
                if answer.code == "outcome_unknown" and not idempotent:
                    with self._lock:
                        self.unknown_without_key.append(key)
                time.sleep(self.pace if answer.status == 202 else 0.1)  # pacing

    def _post(self, session: requests.Session, key: str, body: dict[str, Any],
              headers: dict[str, str]) -> Answer:
        sent = time.monotonic()
        with self._lock:
            self._sent.append(sent)
        try:
            r = session.post(self.base + "/v1/tasks", json=body, headers=headers, timeout=30)
        except requests.RequestException:
            return Answer(key, 0, None, time.monotonic(), sent=sent)
        code = None
        if r.status_code != 202 and r.headers.get("Content-Type", "").startswith("application/json"):
            code = (r.json().get("error") or {}).get("code")
        return Answer(key, r.status_code, code, time.monotonic(),
                      r.json()["id"] if r.status_code == 202 else None, sent)

    def start(self) -> Load:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(60)
        assert not any(t.is_alive() for t in self._workers), "submitters did not stop"

    def accepted_count(self) -> int:
        with self._lock:
            return len(self.accepted)

    def unavailable_window(self, since: float) -> float:
        """Seconds from the first refused submission after ``since`` to the next 202
        (0 when none was refused)."""
        with self._lock:
            later = sorted((a for a in self.answers if a.at >= since), key=lambda a: a.at)
        first_bad = next((a.at for a in later if a.status != 202), None)
        if first_bad is None:
            return 0.0
        good = next((a.at for a in later if a.at > first_bad and a.status == 202), None)
        return (good if good is not None else later[-1].at) - first_bad

    def longest_gap(self, since: float) -> float:
        """The longest time without a 202 from ``since`` on: what a client saw of the outage
        (a request that hung until its 503 counts, which ``unavailable_window`` misses)."""
        with self._lock:
            times = sorted(a.at for a in self.answers if a.at >= since and a.status == 202)
        marks = [since, *times]
        return max((b - a for a, b in itertools.pairwise(marks)), default=0.0)

    def accepted_between(self, start: float, end: float) -> int:
        """202 answers to requests sent and answered in [start, end). (A request sent then
        but answered later, once it rode through the failover, was answered by the new
        master: no promise only the old one held.)"""
        with self._lock:
            return sum(1 for a in self.answers
                       if a.status == 202 and start <= a.sent and a.at < end)

    def sent_since(self, since: float) -> int:
        """Requests sent from ``since`` on, answered or still riding through a fault."""
        with self._lock:
            return sum(1 for at in self._sent if at >= since)

    def answers_since(self, since: float) -> int:
        with self._lock:
            return sum(1 for a in self.answers if a.at >= since)

    def statuses(self, since: float = 0.0) -> dict[str, int]:
        with self._lock:
            out: dict[str, int] = {}
            for a in self.answers:
                if a.at >= since:
                    label = str(a.status) + (f" {a.code}" if a.code else "")
                    out[label] = out.get(label, 0) + 1
            return out


class HaStack:
    """Everything a fault test runs; ``close`` stops all of it, whatever state it is in."""

    def __init__(self, acks: str = "auto", **sentinel_options: Any) -> None:
        self.servers = SentinelSet(**sentinel_options).start()
        self.ledger_server = RedisServer().start()
        self.ledger = Ledger(self.ledger_server)
        # RECONCILE_INTERVAL: a message a failover lost is enqueued again within ~2 s
        self.env = {**CHAOS_ENV, "CHAOS_LEDGER_URL": self.ledger_server.url,
                    "RECONCILE_INTERVAL": "1",
                    **self.servers.env(REDIS_MIN_REPLICAS_ACK=acks)}
        self.api: Api | None = None
        self.workers: list[Process] = []
        self.scheduler: Process | None = None
        try:
            self.workers = [start_worker(self.servers.url, name=f"ha{i}", concurrency=2,
                                         **self.env) for i in (1, 2)]
            self.scheduler = start_scheduler(self.servers.url, **self.env)
            self.api = Api(self.servers.url, workers=1, threads=6, **self.env)
            r = self.api.post("/v1/schedules", json={
                "name": TICK_SCHEDULE, "task": "chaos.work", "every": 1, "overlap": "allow",
                "catch_up": "all", "kwargs": {"key": TICK_KEY, "seconds": 0.01}})
            assert r.status_code == 201, r.text
        except BaseException:
            self.close()
            raise

    def processes(self) -> list[Process]:
        return [*self.workers, *([self.scheduler] if self.scheduler else []),
                *([self.api.process] if self.api else [])]

    def exited(self) -> list[str]:
        return [p.name for p in self.processes() if not p.alive()]

    def settle(self, load: Load, timeout: float) -> dict[str, Any]:
        """Wait until every accepted task ran to its end (or ``timeout``); what happened."""
        keys = set(load.accepted)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.ledger.done()
            if all(done.get(k, 0) >= 1 for k in keys):
                break
            time.sleep(0.2)  # polling the ledger
        done, started = self.ledger.done(), self.ledger.started()
        missing = sorted(k for k in keys if done.get(k, 0) < 1)
        assert self.api is not None
        erased = [k for k in missing
                  if self.api.get(f"/v1/tasks/{load.accepted[k]}").status_code == 404]
        states = {k: f'{self.api.get(f"/v1/tasks/{load.accepted[k]}").json().get("state")}, '
                     f'message {self._message_where(load.accepted[k])}' for k in missing}
        return {
            "accepted": len(keys),
            "not_finished": missing,
            "not_finished_states": states,
            "erased": erased,  # answered 202, and the platform no longer knows the task
            "ran_twice": sorted(k for k in keys if started.get(k, 0) > 1),
            "finished_twice": sorted(k for k in keys if done.get(k, 0) > 1),
        }

    def tick_fires(self) -> dict[float, set[str]]:
        """The schedule's ticks the scheduler fired (or replayed), each with its task ids."""
        assert self.scheduler is not None
        by_tick: dict[float, set[str]] = {}
        for f in fires(self.scheduler, ident=f"acme/{TICK_SCHEDULE}"):
            by_tick.setdefault(f.tick, set()).add(f.task_id)
        return by_tick

    def settle_ticks(self, since: float, timeout: float) -> dict[str, Any]:
        """Stop the schedule, wait until each fired tick's task ran, and say whether a tick
        fired twice (two tasks, or one task run twice) or went missing (a gap in the
        seconds from the first tick to the last, or no tick after the fault at ``since``,
        a ``time.time()``)."""
        assert self.api is not None
        r = self.api.delete(f"/v1/schedules/{TICK_SCHEDULE}")
        assert r.status_code in (200, 204), r.text

        def runs() -> int:
            return self.ledger.done().get(TICK_KEY, 0)

        def all_ran() -> bool:
            ids = set().union(*self.tick_fires().values())
            return bool(ids) and runs() >= len(ids)

        try:
            wait_for(all_ran, timeout, "every tick's task ran", interval=0.2)
        except TimeoutError:
            pass  # reported below: a tick task that never ran
        by_tick = self.tick_fires()
        ticks = sorted(by_tick)
        ids = set().union(*by_tick.values()) if by_tick else set()
        expected = [ticks[0] + i for i in range(round(ticks[-1] - ticks[0]) + 1)] if ticks else []
        return {
            "ticks": len(ticks),
            "ticks_after_fault": sum(1 for t in ticks if t > since),
            "ticks_with_two_tasks": sorted(t for t, v in by_tick.items() if len(v) > 1),
            "ticks_missing": sorted(set(expected) - set(ticks)),
            "tick_runs": runs(),
            "tick_tasks": len(ids),
        }

    def _message_where(self, task_id: str) -> str:
        """Where the broker holds a task's message on the current master: waiting in a
        queue list, delivered (``unacked``), or nowhere (the delivery was lost)."""
        try:
            master = self.servers.master().client()
        except LookupError:
            return "unknown (no master)"
        if any(task_id.encode() in raw for raw in master.hvals(UNACKED_KEY)):
            return "unacked"
        for key in master.scan_iter(match="default*"):
            if master.type(key) == b"list" and any(
                    task_id.encode() in raw for raw in master.lrange(key, 0, -1)):
                return "queued"
        return "nowhere"

    def close(self) -> None:
        for proc in self.workers:
            proc.stop(timeout=15)
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.api is not None:
            self.api.close()
        self.servers.close()
        self.ledger_server.close()
