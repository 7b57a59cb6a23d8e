"""A worker pod's own HTTP port: ``/metrics``, ``/livez``, ``/readyz``; and its leases.

Both liveness and lease renewal ride on the consumer's event loop (its timer), so
they prove the same thing: the loop that takes, runs and acknowledges tasks is
turning. A worker whose loop stops neither passes ``/livez`` nor keeps its leases, and
its tasks go to other workers.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from . import httpserver, metrics
from .broker import RedisBroker
from .settings import Settings

log = logging.getLogger("taskplane.worker")

#: How often the consumer loop proves it turns.
LOOP_BEAT_SECONDS = 1.0


def held_delivery_tags(consumer: Any) -> list[str]:
    """Delivery tags of every message this worker holds unacknowledged.

    kombu's QoS keeps them for the channel the task consumer reads: running tasks,
    prefetched ones, and ones waiting in the worker for their countdown/ETA.
    """
    task_consumer = getattr(consumer, "task_consumer", None)
    channel = getattr(task_consumer, "channel", None)
    qos = getattr(channel, "qos", None)
    delivered = getattr(qos, "_delivered", None) or {}
    return [str(tag) for tag in list(delivered)]


class WorkerProbes:
    """Lease renewal, loop heartbeat and the HTTP probes of one worker main process."""

    def __init__(self, consumer: Any, broker: RedisBroker, settings: Settings) -> None:
        self.consumer = consumer
        self.broker = broker
        self.settings = settings
        self.beat = time.monotonic()
        self.broker_down_at = float("-inf")

    def start(self) -> None:
        timer = self.consumer.timer  # fires from the consumer's event loop
        timer.call_repeatedly(LOOP_BEAT_SECONDS, self._beat)
        timer.call_repeatedly(self.settings.lease_interval, self.renew_leases)
        if self.settings.worker_metrics_port:
            httpserver.serve(self.settings.metrics_host, self.settings.worker_metrics_port, {
                "/metrics": self.metrics,
                "/livez": self.livez,
                "/readyz": self.readyz,
            }, "worker")

    def _beat(self) -> None:
        self.beat = time.monotonic()

    def renew_leases(self) -> None:
        try:
            renewed = self.broker.renew_leases(held_delivery_tags(self.consumer))
        except Exception as exc:
            log.warning("lease renewal failed: %s", type(exc).__name__)
            return
        if renewed:
            metrics.instruments().lease_renewals.inc(renewed)

    def metrics(self) -> tuple[int, str, bytes]:
        body, content_type = metrics.scrape()
        return 200, content_type, body

    def livez(self) -> tuple[int, str, bytes]:
        """Alive while the consumer loop keeps ticking.

        While Redis is unreachable the loop blocks in its reconnect attempts; that is
        not a stuck worker, and restarting every worker would not bring Redis back. So a
        stale beat counts only once Redis has been reachable for ``LIVENESS_TIMEOUT``
        seconds: the probe asks Redis only when the beat is stale, never when healthy.
        """
        now = time.monotonic()
        timeout = self.settings.liveness_timeout
        idle = now - self.beat
        if idle > timeout:
            try:
                self.broker.ping()
            except Exception:
                self.broker_down_at = now
            if now - self.broker_down_at > timeout:
                return httpserver.json_answer(503, {"status": "stuck",
                                                    "loop_idle_seconds": round(idle, 1)})
        return httpserver.json_answer(200, {"status": "alive",
                                            "loop_idle_seconds": round(idle, 1)})

    def readyz(self) -> tuple[int, str, bytes]:
        """Ready when Redis answers and the consumer holds a broker connection."""
        try:
            self.broker.ping()
        except Exception as exc:
            return httpserver.json_answer(503, {"status": "broker unreachable",
                                                "reason": type(exc).__name__})
        if getattr(self.consumer, "connection", None) is None:
            return httpserver.json_answer(503, {"status": "not consuming"})
        return httpserver.json_answer(200, {"status": "ready"})
