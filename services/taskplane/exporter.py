"""The queue exporter: per-queue depth and age read from Redis at scrape time.

One replica serves these series, so every queue appears once however many API and
worker pods run. Each scrape is one Redis round trip (``broker.RedisBroker.queue_stats``);
when Redis cannot be read, ``taskplane_redis_up`` is 0 and the queue series are absent
rather than stale, and the scrape itself still succeeds.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import httpserver, metrics, redis_conn
from .broker import RedisBroker
from .celery_app import redis_client
from .lifecycle.workflow_state import read_workflow_totals
from .runtime import known_queues
from .sentinel_watch import SentinelCollector
from .settings import Settings
from .tasks.registry import Registry

log = logging.getLogger("taskplane.exporter")


class QueueCollector(Collector):
    """Reads every queue at scrape time; ``clock`` gives the time a scrape reads at;
    ``workflow_totals`` the lifecycle's workflow totals (``taskplane_workflows_total``)."""

    def __init__(self, broker: RedisBroker, queues: list[str],
                 clock: Callable[[], float] = time.time,
                 workflow_totals: Callable[[], dict[str, int]] | None = None) -> None:
        self.broker = broker
        self.queues = queues
        self.clock = clock
        self.workflow_totals = workflow_totals
        self.last_ok = False

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        started = time.perf_counter()
        now = self.clock()
        try:
            stats = self.broker.queue_stats(self.queues, now)
            self.last_ok = True
        except Exception as exc:
            log.warning("reading queues failed: %s", type(exc).__name__)
            stats = []
            self.last_ok = False
        families = {
            spec.name: GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))
            for spec in (metrics.QUEUE_WAITING, metrics.QUEUE_RESERVED, metrics.QUEUE_SCHEDULED,
                         metrics.QUEUE_OLDEST_AGE)
        }
        for q in stats:
            families[metrics.QUEUE_WAITING.name].add_metric([q.name], q.waiting)
            families[metrics.QUEUE_RESERVED.name].add_metric([q.name], q.reserved)
            families[metrics.QUEUE_SCHEDULED.name].add_metric([q.name], q.scheduled)
            families[metrics.QUEUE_OLDEST_AGE.name].add_metric([q.name], q.oldest_age(now))
        yield from families.values()
        lease = GaugeMetricFamily(metrics.LEASE_OLDEST_AGE.name, metrics.LEASE_OLDEST_AGE.help)
        if self.last_ok:
            try:
                oldest = self.broker.oldest_lease_at()
                lease.add_metric([], max(0.0, now - oldest) if oldest else 0.0)
            except Exception:  # noqa: S110 - reported through redis_up on the next scrape
                pass
        yield lease
        if self.workflow_totals is not None and self.last_ok:
            flows = CounterMetricFamily(metrics.WORKFLOWS.name.removesuffix("_total"),
                                        metrics.WORKFLOWS.help, labels=["state"])
            try:
                totals = self.workflow_totals()
            except Exception:
                totals = {}
            for state in ("created", "SUCCESS", "FAILURE", "REVOKED"):
                flows.add_metric([state], totals.get(state, 0))
            yield flows
        yield GaugeMetricFamily(metrics.REDIS_UP.name, metrics.REDIS_UP.help,
                                value=1 if self.last_ok else 0)
        yield GaugeMetricFamily(metrics.EXPORTER_SCRAPE_SECONDS.name,
                                metrics.EXPORTER_SCRAPE_SECONDS.help,
                                value=time.perf_counter() - started)


def create_registry(settings: Settings) -> tuple[CollectorRegistry, QueueCollector]:
    """The exporter's registry: a plain Redis client and the broker's layout (``broker``),
    no Celery app; the queues are the configured ones and those the task modules name."""
    client = redis_client(settings.redis_url, settings)
    registry_of_tasks = Registry.from_modules(settings.task_modules, settings.builtin_tasks)
    collector = QueueCollector(RedisBroker(client), known_queues(settings, registry_of_tasks),
                               workflow_totals=lambda: read_workflow_totals(client))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    if redis_conn.is_sentinel(settings.redis_url):  # the master set's health (failovers, lag)
        registry.register(SentinelCollector(settings))
    return registry, collector


def run(settings: Settings) -> None:
    """Serve ``/metrics`` and ``/healthz`` until SIGTERM or SIGINT (``taskplane exporter``)."""
    registry, collector = create_registry(settings)

    def metrics_answer() -> tuple[int, str, bytes]:
        return 200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(registry)

    def healthz() -> tuple[int, str, bytes]:
        return httpserver.json_answer(200, {"status": "ok", "redis_up": collector.last_ok})

    server = httpserver.serve(settings.metrics_host, settings.exporter_port,
                              {"/metrics": metrics_answer, "/healthz": healthz}, "exporter")
    stop = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    stop.wait()
    server.shutdown()
