"""A worker pod's own HTTP port: ``/metrics``, ``/livez``, ``/readyz``; and its leases.

Both liveness and lease renewal ride on the consumer's event loop (its timer), so
they prove the same thing: the loop that takes, runs and acknowledges tasks is
turning. A worker whose loop stops neither passes ``/livez`` nor keeps its leases, and
its tasks go to other workers.

Celery cancels the timer entries of a broker connection when it loses it, so the timers
are armed by ``LeaseStep``, a consumer bootstep that starts again on every (re)connection.
Its start also settles what the lost connection left behind (``broker.settle_detached``)
and renews every lease at once, before the restarted loop's first sweep for expired
leases can hand a running task to someone else. Behind Sentinel the same renewal keeps
the run lease of every task the pool runs (``lifecycle.RunLeases``), which holds off a
second start of it that a failover could deliver while this worker lives.

The HTTP port is bound before Celery starts (``serve_probes``): a worker whose first
Redis connection is slow answers ``/livez`` from its first second (it is starting, not
stuck) and ``/readyz`` 503 until it consumes; a worker whose port is taken stops at once.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from celery import bootsteps, signals

from . import broker, httpserver, redis_conn
from .broker import RedisBroker
from .lifecycle import RunLeases
from .metrics import Metrics
from .settings import Settings

if TYPE_CHECKING:
    from .runtime import TaskplaneCelery

log = logging.getLogger("taskplane.worker")

#: How often the consumer loop proves it turns.
LOOP_BEAT_SECONDS = 1.0
#: How long a probe waits for Redis: well inside a kubelet's 1 s probe timeout, so a stalled
#: Redis gives a quick answer (a false "unreachable" only errs towards "alive").
PROBE_PING_TIMEOUT = 0.5


def active_requests() -> list[Any]:
    """The requests this worker process's pool runs now (or is about to).

    Celery's worker state (``celery.worker.state.active_requests``, a set of requests a
    pool process accepted) is not public API; this is the one function that reads it, and
    ``tests/unit/test_ride_through.py`` fails if its shape changes.
    """
    from celery.worker import state

    return list(state.active_requests)


def running_delivery_tags() -> set[str]:
    """Delivery tags of the tasks this worker process is running now."""
    tags = set()
    for request in active_requests():
        message = getattr(request, "message", None)
        tag = getattr(message, "delivery_tag", None)
        if tag is not None:
            tags.add(str(tag))
    return tags


def running_task_ids() -> list[str]:
    """Ids of the tasks this worker process's pool runs now (or is about to): their run
    leases are renewed (``lifecycle.RunLeases``)."""
    return sorted({str(request.id) for request in active_requests()
                   if getattr(request, "id", None)})


def held_delivery_tags(consumer: Any) -> list[str]:
    """Delivery tags of every message this worker holds unacknowledged: on the live task
    channel, and on channels of lost connections it still runs tasks from."""
    task_consumer = getattr(consumer, "task_consumer", None) if consumer is not None else None
    return broker.held_tags(getattr(task_consumer, "channel", None))


class WorkerProbes:
    """Lease renewal, loop heartbeat and the HTTP probes of one worker main process."""

    def __init__(self, broker_: RedisBroker, settings: Settings,
                 probe_broker: RedisBroker | None = None,
                 app_metrics: Metrics | None = None,
                 run_leases: RunLeases | None = None) -> None:
        self.broker = broker_
        #: Behind Sentinel: the run leases of running tasks, renewed with the broker's.
        self.run_leases = run_leases
        #: The worker app's metrics: lease renewals are counted, ``/metrics`` served.
        self.app_metrics = app_metrics or Metrics(settings.metrics_enabled)
        #: What ``/livez`` and ``/readyz`` ask: the same Redis, with a shorter timeout.
        self.probe_broker = probe_broker or broker_
        self.settings = settings
        self.consumer: Any = None
        #: True while the consumer has a connection and its bootsteps started.
        self.consuming = False
        self.beat = time.monotonic()
        self.broker_down_at = float("-inf")
        self.server: ThreadingHTTPServer | None = None
        self._between_connections: threading.Thread | None = None

    # --- the HTTP port ---------------------------------------------------------------

    def serve(self) -> None:
        """Bind the probe port now (raises OSError if taken) and answer from a thread."""
        if self.server is not None or not self.settings.worker_metrics_port:
            return
        self.server = httpserver.serve(self.settings.metrics_host,
                                       self.settings.worker_metrics_port, {
                                           "/metrics": self.metrics,
                                           "/livez": self.livez,
                                           "/readyz": self.readyz,
                                       }, "worker")
        # Pool processes are forked later and inherit the listening socket: closed there,
        # a SIGKILLed main process frees the port for its replacement at once.
        signals.worker_process_init.connect(self._close_in_child, weak=False)

    def _close_in_child(self, **_: Any) -> None:
        if self.server is not None:
            self.server.socket.close()
            self.server = None

    # --- the consumer's connection ---------------------------------------------------

    def connected(self, consumer: Any) -> None:
        """A broker connection is up and the task consumer runs (``LeaseStep.start``)."""
        self.consumer = consumer
        self.beat = time.monotonic()
        self.consuming = True
        self.renew_leases()
        if self._between_connections is None:
            self._between_connections = threading.Thread(
                target=self._renew_between_connections, name="lease-renewal", daemon=True)
            self._between_connections.start()

    def disconnected(self) -> None:
        self.consuming = False

    def _renew_between_connections(self) -> None:
        """Renew leases while Celery reconnects, from this thread.

        Between connections the loop does not turn, and Celery's back-off between attempts
        grows to 30 s: Redis may be back for that long before the consumer is. Its leases
        must not lapse meanwhile, or another worker's sweep would hand its running tasks
        out again. Only renewal happens here; settling waits for the loop
        (``connected``), which owns the channels.
        """
        while True:
            time.sleep(self.settings.lease_interval)  # pacing: one renewal per interval
            if self.consumer is not None and not self.consuming:
                self.renew_leases(settle=False)

    def tick(self) -> None:
        """The consumer loop turned (a timer entry of it ran)."""
        self.beat = time.monotonic()

    def renew_leases(self, settle: bool = True) -> None:
        """Settle what lost connections left, then renew every held message's lease."""
        if settle:
            try:
                broker.settle_detached(running_delivery_tags().__contains__)
            except Exception as exc:  # retried next tick; renewal must go on regardless
                log.warning("settling the lost connection's messages failed: %s",
                            type(exc).__name__)
        try:
            # run leases first: the broker's lease is then never the fresher of the two,
            # so a message the sweep hands back always finds the run's lease lapsed
            if self.run_leases is not None:
                self.run_leases.renew(running_task_ids())
            tags = held_delivery_tags(self.consumer)
            if not tags:
                self.broker.ping()  # holding nothing: still tell the sweep gate Redis answers
            renewed = self.broker.renew_leases(tags)
        except Exception as exc:
            broker.SWEEPS.unreachable()
            log.warning("lease renewal failed: %s", type(exc).__name__)
            return
        broker.SWEEPS.reachable()
        if renewed:
            self.app_metrics.instruments.lease_renewals.inc(renewed)

    # --- the routes ------------------------------------------------------------------

    def metrics(self) -> tuple[int, str, bytes]:
        body, content_type = self.app_metrics.scrape()
        return 200, content_type, body

    def livez(self) -> tuple[int, str, bytes]:
        """Alive while the consumer loop keeps ticking.

        While Redis is unreachable the loop blocks in its reconnect attempts; that is
        not a stuck worker, and restarting every worker would not bring Redis back. So a
        stale beat counts only once Redis has been reachable for ``LIVENESS_TIMEOUT``
        seconds: the probe asks Redis only when the beat is stale, never when healthy.
        Before the first connection the worker is starting, and between connections
        Celery is reconnecting (its back-off reaches 30 s, and it gives up, exiting
        non-zero, after ``broker_connection_max_retries``): both are alive too.
        """
        now = time.monotonic()
        if not self.consuming:
            status = "starting" if self.consumer is None else "reconnecting"
            return httpserver.json_answer(200, {"status": status})
        timeout = self.settings.liveness_timeout
        idle = now - self.beat
        if idle > timeout:
            try:
                self.probe_broker.ping()
            except Exception:
                self.broker_down_at = now
            if now - self.broker_down_at > timeout:
                return httpserver.json_answer(503, {"status": "stuck",
                                                    "loop_idle_seconds": round(idle, 1)})
        return httpserver.json_answer(200, {"status": "alive",
                                            "loop_idle_seconds": round(idle, 1)})

    def readyz(self) -> tuple[int, str, bytes]:
        """Ready when Redis answers and the consumer holds a broker connection."""
        if not self.consuming or getattr(self.consumer, "connection", None) is None:
            return httpserver.json_answer(503, {"status": "not consuming"})
        try:
            self.probe_broker.ping()
        except Exception as exc:
            return httpserver.json_answer(503, {"status": "broker unreachable",
                                                "reason": type(exc).__name__})
        return httpserver.json_answer(200, {"status": "ready"})


