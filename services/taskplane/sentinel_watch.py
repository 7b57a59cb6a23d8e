"""The exporter's view of a Sentinel master set, read at scrape time.

One exporter replica serves these series, as it does the queue series: which node is
the master, whether the sentinels can still fail over (quorum), how far each replica
lags, how many failovers the exporter has seen and how long it has been without a master.
Each scrape asks every sentinel once and the master once (``INFO replication``), each
bounded by a short timeout, so a dead node costs a scrape at most a second per node.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import metrics, redis_conn
from .settings import Settings

log = logging.getLogger("taskplane.exporter")

#: Seconds one sentinel or the master may take to answer a scrape's question.
ASK_TIMEOUT = 1.0


class SentinelCollector(Collector):
    """The ``taskplane_redis_*`` Sentinel series (``metrics.REDIS_MASTER`` and the rest)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.target = redis_conn.parse_sentinel_url(settings.redis_url)
        kwargs = redis_conn.sentinel_kwargs(settings, ASK_TIMEOUT)
        self.sentinels = [redis.Redis(host=h, port=p, **kwargs) for h, p in self.target.sentinels]
        self.master_address: tuple[str, int] | None = None
        self._master: redis.Redis | None = None
        self.failovers = 0
        self.last_reached = time.monotonic()

    def _ask_sentinels(self) -> tuple[int, tuple[str, int] | None, bool]:
        """(sentinels that answered, the master most of them name, quorum reachable)."""
        name = self.settings.redis_sentinel_master
        up, quorum = 0, False
        votes: dict[tuple[str, int], int] = {}
        for sentinel in self.sentinels:
            try:
                found = sentinel.sentinel_get_master_addr_by_name(name)
            except redis.RedisError:
                continue
            up += 1
            if isinstance(found, tuple | list) and found:
                host = found[0].decode() if isinstance(found[0], bytes) else str(found[0])
                address = (host, int(found[1]))
                votes[address] = votes.get(address, 0) + 1
            if not quorum:
                try:
                    quorum = bool(sentinel.execute_command("SENTINEL", "CKQUORUM", name))
                except redis.RedisError:  # NOQUORUM: an error reply
                    pass
        master = max(votes, key=lambda a: votes[a]) if votes else None
        return up, master, quorum

    def _master_client(self, address: tuple[str, int]) -> redis.Redis:
        if self._master is None or self.master_address != address:
            if self._master is not None:
                self._master.close()
            self._master = redis.Redis(
                host=address[0], port=address[1], db=self.target.db,
                username=self.target.username, password=self.target.password,
                retry=None,  # type: ignore[arg-type]  # None: no retries (redis-py)
                **redis_conn.socket_options(ASK_TIMEOUT),
                **({"ssl": True, **redis_conn.tls_options(self.settings)}
                   if self.settings.redis_master_tls else {}))
        return self._master

    def collect(self) -> Iterator[Metric]:
        up, address, quorum = self._ask_sentinels()
        replication: dict[str, object] | None = None
        if address is not None:
            try:
                replication = self._master_client(address).info("replication")
                if replication.get("role") != "master":
                    replication = None  # not promoted yet: no master to report
            except redis.RedisError as exc:
                log.warning("reading the master's replication failed: %s", type(exc).__name__)
            if self.master_address is not None and address != self.master_address:
                self.failovers += 1
            self.master_address = address
        now = time.monotonic()
        if replication is not None:
            self.last_reached = now

        master = GaugeMetricFamily(metrics.REDIS_MASTER.name, metrics.REDIS_MASTER.help,
                                   labels=list(metrics.REDIS_MASTER.labels))
        lag = GaugeMetricFamily(metrics.REDIS_REPLICA_LAG.name, metrics.REDIS_REPLICA_LAG.help,
                                labels=list(metrics.REDIS_REPLICA_LAG.labels))
        connected = GaugeMetricFamily(metrics.REDIS_REPLICAS.name, metrics.REDIS_REPLICAS.help)
        if replication is not None and address is not None:
            master.add_metric([f"{address[0]}:{address[1]}"], 1)
            offset = int(str(replication.get("master_repl_offset", 0)))
            connected.add_metric([], int(str(replication.get("connected_slaves", 0))))
            for key, entry in replication.items():
                if key.startswith("slave") and isinstance(entry, dict):
                    lag.add_metric([f"{entry.get('ip')}:{entry.get('port')}"],
                                   max(0, offset - int(entry.get("offset", 0))))
        yield master
        yield connected
        yield lag
        yield CounterMetricFamily(metrics.REDIS_FAILOVERS.name, metrics.REDIS_FAILOVERS.help,
                                  value=self.failovers)
        yield GaugeMetricFamily(metrics.REDIS_SENTINELS_UP.name, metrics.REDIS_SENTINELS_UP.help,
                                value=up)
        yield GaugeMetricFamily(metrics.REDIS_SENTINEL_QUORUM.name,
                                metrics.REDIS_SENTINEL_QUORUM.help, value=1 if quorum else 0)
        yield GaugeMetricFamily(metrics.REDIS_MASTER_UNREACHABLE.name,
                                metrics.REDIS_MASTER_UNREACHABLE.help,
                                value=0.0 if replication is not None else now - self.last_reached)
