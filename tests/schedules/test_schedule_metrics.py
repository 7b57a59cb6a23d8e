"""A real ``taskplane scheduler`` drops a deleted schedule's series from its ``/metrics``:
a next-fire time left behind at a past instant would read as "nothing scans"."""

from __future__ import annotations

import redis

from taskplane.lifecycle import schedule_state_key, schedules_key
from taskplane.schedules import Schedule
from tests.schedules.conftest import state, store
from tests.support.scrape import scrape
from tests.support.services import Process, RedisServer, free_port, start_scheduler, wait_for

#: Every series the scheduler labels with ``schedule``.
LABELLED = ("taskplane_schedule_fires_total", "taskplane_schedule_skipped_total",
            "taskplane_schedule_missed_total", "taskplane_schedule_fire_lag_seconds",
            "taskplane_schedule_next_fire_timestamp_seconds")


def series_of(samples: dict, ident: str) -> set[str]:
    return {name for name, labels in samples if ("schedule", ident) in labels}


def test_a_deleted_schedules_series_are_removed(sched_redis: RedisServer, sched_worker: Process,
                                                r: redis.Redis) -> None:
    gone = store(r, Schedule(name="to-delete", tenant="acme", task="test.echo", every=1,
                             kwargs={"value": "gone"}))
    kept = store(r, Schedule(name="to-keep", tenant="acme", task="test.echo", every=1,
                             kwargs={"value": "kept"}))
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = start_scheduler(sched_redis.url, name="m", SCHEDULER_INTERVAL="0.2",
                           SCHEDULER_METRICS_PORT=str(port))
    try:
        wait_for(lambda: int(state(r, gone).get("fires", 0)) >= 1
                 and set(LABELLED) <= series_of(scrape(url), gone.ident), 20,
                 "every series of the schedule")
        # what DELETE /v1/schedules/<name> removes: the definition and its fire state
        assert r.hdel(schedules_key(), gone.ident) == 1
        r.delete(schedule_state_key(gone.ident))

        def without_it() -> dict | None:
            samples = scrape(url)
            return None if series_of(samples, gone.ident) else samples

        samples = wait_for(without_it, 10, "the deleted schedule's series to go")
        # the other schedule keeps all of its series
        assert set(LABELLED) <= series_of(samples, kept.ident)
        assert "schedule=acme/to-delete is gone" in proc.log()
    finally:
        proc.stop()
