"""One scheduler scan at a time, in this process, against the package's real Redis: the
catch-up policies, the stale-read race between replicas and the fire state, at chosen
instants (``now`` is an argument), so each case is exact and takes milliseconds."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from taskplane.celery_app import create_celery
from taskplane.lifecycle import schedule_state_key
from taskplane.runtime import TaskplaneCelery
from taskplane.scheduler import Scheduler
from taskplane.schedules import Schedule, ScheduleStore
from taskplane.settings import Settings
from tests.schedules.conftest import state
from tests.support.services import RedisServer

PARK = "sched-parked"  # nothing consumes it: the tasks stay queued
T0 = 1_800_000_000.0  # a whole minute


@pytest.fixture
def app(sched_redis: RedisServer, r: redis.Redis) -> Iterator[TaskplaneCelery]:
    app = create_celery(Settings.from_env({
        "REDIS_URL": sched_redis.url, "TASK_MODULES": "tests.support.tasks", "QUEUES": PARK,
        "SCHEDULER_MISFIRE_GRACE": "10", "SCHEDULER_CATCH_UP_WINDOW": "100",
        "SCHEDULER_MAX_CATCH_UP": "5"}))
    yield app
    app.close()


def every(name: str, catch_up: str = "none", period: int = 1, **extra: object) -> Schedule:
    return Schedule(name=name, tenant="acme", task="test.echo", kwargs={"value": name},
                    every=period, queue=PARK, catch_up=catch_up, created_at=T0,
                    **extra)  # type: ignore[arg-type]


def scan(app: TaskplaneCelery, s: Schedule, now: float) -> tuple[list[float], int, int]:
    stored(app, s)
    sched = Scheduler(app)
    out = sched.handle(s, app.runtime.lifecycle.schedule_state(s.ident), now)
    return [t for t, _ in out.fired], out.missed, out.skipped


def stored(app: TaskplaneCelery, s: Schedule) -> Schedule:
    """``s`` as the API stores it: the scheduler advances only schedules that exist."""
    if s.source != "code":
        app.runtime.lifecycle.schedule_create(s.ident, s.to_json(), s.tenant)
    return s


def test_on_time_ticks_fire_in_order_and_the_state_records_them(app: TaskplaneCelery,
                                                                 r: redis.Redis) -> None:
    s = every("on-time")
    assert scan(app, s, T0 + 3.5) == ([T0 + 1, T0 + 2, T0 + 3], 0, 0)
    assert scan(app, s, T0 + 3.9) == ([], 0, 0)  # nothing new due
    st = state(r, s)
    assert float(st["last_tick"]) == T0 + 3 and st["fires"] == "3"
    assert r.hget(f"taskplane:task:{st['last_task_id']}", "tenant") == b"acme"


@pytest.mark.parametrize(("policy", "fired", "missed"), [
    # back after 60 s away: ticks 1..50 are more than the 10 s grace late
    ("none", list(range(51, 61)), 50),
    ("latest", list(range(50, 61)), 49),  # the newest missed one, then those on time
    ("all", list(range(46, 61)), 45),  # the newest SCHEDULER_MAX_CATCH_UP (5) of them
])
def test_catch_up_after_every_scheduler_was_away(app: TaskplaneCelery, r: redis.Redis,
                                                 policy: str, fired: list[int],
                                                 missed: int) -> None:
    s = every(f"away-{policy}", policy)
    got, missed_now, _ = scan(app, s, T0 + 60.5)
    assert got == [T0 + i for i in fired] and missed_now == missed
    assert state(r, s)["missed"] == str(missed)


@pytest.mark.parametrize(("policy", "fired"), [("none", []), ("latest", [300]),
                                               ("all", [220, 240, 260, 280, 300])])
def test_catch_up_of_a_slow_schedule_with_no_tick_on_time(app: TaskplaneCelery, policy: str,
                                                          fired: list[int]) -> None:
    s = every(f"slow-{policy}", policy, period=20)
    got, missed, _ = scan(app, s, T0 + 315)  # ticks 20..300, the newest 15 s late (grace 10)
    assert got == [T0 + i for i in fired]
    assert missed == 15 - len(fired)


def test_catch_up_never_reaches_past_its_window(app: TaskplaneCelery) -> None:
    s = every("window-all", "all", period=10)
    got, missed, _ = scan(app, s, T0 + 1000.5)  # 1000 on time; window 100 s: 910..990
    assert got == [T0 + i for i in (950, 960, 970, 980, 990, 1000)] and missed == 94


def test_two_replicas_that_read_the_same_state_make_one_task_per_tick(
        app: TaskplaneCelery, r: redis.Redis) -> None:
    """The race the lease does not prevent: both replicas read ``last_tick`` before either
    advanced it, so both submit the same ticks. The fire's Idempotency-Key makes one task;
    the state's compare-and-set lets one replica record it."""
    s = stored(app, every("race"))
    life = app.runtime.lifecycle
    read = life.schedule_state(s.ident)
    first, second = Scheduler(app), Scheduler(app)
    a = first.handle(s, read, T0 + 2.5)
    b = second.handle(s, read, T0 + 2.5)
    assert [t for t, _ in a.fired] == [T0 + 1, T0 + 2] and b.fired == []
    assert b.replayed == a.fired  # the same ticks, the same tasks
    assert (a.advanced, b.advanced) == (True, False)
    assert state(r, s)["fires"] == "2"


