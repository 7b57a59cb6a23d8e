"""A Redis and a worker of this package's own: schedules fire into them, and the tests count
each task's runs by its side effect (``test.count``)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import pytest
import redis

from taskplane.lifecycle import schedule_state_key, schedules_key
from taskplane.schedules import Schedule
from tests.support.services import Process, RedisServer, start_worker


@pytest.fixture(scope="package")
def sched_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture(scope="package")
def sched_worker(sched_redis: RedisServer) -> Iterator[Process]:
    proc = start_worker(sched_redis.url, name="sched", concurrency=4)
    yield proc
    proc.stop()


@pytest.fixture
def r(sched_redis: RedisServer) -> redis.Redis:
    """The package's Redis, emptied of schedules, their state and the test counters."""
    client = sched_redis.client()
    for pattern in ("taskplane:schedule*", "test:count:*"):
        for key in client.scan_iter(pattern):
            client.delete(key)
    return client


def store(client: redis.Redis, schedule: Schedule) -> Schedule:
    """Put a schedule straight into the store, created now (as the API does)."""
    schedule = Schedule(**{**schedule.__dict__, "created_at": time.time()})
    client.hset(schedules_key(), schedule.ident, schedule.to_json())
    return schedule


def state(client: redis.Redis, schedule: Schedule) -> dict[str, str]:
    raw = client.hgetall(schedule_state_key(schedule.ident))
    return {k.decode(): v.decode() for k, v in raw.items()}


def counted(client: redis.Redis, key: str) -> int:
    return int(client.get(f"test:count:{key}") or 0)


_LINE = re.compile(r"^(\S+ \S+) INFO taskplane.scheduler: (fire|replay) schedule=(\S+) "
                   r"tick=(\S+) task=(\S+)(?: lag=(\S+))?", re.M)


@dataclass(frozen=True)
class Fire:
    kind: str  # fire (created the task) | replay (found the tick's task)
    ident: str
    tick: float
    task_id: str
    lag: float | None


def fires(*procs: Process, ident: str | None = None) -> list[Fire]:
    """Every fire and replay the schedulers logged, in tick order."""
    out = []
    for proc in procs:
        for m in _LINE.finditer(proc.log()):
            if ident is None or m.group(3) == ident:
                out.append(Fire(m.group(2), m.group(3), datetime.fromisoformat(m.group(4)).timestamp(),
                                m.group(5), float(m.group(6)) if m.group(6) else None))
    return sorted(out, key=lambda f: f.tick)
