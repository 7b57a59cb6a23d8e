"""A submission rides through a failover (``SUBMIT_RIDE_THROUGH``): tried again until an
answer comes or the time runs out, never writing its task twice, and never answering
"nothing was accepted" for a try that may have been applied.

Against a private redis-server that stalls (``DEBUG SLEEP``): a try sent into the stall
times out on the client while Redis still holds it, and runs it when the stall ends, which
is a reply lost after the write, the seam this guards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from taskplane import broker
from taskplane.celery_app import submit
from taskplane.lifecycle import OutcomeUnknown, record_key
from taskplane.lifecycle.transitions import RideThrough
from tests.lifecycle.conftest import QUEUE, TASK, TENANT, accept, make_app
from tests.support.services import RedisServer


def queued(client: redis.Redis) -> int:
    return sum(client.llen(key) for key in broker.queue_keys(QUEUE))


@pytest.fixture
def stalling() -> Iterator[RedisServer]:
    server = RedisServer(debug_commands=True).start()
    yield server
    server.close()


def test_a_try_whose_reply_was_lost_is_found_not_written_twice(stalling: RedisServer) -> None:
    app = make_app(stalling, REDIS_TIMEOUT="0.3", SUBMIT_RIDE_THROUGH="5")
    try:
        accept(app)  # scripts loaded, a connection open
        stall = stalling.stall(1)
        # sent into the stall: the try times out while Redis holds it, and runs it when the
        # stall ends; the next try finds the task and it is answered as created
        accepted = submit(app, tenant=TENANT, name=TASK, args=[], kwargs={"value": 1},
                          queue=QUEUE, priority=5)
        assert accepted.record is not None  # created, not a replay of another request
        task_id = accepted.task_id
        stall.close()
        client = stalling.client()
        assert client.exists(record_key(task_id))
        assert queued(client) == 2  # the first task's message, and this one's once
    finally:
        app.close()


def test_out_of_time_a_try_that_may_have_been_applied_is_an_unknown_outcome(
        stalling: RedisServer) -> None:
    app = make_app(stalling, REDIS_TIMEOUT="0.3", SUBMIT_RIDE_THROUGH="0.5")
    try:
        accept(app)
        stall = stalling.stall(2)
        with pytest.raises(OutcomeUnknown):
            accept(app)
        assert stall.recv(16).startswith(b"+OK")  # the stall is over
        assert queued(stalling.client()) == 2  # it was applied after all
    finally:
        app.close()


def test_a_redis_that_never_got_the_try_is_a_connection_error_after_the_ride() -> None:
    server = RedisServer().start()
    app = make_app(server, REDIS_TIMEOUT="0.3", SUBMIT_RIDE_THROUGH="0.6")
    try:
        accept(app)
        server.stop()
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError):
            accept(app)  # refused at connect each time: nothing was accepted
        assert time.monotonic() - started >= 0.4  # it rode, and gave up in time
    finally:
        app.close()
        server.close()


def test_the_ride_keeps_the_first_unknown_outcome_over_later_refusals() -> None:
    tries: list[int] = []

    def attempt() -> str:
        tries.append(1)
        if len(tries) == 1:
            raise OutcomeUnknown(TimeoutError())  # may have been applied
        raise redis.ConnectionError("refused")  # never sent

    with pytest.raises(OutcomeUnknown):
        RideThrough(0.2).run(attempt)
    assert len(tries) >= 3
    assert RideThrough(1).run(lambda: "answer") == "answer"
