"""Real ``taskplane scheduler`` processes firing into a real Redis and a real worker: each
tick fires exactly once however many replicas run and whichever one dies."""

from __future__ import annotations

import itertools
import signal
import time

import pytest
import redis

from taskplane.schedules import Schedule
from tests.schedules.conftest import counted, fires, state, store
from tests.support.scrape import scrape, value
from tests.support.services import (
    Process,
    RedisServer,
    free_port,
    start_scheduler,
    wait_for,
)


def tasks_of(client: redis.Redis, tenant: str) -> set[str]:
    return {m.decode() for m in client.zrangebyscore(f"taskplane:tasks:{tenant}", "(-inf", "+inf")}


def test_two_schedulers_without_a_lease_fire_each_tick_once(
        sched_redis: RedisServer, sched_worker: Process, r: redis.Redis) -> None:
    """Worst case for exactly-once: both replicas scan every tick (no lease), so every tick
    is submitted twice at about the same moment; the Idempotency-Key makes one task."""
    env = {"SCHEDULER_LEASE_TTL": "0",
           "TASK_MODULES": "tests.support.tasks,tests.support.schedules"}
    # scan periods that drift against each other, so each replica is first on some ticks
    earlier = tasks_of(r, "system")
    procs = [start_scheduler(sched_redis.url, name=n, SCHEDULER_INTERVAL=i, **env)
             for n, i in (("a", "0.2"), ("b", "0.13"))]
    ident = "system/declared-every-second"
    try:
        # Which replica scans first after a tick is chance, and a loaded machine can favour
        # one for a long stretch: poll until each has fired (or replayed) one, rather than
        # hoping 8 ticks split between them.
        wait_for(lambda: counted(r, "declared-every-second") >= 8
                 and all(fires(p, ident=ident) for p in procs), 150,
                 "8 fires, and one by each replica")
    finally:
        for p in procs:
            p.stop()
    logged = fires(*procs, ident=ident)
    created = [f for f in logged if f.kind == "fire"]
    ticks = sorted({f.tick for f in created})
    assert len(ticks) == len(created), "a tick created two tasks"
    assert ticks == [ticks[0] + i for i in range(len(ticks))], "a tick was skipped"
    assert all(fires(p, ident=created[0].ident) for p in procs), \
        "one replica fired every tick: the replicas never competed"
    replayed = [f for f in logged if f.kind == "replay"]
    assert {f.task_id for f in replayed} <= {f.task_id for f in created}
    assert tasks_of(r, "system") - earlier == {f.task_id for f in created}
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
    earlier = tasks_of(r, "acme")
    procs = {n: start_scheduler(sched_redis.url, name=n, **env) for n in ("a", "b")}
    try:
        leader = wait_for(lambda: next((n for n, p in procs.items()
                                        if "took the lease" in p.log()), None), 10, "a leader")
        wait_for(lambda: len(fires(procs[leader], ident=s.ident)) >= 3, 15, "3 fires")
        # the worst moment: just before a tick, so the tick falls inside the whole outage
        wait_for(lambda: time.time() % 1 > 0.9, 2, "the end of a second", interval=0.01)
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
    assert tasks_of(r, "acme") - earlier == set().union(*by_tick.values())
    lags = [f.lag for f in created if f.lag is not None]
    worst = max(lags)
    print(f"\nfire lag after SIGKILL of the lease holder: worst {worst:.3f}s over "
          f"{len(lags)} fires (bound {lease + interval:.1f}s + a scan)")
    assert worst <= lease + interval + 0.5, worst
    assert worst >= lease - 0.5, "the kill cost little lateness: was the standby waiting?"
    wait_for(lambda: counted(r, "kill") == len(ticks), 20, f"{len(ticks)} runs")


