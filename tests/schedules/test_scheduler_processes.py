"""Real ``taskplane scheduler`` processes firing into a real Redis and a real worker: each
tick fires exactly once however many replicas run and whichever one dies."""

from __future__ import annotations

import signal
import time

import redis

from taskplane.schedules import Schedule
from tests.schedules.conftest import counted, fires, state, store
from tests.support.services import Process, RedisServer, start_scheduler, wait_for


def tasks_of(client: redis.Redis, tenant: str) -> set[str]:
    return {m.decode() for m in client.zrange(f"taskplane:tasks:{tenant}", 0, -1)}


def test_two_schedulers_without_a_lease_fire_each_tick_once(
        sched_redis: RedisServer, sched_worker: Process, r: redis.Redis) -> None:
    """Worst case for exactly-once: both replicas scan every tick (no lease), so every tick
    is submitted twice at about the same moment; the Idempotency-Key makes one task."""
    env = {"SCHEDULER_LEASE_TTL": "0",
           "TASK_MODULES": "tests.support.tasks,tests.support.schedules"}
    # scan periods that drift against each other, so each replica is first on some ticks
    procs = [start_scheduler(sched_redis.url, name=n, SCHEDULER_INTERVAL=i, **env)
             for n, i in (("a", "0.2"), ("b", "0.13"))]
    try:
        wait_for(lambda: counted(r, "declared-every-second") >= 8, 30, "8 fires")
    finally:
        for p in procs:
            p.stop()
    logged = fires(*procs, ident="system/declared-every-second")
    created = [f for f in logged if f.kind == "fire"]
    ticks = sorted({f.tick for f in created})
    assert len(ticks) == len(created), "a tick created two tasks"
    assert ticks == [ticks[0] + i for i in range(len(ticks))], "a tick was skipped"
    assert all(fires(p, ident=created[0].ident) for p in procs), \
        "one replica fired every tick: the replicas never competed"
    replayed = [f for f in logged if f.kind == "replay"]
    assert {f.task_id for f in replayed} <= {f.task_id for f in created}
    assert tasks_of(r, "system") == {f.task_id for f in created}
    # each task ran once: the side effect counts runs, not results
    wait_for(lambda: counted(r, "declared-every-second") == len(created), 20,
             f"{len(created)} runs")
    assert state(r, Schedule(name="declared-every-second", task="test.count"))["fires"] == \
        str(len(created))


def test_sigkill_of_the_firing_replica_misses_no_tick_and_doubles_none(
        sched_redis: RedisServer, sched_worker: Process, r: redis.Redis) -> None:
    """The lease holder is SIGKILLed mid-run; the standby takes over when the lease lapses.
    Every tick fires once, at most ``SCHEDULER_LEASE_TTL + SCHEDULER_INTERVAL`` (plus a
    scan) late."""
    lease, interval = 2.0, 0.2
    env = {"SCHEDULER_INTERVAL": str(interval), "SCHEDULER_LEASE_TTL": str(lease),
           "SCHEDULER_MISFIRE_GRACE": "5"}
    s = store(r, Schedule(name="kill", tenant="acme", task="test.count", every=1,
                          kwargs={"key": "kill"}))
    procs = {n: start_scheduler(sched_redis.url, name=n, **env) for n in ("a", "b")}
    try:
        leader = wait_for(lambda: next((n for n, p in procs.items()
                                        if "took the lease" in p.log()), None), 10, "a leader")
        wait_for(lambda: len(fires(procs[leader], ident=s.ident)) >= 3, 15, "3 fires")
        killed_at = time.time()
        procs[leader].stop(signal.SIGKILL)
        standby = procs["b" if leader == "a" else "a"]
        wait_for(lambda: len([f for f in fires(standby, ident=s.ident)
                              if f.tick > killed_at + lease]) >= 3, 20, "3 fires after")
    finally:
        for p in procs.values():
            p.stop()
    logged = fires(*procs.values(), ident=s.ident)
    created = [f for f in logged if f.kind == "fire"]
    by_tick: dict[float, set[str]] = {}
    for f in logged:
        by_tick.setdefault(f.tick, set()).add(f.task_id)
    assert all(len(ids) == 1 for ids in by_tick.values()), "a tick has two tasks"
    ticks = sorted(by_tick)
    assert ticks == [ticks[0] + i for i in range(len(ticks))], "a tick was missed"
    assert tasks_of(r, "acme") == set().union(*by_tick.values())
    lags = [f.lag for f in created if f.lag is not None]
    worst = max(lags)
    print(f"\nfire lag after SIGKILL of the lease holder: worst {worst:.3f}s over "
          f"{len(lags)} fires (bound {lease + interval:.1f}s + a scan)")
    assert worst <= lease + interval + 0.5, worst
    assert worst >= 1.0, "the kill cost no lateness: the standby was not waiting on the lease"
    wait_for(lambda: counted(r, "kill") == len(ticks), 20, f"{len(ticks)} runs")