#: Guards the creation of an app's probes (``serve_probes`` and ``LeaseStep`` may race).
_PROBES_LOCK = threading.Lock()


def probes_for(app: TaskplaneCelery) -> WorkerProbes:
    """The worker app's probes, created (and their port bound) on first use; kept on the
    app, so two worker apps in a process never share a port or a lease."""
    with _PROBES_LOCK:
        if app.worker_probes is None:
            runtime = app.runtime
            settings = runtime.settings
            # Probes and renewals must fail fast, not wait out an outage like task writes do.
            quick = min(settings.redis_timeout, PROBE_PING_TIMEOUT)
            leases = redis_conn.client(settings.redis_url, settings)
            probes = WorkerProbes(RedisBroker(leases),
                                  settings, RedisBroker(redis_conn.client(
                                      settings.redis_url, settings, timeout=quick)),
                                  runtime.metrics,
                                  RunLeases(leases) if settings.run_lease > 0 else None)
            probes.serve()
            app.worker_probes = probes
        return app.worker_probes


def serve_probes(app: TaskplaneCelery) -> WorkerProbes:
    """Bind the worker's probe port before Celery starts; a taken port ends the process
    at once, non-zero, with one line saying why (not a worker running without probes)."""
    settings = app.runtime.settings
    try:
        return probes_for(app)
    except OSError as exc:
        raise SystemExit(
            f"taskplane worker: cannot serve probes on {settings.metrics_host}:"
            f"{settings.worker_metrics_port} (WORKER_METRICS_PORT): "
            f"{exc.strerror or exc}") from None


class LeaseStep(bootsteps.StartStopStep):
    """Arms the loop beat and lease renewal on every broker (re)connection.

    Celery cancels the timer entries a lost connection registered, then starts the
    consumer's bootsteps again: this one re-arms both timers each time, after the task
    consumer exists (``requires`` Tasks) and before the event loop turns.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)
    label = "TaskplaneLeases"

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.probes = probes_for(c.app)
        self.entries: list[Any] = []

    def start(self, c: Any) -> None:
        self._cancel(c)
        self.probes.connected(c)
        self.entries = [
            c.timer.call_repeatedly(LOOP_BEAT_SECONDS, self.probes.tick),
            c.timer.call_repeatedly(self.probes.settings.lease_interval,
                                    self.probes.renew_leases),
        ]

    def stop(self, c: Any) -> None:
        self.probes.disconnected()
        self._cancel(c)

    def shutdown(self, c: Any) -> None:
        self.stop(c)

    def _cancel(self, c: Any) -> None:
        for entry in self.entries:
            c.timer.cancel(entry)  # a no-op for entries Celery cancelled with the connection
        self.entries = []