def test_overlap_forbid_skips_ticks_while_the_previous_run_is_unfinished(
        sched_redis: RedisServer, sched_worker: Process, r: redis.Redis) -> None:
    """A 2.5 s task every second: ticks falling inside a run are skipped and counted, and no
    two runs of the schedule overlap."""
    s = store(r, Schedule(name="forbid", tenant="acme", task="test.slow", every=1,
                          kwargs={"seconds": 2.5, "key": "forbid"}, overlap="forbid"))
    port = free_port()
    proc = start_scheduler(sched_redis.url, name="f", SCHEDULER_INTERVAL="0.2",
                           SCHEDULER_METRICS_PORT=str(port))
    try:
        wait_for(lambda: int(state(r, s).get("skipped", 0)) >= 4
                 and int(state(r, s).get("fires", 0)) >= 2, 20, "fires and skips")
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        st = state(r, s)
    finally:
        proc.stop()
    # the metrics say what the state says (read in the same instant, between two scans)
    assert value(samples, "taskplane_schedule_skipped_total", schedule=s.ident) == \
        pytest.approx(int(st["skipped"]), abs=1)
    assert value(samples, "taskplane_schedule_fires_total", schedule=s.ident) == \
        pytest.approx(int(st["fires"]), abs=1)
    assert value(samples, "taskplane_scheduler_leading") == 1
    assert 0 <= value(samples, "taskplane_schedule_fire_lag_seconds", schedule=s.ident) < 1
    assert value(samples, "taskplane_schedule_next_fire_timestamp_seconds",
                 schedule=s.ident) > float(st["last_tick"])
    st = state(r, s)
    assert int(st["skipped"]) == proc.log().count("skip schedule=acme/forbid")
    created = [f.task_id for f in fires(proc, ident=s.ident) if f.kind == "fire"]
    assert len(created) == int(st["fires"])
    wait_for(lambda: r.hget(f"taskplane:task:{created[-1]}", "state") == b"SUCCESS", 10,
             "the last run ends")
    records = [r.hgetall(f"taskplane:task:{t}") for t in created]
    for earlier, later in itertools.pairwise(records):
        assert float(later[b"submitted_at"]) >= float(earlier[b"finished_at"]), \
            "a run was fired while the previous one ran"
    assert counted(r, "forbid") == len(created)


def test_overlap_replace_revokes_the_running_task_first(
        sched_redis: RedisServer, sched_worker: Process, r: redis.Redis) -> None:
    s = store(r, Schedule(name="replace", tenant="acme", task="test.slow", every=2,
                          kwargs={"seconds": 60, "key": "replace"}, overlap="replace"))
    proc = start_scheduler(sched_redis.url, name="r", SCHEDULER_INTERVAL="0.2")
    try:
        wait_for(lambda: int(state(r, s).get("fires", 0)) >= 3, 20, "three fires")
    finally:
        proc.stop()
    created = [f.task_id for f in fires(proc, ident=s.ident) if f.kind == "fire"]
    for task_id in created[:-1]:
        wait_for(lambda t=task_id: r.hget(f"taskplane:task:{t}", "state") == b"REVOKED", 10,
                 f"{task_id} revoked")
    assert r.hget(f"taskplane:task:{created[-1]}", "state") != b"REVOKED"


def test_catch_up_after_every_scheduler_was_stopped(
        sched_redis: RedisServer, sched_worker: Process, r: redis.Redis) -> None:
    """The only scheduler stops for about five ticks, then comes back: ``none`` fires none
    of the missed ticks, ``latest`` the newest, ``all`` each one."""
    env = {"SCHEDULER_INTERVAL": "0.2", "SCHEDULER_LEASE_TTL": "0.5",
           "SCHEDULER_MISFIRE_GRACE": "1"}
    sched = {p: store(r, Schedule(name=f"cu-{p}", tenant="acme", task="test.count", every=1,
                                  kwargs={"key": f"cu-{p}"}, catch_up=p))
             for p in ("none", "latest", "all")}
    first = start_scheduler(sched_redis.url, name="c1", **env)
    try:
        wait_for(lambda: all(int(state(r, s).get("fires", 0)) >= 2 for s in sched.values()),
                 15, "two fires each")
    finally:
        first.stop()
    stopped = time.time()
    wait_for(lambda: time.time() > stopped + 5, 10, "five ticks without a scheduler")
    restarted = time.time()
    second = start_scheduler(sched_redis.url, name="c2", **env)
    try:
        wait_for(lambda: all(float(state(r, s).get("last_tick", 0)) >= restarted + 2
                             for s in sched.values()), 15, "two ticks after the restart")
    finally:
        second.stop()
    # the ticks fired late, beyond the grace: those the catch-up policy chose
    gap = {p: [f for f in fires(second, ident=s.ident) if f.lag is not None and f.lag > 1]
           for p, s in sched.items()}
    missed = {p: int(state(r, s).get("missed", 0)) for p, s in sched.items()}
    assert gap["none"] == [] and missed["none"] >= 4, (gap["none"], missed)
    assert len(gap["latest"]) == 1 and missed["latest"] >= 3, (gap["latest"], missed)
    assert len(gap["all"]) >= 4 and missed["all"] == 0, (gap["all"], missed)
    for p, s in sched.items():  # nothing fired twice, across both processes
        ticks = [f.tick for f in fires(first, second, ident=s.ident)]
        assert len(ticks) == len(set(ticks)), p
    all_ticks = [f.tick for f in fires(first, second, ident=sched["all"].ident)]
    assert all_ticks == [all_ticks[0] + i for i in range(len(all_ticks))], "all skipped one"
    wait_for(lambda: counted(r, "cu-all") == len(all_ticks), 15, "every run of cu-all")
