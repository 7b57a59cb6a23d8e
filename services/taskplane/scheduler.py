"""``taskplane scheduler``: fires every periodic schedule's ticks, exactly once per tick.

Run two replicas (or more). Exactly-once does not rest on electing one: the fire of tick
T of schedule S is ``celery_app.submit`` under the Idempotency-Key ``schedule S T``
(:func:`schedules.fire_key`), and the lifecycle's submit script claims that key in the
same atomic step that writes the record and pushes the message. A second replica firing
the same tick, or a fire retried after a crash between the submit and the bookkeeping, gets
the first task back (a replay) and creates nothing.

What the replicas do share is a lease (``SCHEDULER_LEASE_TTL``): only its holder scans,
which halves the Redis work, and the others poll it every ``SCHEDULER_INTERVAL``. When the
holder is SIGKILLed its lease lapses, so a tick fires at most about
``SCHEDULER_LEASE_TTL + SCHEDULER_INTERVAL`` late (plus one scan); ticks later than
``SCHEDULER_MISFIRE_GRACE`` follow the schedule's ``catch_up`` (``schedules.py``).

Each scan, per schedule: read its fire state (``last_tick``, the newest tick handled),
list the ticks due since, decide per tick (fire, skip for ``overlap: forbid``, miss for
``catch_up``), fire in order, then move ``last_tick`` forward with a compare-and-set
(``Lifecycle.schedule_advance``): a replica that read an old state fires nothing new and
counts nothing twice.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType

import redis

from . import httpserver, lifecycle, metrics, redis_conn, schedules
from .broker import UNACKED_KEY, queue_keys
from .celery_app import (
    Accepted,
    IdempotencyConflict,
    RateLimited,
    TenantCapReached,
    create_celery,
    revoke,
    submit,
)
from .lifecycle import OutcomeUnknown
from .runtime import TaskplaneCelery
from .schedules import Schedule, ScheduleStore
from .settings import Settings

log = logging.getLogger("taskplane.scheduler")


@dataclass
class Outcome:
    """What one scan did with one schedule (tests and logs read it)."""

    fired: list[tuple[float, str]] = field(default_factory=list)  # (tick, task id) created
    #: (tick, task id) another replica (or an earlier attempt) had fired
    replayed: list[tuple[float, str]] = field(default_factory=list)
    skipped: int = 0  # overlap: forbid
    missed: int = 0  # catch_up
    advanced: bool = False


class Scheduler:
    """One replica: scans the schedules while it holds the lease."""

    def __init__(self, app: TaskplaneCelery, holder: str | None = None) -> None:
        self.app = app
        self.settings: Settings = app.runtime.settings
        self.life = app.runtime.lifecycle
        self.store = ScheduleStore(self.life)
        self.code = schedules.declared(app.runtime.registry)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stopping = threading.Event()
        self.looped = time.monotonic()
        #: Schedules this replica has labelled series for: one that leaves the scan
        #: (deleted, disabled) has them removed, so no stale next-fire time stays behind.
        self.reported: set[str] = set()
        #: When the last reconcile pass ran (epoch s; ``reconcile``).
        self.reconciled = 0.0

    # --- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        log.info("scheduler %s: %d schedules declared in code, interval %ss, lease %ss",
                 self.holder, len(self.code), self.settings.scheduler_interval,
                 self.settings.scheduler_lease_ttl)
        leading = False
        while not self.stopping.is_set():
            began = time.monotonic()
            try:
                holds = self.settings.scheduler_lease_ttl == 0 or self.life.scheduler_lease(
                    self.holder, self.settings.scheduler_lease_ttl)
                if holds != leading:
                    log.info("scheduler %s %s the lease", self.holder,
                             "took" if holds else "lost")
                    leading = holds
                    self.lead(holds)
                if holds:
                    self.scan(time.time())
                    self.reconcile(time.time())
                self.looped = time.monotonic()
            except (redis.RedisError, OutcomeUnknown) as exc:
                log.warning("scan failed, retrying: %s", exc)
            self.stopping.wait(max(0.0, self.settings.scheduler_interval
                                   - (time.monotonic() - began)))
        try:
            self.life.scheduler_release(self.holder)
        except (redis.RedisError, OutcomeUnknown):
            pass  # it lapses by itself
        log.info("scheduler %s stopped", self.holder)

    def reconcile(self, now: float) -> int:
        """Every ``RECONCILE_INTERVAL``: push back the messages a failover lost
        (``lifecycle/reconcile.py``); how many were."""
        every = self.settings.reconcile_seconds
        if not every or now - self.reconciled < every:
            return 0
        self.reconciled = now
        requeued = 0
        for task_id in self.life.reconcile_candidates(now - every,
                                                      self.settings.reconcile_batch):
            verdict = self.life.reconcile(task_id, now, every, UNACKED_KEY, queue_keys)
            if verdict == "requeued":
                requeued += 1
                log.warning("requeued task=%s: its message was lost (seen in no queue and "
                            "no unacked entry twice, %ss apart)", task_id, every)
        return requeued

    def lead(self, holds: bool) -> None:
        """Only the scanning replica reports per-schedule gauges: a standby drops its old
        ones, so a dashboard never shows two replicas' (one of them stale) at once."""
        m = self.app.runtime.metrics.instruments
        m.scheduler_leading.set(1 if holds else 0)
        if not holds:
            m.schedule_fire_lag.clear()
            m.schedule_next_fire.clear()

    def forget_gone(self, idents: set[str], m: metrics.Instruments) -> None:
        """Remove every labelled series of the schedules no longer in ``idents`` (deleted
        or disabled since the last scan): a next-fire time left at a past instant reads as
        "nothing scans", and their counters would only grow the scrape."""
        gone, self.reported = self.reported - idents, idents
        for ident in gone:
            for metric in (m.schedule_fires, m.schedule_skipped, m.schedule_missed,
                           m.schedule_fire_lag, m.schedule_next_fire):
                try:
                    metric.remove(ident)
                except KeyError:  # never recorded (a gauge not set yet)
                    pass
            log.info("schedule=%s is gone: its metrics are removed", ident)

    def healthy(self) -> bool:
        """The loop went round lately (a stuck scan or a dead Redis client fails it)."""
        return time.monotonic() - self.looped < max(30.0, 10 * self.settings.scheduler_interval)

    def stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        self.stopping.set()

    # --- one scan -----------------------------------------------------------------------

    def schedules(self) -> list[Schedule]:
        return [s for s in (*self.code, *self.store.all()) if s.enabled]

    def scan(self, now: float) -> dict[str, Outcome]:
        active = self.schedules()
        m = self.app.runtime.metrics.instruments
        for s in active:  # counters start at zero, so rate() has a series from the start
            for counter in (m.schedule_fires, m.schedule_skipped, m.schedule_missed):
                counter.labels(s.ident)
        self.forget_gone({s.ident for s in active}, m)
        states = self.life.schedule_states([s.ident for s in active])
        return {s.ident: self.handle(s, state, now) for s, state in zip(active, states, strict=True)}

    def handle(self, schedule: Schedule, state: dict[str, str], now: float) -> Outcome:
        """Fire, skip or miss every tick of ``schedule`` due by ``now``, then record it."""
        out = Outcome()
        read = state.get("last_tick", "")
        if not read:
            if schedule.source == "code" or not schedule.created_at:
                # first sight of a schedule from code: its ticks start now
                out.advanced = self.life.schedule_advance(schedule.ident, "", now,
                                                          stored=False)
                return out
            after = schedule.created_at
        else:
            after = float(read)
        grace = self.settings.scheduler_misfire_grace
        window = self.settings.scheduler_catch_up_window
        most = self.settings.scheduler_max_catch_up
        on_time_room = int(grace // (schedule.every or 60)) + 2
        ticks, dropped = schedule.due(after, now, most + on_time_room)
        if not ticks and not dropped:
            self.app.runtime.metrics.instruments.schedule_next_fire.labels(schedule.ident).set(
                schedule.next_tick(max(after, now)))
            return out
        plan = self.plan(schedule, ticks, now, grace, window, most)
        last_task = state.get("last_task_id", "")
        last_fired_at: float | None = None
        handled: float | None = None
        for tick, fire in plan:
            if not fire:
                out.missed += 1
            elif self.overlap(schedule, last_task) == "skip":
                out.skipped += 1
                log.info("skip schedule=%s tick=%s: its previous task %s is unfinished",
                         schedule.ident, _iso(tick), last_task)
            else:
                task_id = self.fire(schedule, tick, out)
                if task_id is None:  # not accepted: the next scan tries this tick again
                    break
                last_task, last_fired_at = task_id, time.time()
            handled = tick
        if handled is None:
            return out
        out.missed += dropped
        out.advanced = self.life.schedule_advance(
            schedule.ident, read, handled, task_id=last_task if last_fired_at else "",
            fired_at=last_fired_at, fires=len(out.fired), skipped=out.skipped,
            missed=out.missed, stored=schedule.source != "code")
        m = self.app.runtime.metrics.instruments
        if out.advanced:  # counted by the replica whose record stands: never twice
            if out.skipped:
                m.schedule_skipped.labels(schedule.ident).inc(out.skipped)
            if out.missed:
                m.schedule_missed.labels(schedule.ident).inc(out.missed)
        m.schedule_next_fire.labels(schedule.ident).set(schedule.next_tick(max(handled, now)))
        if out.missed:
            log.warning("missed schedule=%s ticks=%d (catch_up %s)", schedule.ident, out.missed,
                        schedule.catch_up)
        return out

    @staticmethod
    def plan(schedule: Schedule, ticks: list[float], now: float, grace: float, window: float,
             most: int) -> list[tuple[float, bool]]:
        """Each due tick with whether to fire it: on time, or caught up (``catch_up``)."""
        late = [t for t in ticks if now - t > grace]
        on_time = [t for t in ticks if now - t <= grace]
        keep: set[float] = set(on_time)
        reachable = [t for t in late if now - t <= window]
        if schedule.catch_up == "all":
            keep.update(reachable[-most:])
        elif schedule.catch_up == "latest" and reachable:
            keep.add(reachable[-1])
        return [(t, t in keep) for t in ticks]

    def overlap(self, schedule: Schedule, last_task: str) -> str:
        """``fire`` or ``skip``, after revoking the previous task for ``replace``."""
        if schedule.overlap == "allow" or not last_task:
            return "fire"
        record, _ = self.life.read(last_task, False)
        if record is None or record.state in lifecycle.FINAL_STATES:
            return "fire"
        if schedule.overlap == "forbid":
            return "skip"
        outcome = revoke(self.app, last_task, record.tenant, terminate=True)
        log.info("replace schedule=%s: revoked %s (%s)", schedule.ident, last_task,
                 outcome.outcome)
        return "fire"

    def fire(self, schedule: Schedule, tick: float, out: Outcome) -> str | None:
        """Submit the tick's task under its Idempotency-Key; its id, or None when Redis did
        not take it (cap reached, Redis away: the next scan tries the same tick again)."""
        spec = self.app.runtime.registry.get(schedule.task)
        if spec is None:
            log.error("schedule=%s names unknown task %s", schedule.ident, schedule.task)
            return None
        queue = schedule.queue or spec.queue or self.settings.default_queue
        key = (schedules.fire_key(schedule, tick), schedule.fingerprint())
        try:
            accepted: Accepted = submit(self.app, tenant=schedule.tenant, name=schedule.task,
                                        args=list(schedule.args), kwargs=dict(schedule.kwargs),
                                        queue=queue, priority=schedule.priority,
                                        idempotency=key)
        except IdempotencyConflict as exc:  # fired under an older definition: still fired
            out.replayed.append((tick, exc.task_id))
            log.info("replay schedule=%s tick=%s task=%s (older definition)", schedule.ident,
                     _iso(tick), exc.task_id)
            return exc.task_id
        except (TenantCapReached, RateLimited, OutcomeUnknown, redis.RedisError) as exc:
            log.warning("fire schedule=%s tick=%s not accepted: %s", schedule.ident,
                        _iso(tick), type(exc).__name__)
            return None
        if accepted.replayed:
            out.replayed.append((tick, accepted.task_id))
            log.info("replay schedule=%s tick=%s task=%s", schedule.ident, _iso(tick),
                     accepted.task_id)
            return accepted.task_id
        lag = time.time() - tick
        out.fired.append((tick, accepted.task_id))
        m = self.app.runtime.metrics.instruments
        m.schedule_fires.labels(schedule.ident).inc()
        m.schedule_fire_lag.labels(schedule.ident).set(lag)
        log.info("fire schedule=%s tick=%s task=%s lag=%.3f", schedule.ident, _iso(tick),
                 accepted.task_id, lag)
        return accepted.task_id


def _iso(tick: float) -> str:
    return datetime.fromtimestamp(tick, UTC).isoformat()


def run(settings: Settings) -> None:
    """The ``taskplane scheduler`` process: scan until SIGTERM or SIGINT."""
    # One process: its own registry, not multiprocess files (the pod's environment may
    # name a directory for them), so a gauge a standby clears is gone from the scrape.
    os.environ.pop(metrics.MULTIPROC_ENV, None)
    redis_conn.await_master(settings, "scheduler")
    redis_conn.warn_if_too_few_replicas(settings, "scheduler")
    app = create_celery(settings, patient=False)
    scheduler = Scheduler(app)
    if settings.scheduler_metrics_port:
        def scrape() -> tuple[int, str, bytes]:
            body, ctype = app.runtime.metrics.scrape()
            return 200, ctype, body

        def health() -> tuple[int, str, bytes]:
            ok = scheduler.healthy()
            return httpserver.json_answer(200 if ok else 503, {"ok": ok})

        httpserver.serve(settings.metrics_host, settings.scheduler_metrics_port,
                         {"/metrics": scrape, "/healthz": health}, "scheduler")
    signal.signal(signal.SIGTERM, scheduler.stop)
    signal.signal(signal.SIGINT, scheduler.stop)
    scheduler.run()
