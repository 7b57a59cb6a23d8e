"""A message a failover lost while its record stays PENDING is enqueued again; one that
is queued or delivered is never pushed twice.

The loss is reproduced as a failover leaves it: the message taken off its list into
nowhere (what a BRPOP that reached only the dead master amounts to on the promoted
replica). A real scheduler process reconciles (``RECONCILE_INTERVAL`` 1 s), a real worker
then runs the task. The node-loss fault test (``test_faults.py``) covers it under load.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from taskplane.broker import UNACKED_KEY, queue_keys
from tests.support.services import (
    Api,
    Process,
    RedisServer,
    start_scheduler,
    start_worker,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

ENV = {"RECONCILE_INTERVAL": "1"}


@pytest.fixture
def stack() -> Iterator[tuple[RedisServer, Api, Process]]:
    server = RedisServer().start()
    api = scheduler = None
    try:
        api = Api(server.url, workers=1, **ENV)
        scheduler = start_scheduler(server.url, **ENV)
        yield server, api, scheduler
    finally:
        if scheduler is not None:
            scheduler.stop()
        if api is not None:
            api.close()
        server.close()


def _where(r: redis.Redis, task_id: str) -> list[str]:
    """Every list and unacked entry holding the task's message."""
    places = [key for key in queue_keys("default") for raw in r.lrange(key, 0, -1)
              if task_id.encode() in raw]
    places += ["unacked" for raw in r.hvals(UNACKED_KEY) if task_id.encode() in raw]
    return places


def test_a_lost_message_is_enqueued_again_and_runs(
        stack: tuple[RedisServer, Api, Process]) -> None:
    server, api, scheduler = stack
    r = server.client()
    lost = api.submit("test.echo", kwargs={"value": "lost"})["id"]
    queued = api.submit("test.echo", kwargs={"value": "queued"})["id"]
    held = api.submit("test.echo", kwargs={"value": "held"})["id"]
    at = _where(r, lost)  # the list of its priority
    assert len(at) == 1 and _where(r, queued) == at
    # ``lost``: off its list into nowhere; ``held``: delivered (kombu's unacked entry,
    # as a worker's consumer files it) and never acknowledged
    for task_id, into_unacked in ((lost, False), (held, True)):
        for key in queue_keys("default"):
            for raw in r.lrange(key, 0, -1):
                if task_id.encode() in raw:
                    r.lrem(key, 1, raw)
                    if into_unacked:
                        r.hset(UNACKED_KEY, f"tag-{task_id}",
                               json.dumps([json.loads(raw), "", "default"]))
    assert _where(r, lost) == [] and _where(r, held) == ["unacked"]
    assert r.hget(f"taskplane:task:{lost}", "state") == b"PENDING"

    wait_for(lambda: _where(r, lost) == at, 30, "the lost message enqueued again")
    assert "requeued task=" + lost in scheduler.log()
    # passes went on past the two sightings: nothing queued or delivered was pushed twice
    passes = time.time() + 2.5
    wait_for(lambda: time.time() > passes, 5, "two more reconcile passes")  # time is the condition
    assert _where(r, queued) == at
    assert _where(r, held) == ["unacked"]
    assert _where(r, lost) == at
    assert f"requeued task={queued}" not in scheduler.log()
    assert f"requeued task={held}" not in scheduler.log()

    r.delete(UNACKED_KEY)  # the held one is no worker's: let it go
    worker = start_worker(server.url, name="rec", concurrency=1, **ENV)
    try:
        for task_id in (lost, queued):
            wait_for(lambda t=task_id: api.get(f"/v1/tasks/{t}").json()["state"] == "SUCCESS",
                     30, f"{task_id} ran")
    finally:
        worker.stop()
