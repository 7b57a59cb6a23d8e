"""The exporter's Sentinel series, read from a real master set before and after a fault."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from taskplane.exporter import create_registry
from taskplane.settings import Settings
from tests.support.sentinel import SentinelSet
from tests.support.services import base_env, wait_for


def _samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def _one(samples: dict, name: str) -> float:
    return next(v for (n, _), v in samples.items() if n == name)


def test_master_replicas_quorum_failovers_and_time_without_a_master(
        sentinel_set: SentinelSet) -> None:
    settings = Settings.from_env(base_env(sentinel_set.url, **sentinel_set.env()))
    registry, _ = create_registry(settings)
    first = sentinel_set.master()
    samples = _samples(registry)
    master = {dict(labels)["address"] for (n, labels), v in samples.items()
              if n == "taskplane_redis_master" and v == 1}
    assert master == {f"127.0.0.1:{first.port}"}
    assert _one(samples, "taskplane_redis_replicas_connected") == 2
    lags = [v for (n, _), v in samples.items() if n == "taskplane_redis_replica_lag_bytes"]
    assert len(lags) == 2 and all(v >= 0 for v in lags)
    assert _one(samples, "taskplane_redis_sentinels_up") == 3
    assert _one(samples, "taskplane_redis_sentinel_quorum") == 1
    assert _one(samples, "taskplane_redis_failovers_total") == 0
    assert _one(samples, "taskplane_redis_master_unreachable_seconds") == 0

    first.kill()
    # while no master answers, the time without one grows
    wait_for(lambda: _one(_samples(registry), "taskplane_redis_master_unreachable_seconds") > 0,
             20, "time without a master")
    second = sentinel_set.wait_new_master(first)
    after = wait_for(lambda: (s := _samples(registry)) and
                     s.get(("taskplane_redis_master",
                            frozenset({("address", f"127.0.0.1:{second.port}")}))) and s,
                     20, "the exporter to see the new master")
    assert _one(after, "taskplane_redis_failovers_total") == 1
    assert _one(after, "taskplane_redis_master_unreachable_seconds") == 0

    for sentinel in sentinel_set.sentinels[1:]:
        sentinel.kill()
    assert _one(_samples(registry), "taskplane_redis_sentinels_up") == 1
    # the last sentinel sees the others down after down-after-milliseconds
    wait_for(lambda: _one(_samples(registry), "taskplane_redis_sentinel_quorum") == 0, 15,
             "no quorum")
