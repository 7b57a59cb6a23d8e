"""The dashboard's Redis HA row, run by a real Prometheus against a real master set: the
exporter's Sentinel view and the API's acknowledged submissions give every query data."""

from __future__ import annotations

from contextlib import ExitStack

from tests.support.dashboards import dashboard_exprs, needs_sentinel, prometheus, substitute
from tests.support.sentinel import SentinelSet
from tests.support.services import VENV_BIN, Api, Process, base_env, free_port, wait_for


def test_every_redis_ha_panel_has_data_behind_sentinel(sentinel_set: SentinelSet) -> None:
    exprs = [(title, expr) for title, expr in dashboard_exprs() if needs_sentinel(expr)]
    assert len(exprs) >= 8  # master, failovers, unreachable, replicas, lag, sentinels, quorum, acks
    with ExitStack() as cleanup:
        exporter_port = free_port()
        exporter = Process("exporter", [str(VENV_BIN / "taskplane"), "exporter"],
                           base_env(sentinel_set.url, EXPORTER_PORT=str(exporter_port),
                                    QUEUES="parked", **sentinel_set.env()))
        cleanup.callback(exporter.stop)
        api = Api(sentinel_set.url, workers=1, QUEUES="parked", **sentinel_set.env())
        cleanup.callback(api.close)
        prom = prometheus({"taskplane-api": f"127.0.0.1:{api.port}",
                           "taskplane-exporter": f"127.0.0.1:{exporter_port}"})
        cleanup.callback(prom.close)
        # an acknowledged submission a second for the confirmations' rate (1m window)
        empty = []
        for title, expr in exprs:
            query = substitute(expr)
            try:
                wait_for(lambda q=query: api.submit("test.echo", kwargs={"value": 1},
                                                    queue="parked") and prom.query(q),
                         30, f"{title}: {query}", interval=1)
            except TimeoutError:
                empty.append((title, query))
        assert not empty, empty