def test_a_code_schedule_starts_at_first_sight(app: TaskplaneCelery, r: redis.Redis) -> None:
    s = Schedule(name="code", task="test.echo", kwargs={"value": 1}, every=1, queue=PARK,
                 source="code")
    assert scan(app, s, T0 + 0.5) == ([], 0, 0)
    assert scan(app, s, T0 + 2.5) == ([T0 + 1, T0 + 2], 0, 0)


def test_the_scan_lease_has_one_holder_until_released_or_lapsed(app: TaskplaneCelery,
                                                                r: redis.Redis) -> None:
    life = app.runtime.lifecycle
    r.delete("taskplane:scheduler-lease")
    assert life.scheduler_lease("a", 5) and not life.scheduler_lease("b", 5)
    assert life.scheduler_lease("a", 5)  # a renewal
    life.scheduler_release("b")  # not b's to release
    assert not life.scheduler_lease("b", 5)
    life.scheduler_release("a")
    assert life.scheduler_lease("b", 0.05)
    ttl_ms = r.pttl("taskplane:scheduler-lease")
    assert 0 < ttl_ms <= 50  # it lapses by itself: a SIGKILLed holder frees it


def test_advance_moves_only_from_the_state_read_and_never_back(app: TaskplaneCelery,
                                                               r: redis.Redis) -> None:
    life = app.runtime.lifecycle
    s = stored(app, every("advance"))
    assert life.schedule_advance(s.ident, "", T0, skipped=1)
    read = state(r, s)["last_tick"]
    assert not life.schedule_advance(s.ident, "", T0 + 5, missed=3)  # a stale reader
    assert not life.schedule_advance(s.ident, read, T0 - 5)  # backwards
    assert life.schedule_advance(s.ident, read, T0 + 5, task_id="t1", fired_at=T0 + 5.2,
                                 fires=1)
    st = state(r, s)
    assert (st["skipped"], st["missed"], st["fires"], st["last_task_id"]) == ("1", "0", "1", "t1")
    assert float(st["last_tick"]) == T0 + 5


def test_a_schedule_deleted_while_a_replica_advances_it_leaves_no_state(
        app: TaskplaneCelery, r: redis.Redis) -> None:
    """The replica read the schedule and its state, the API deleted it, then the replica
    fired and advanced: the advance must not bring the deleted schedule's state back."""
    life = app.runtime.lifecycle
    s = stored(app, every("deleted"))
    assert scan(app, s, T0 + 1.5)[0] == [T0 + 1]
    read = life.schedule_state(s.ident)
    assert read and r.exists(schedule_state_key(s.ident))
    assert ScheduleStore(life).delete(s.tenant, s.name)  # the API's DELETE, mid-scan
    assert not r.exists(schedule_state_key(s.ident))
    out = Scheduler(app).handle(s, read, T0 + 2.5)
    assert not out.advanced
    assert not r.exists(schedule_state_key(s.ident))
    assert not life.schedule_advance(s.ident, "", T0 + 3, fires=1, stored=True)
    assert not r.exists(schedule_state_key(s.ident))
    assert not ScheduleStore(life).replace(s)  # a PATCH that read it before the DELETE
    assert ScheduleStore(life).get(s.tenant, s.name) is None


def test_a_code_schedule_advances_without_a_stored_definition(app: TaskplaneCelery,
                                                               r: redis.Redis) -> None:
    life = app.runtime.lifecycle
    assert life.schedule_advance("system/from-code", "", T0)
    assert r.hget(schedule_state_key("system/from-code"), "last_tick") == repr(T0).encode()


def test_the_schedule_cap_is_per_tenant_and_atomic(app: TaskplaneCelery, r: redis.Redis) -> None:
    """Eight concurrent creations under a cap of three: three stored, five refused; the
    cap is the tenant's alone, a taken name is ``exists`` first, and a delete frees room."""
    store = ScheduleStore(app.runtime.lifecycle)

    def create(n: int) -> str:
        return store.create(Schedule(name=f"cap-{n}", tenant="capped", task="test.echo",
                                     kwargs={"value": n}, every=60, queue=PARK), cap=3)

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(create, range(8)))
    assert sorted(outcomes) == ["cap_reached"] * 5 + ["created"] * 3
    assert len(store.of_tenant("capped")) == 3
    made = store.of_tenant("capped")[0]
    assert store.create(made, cap=3) == "exists"
    assert store.create(every("another-tenant"), cap=3) == "created"
    assert store.delete("capped", made.name)
    assert create(99) == "created" and create(100) == "cap_reached"
    assert store.create(every("no-cap"), cap=0) == "created"  # 0: no cap
