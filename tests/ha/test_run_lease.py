"""No second run while the first worker lives, behind Sentinel, on real processes.

A failover can leave a running task's message queued on the promoted replica (the first
worker's ``BRPOP`` reached only the dead master). That is reproduced here as it looks on
the new master: the running task's message pushed back onto its list while its worker
runs it. A second worker takes it; ``start`` finds the first run's lease live and the
worker sends the delivery again for later (``tasks/base.py``). Then either the first run
ends and the postponed delivery is dropped, or the first worker dies and it runs.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
import redis

from taskplane.broker import UNACKED_KEY, queue_keys
from tests.chaos.harness import CHAOS_ENV, Ledger
from tests.support.sentinel import SentinelSet
from tests.support.services import Api, Process, RedisServer, start_worker, wait_for

pytestmark = pytest.mark.timeout(120)

#: The first run's length: long enough to deliver its message again while it runs.
SECONDS = 4.0


class Stack:
    def __init__(self, servers: SentinelSet) -> None:
        self.servers = servers
        self.ledger_server = RedisServer().start()
        self.ledger = Ledger(self.ledger_server)
        self.env = {**CHAOS_ENV, "CHAOS_LEDGER_URL": self.ledger_server.url,
                    **servers.env()}
        self.workers: list[Process] = []
        self.api = Api(servers.url, workers=1, threads=2, **self.env)

    def worker(self, name: str) -> Process:
        # one slot, prefetch 1: a worker running a task takes no other message meanwhile
        proc = start_worker(self.servers.url, name=name, concurrency=1, **self.env)
        self.workers.append(proc)
        return proc

    def master(self) -> redis.Redis:
        return self.servers.master().client()

    def close(self) -> None:
        for proc in self.workers:
            proc.stop(timeout=15)
        self.api.close()
        self.ledger_server.close()


@pytest.fixture
def stack(sentinel_set: SentinelSet) -> Iterator[Stack]:
    s = Stack(sentinel_set)
    try:
        yield s
    finally:
        s.close()


def _queued(master: redis.Redis, task_id: str) -> tuple[str, bytes] | None:
    for key in queue_keys("default"):
        for raw in master.lrange(key, 0, -1):
            if task_id.encode() in raw:
                return key, raw
    return None


def _anywhere(master: redis.Redis, task_id: str) -> bool:
    """Whether the broker holds a message of the task: queued, or delivered (unacked)."""
    return _queued(master, task_id) is not None or any(
        task_id.encode() in raw for raw in master.hvals(UNACKED_KEY))


def _running_twice(stack: Stack, key: str) -> tuple[str, Process]:
    """Submit a long task, let the first worker start it, then hand its message to a
    second worker as a failover would: returns the task id and the first worker."""
    task_id = stack.api.submit("chaos.work", kwargs={"key": key, "seconds": SECONDS})["id"]
    master = stack.master()
    at = _queued(master, task_id)  # no worker yet: the message as submit pushed it
    assert at is not None
    first = stack.worker("first")
    wait_for(lambda: stack.ledger.started().get(key) == 1, 30, "the first run started")
    master.lpush(*at)  # the promoted replica's copy, still queued
    second = stack.worker("second")
    second.wait_log("delivery postponed", 30)
    assert stack.ledger.started().get(key) == 1  # refused: the first run's lease is live
    return task_id, first


def test_a_second_delivery_waits_and_is_dropped_once_the_first_run_ends(stack: Stack) -> None:
    task_id, _first = _running_twice(stack, "ends")
    stack.api.wait_state(task_id, "SUCCESS", 30)
    # the postponed delivery comes due, finds the task ended and goes: nothing left
    wait_for(lambda: not _anywhere(stack.master(), task_id), 30, "the postponed copy dropped")
    assert stack.ledger.started().get("ends") == 1
    assert stack.ledger.done().get("ends") == 1


def test_a_second_delivery_runs_once_the_first_worker_dies(stack: Stack) -> None:
    task_id, first = _running_twice(stack, "dies")
    first.stop(signal.SIGKILL)  # the whole worker: main process and pool
    assert stack.ledger.done().get("dies") is None  # killed mid-run
    # its lease lapses; the postponed delivery (or the dead worker's, handed back) runs it
    wait_for(lambda: stack.ledger.done().get("dies") == 1, 40, "the task run again")
    stack.api.wait_state(task_id, "SUCCESS", 10)
    wait_for(lambda: not _anywhere(stack.master(), task_id), 30, "every copy consumed")
    assert stack.ledger.started().get("dies") == 2  # the dead run and one more, not three
    assert stack.ledger.done().get("dies") == 1
