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


def _lose(r: redis.Redis, queue: str, task_id: str) -> str:
    """Take the task's message off its list into nowhere; returns the list it was on."""
    for key in queue_keys(queue):
        for raw in r.lrange(key, 0, -1):
            if task_id.encode() in raw:
                r.lrem(key, 1, raw)
                return key
    raise AssertionError(f"no message of {task_id} in {queue}")


def _queued_in(r: redis.Redis, queue: str, task_id: str) -> list[str]:
    return [key for key in queue_keys(queue) for raw in r.lrange(key, 0, -1)
            if task_id.encode() in raw]


def _workflow(api: Api, body: dict) -> dict:
    r = api.post("/v1/workflows", json=body)
    assert r.status_code == 202, r.text
    return dict(api.get(f"/v1/workflows/{r.json()['id']}").json())


def test_lost_messages_of_a_dead_letter_retry_and_of_workflow_members_are_enqueued_again(
) -> None:
    """A dead letter's retry and a workflow's members (a first step, and a later step
    pushed when the one before ended) keep their message in the record as submit does,
    so a message a failover lost for them is enqueued again and the task runs."""
    server = RedisServer().start()
    env = {**ENV, "QUEUES": "default,parked"}
    api = scheduler = worker = None
    try:
        api = Api(server.url, workers=1, **env)
        scheduler = start_scheduler(server.url, **env)
        r = server.client()
        # a worker of the default queue only: a later step sent to "parked" stays queued
        worker = start_worker(server.url, name="rec1", concurrency=1,
                              **{**env, "QUEUES": "default"})
        dead = api.submit("test.fail_once", kwargs={"key": "dead-once"})["id"]
        api.wait_state(dead, "FAILURE", 30)
        later = _workflow(api, {"chain": [{"task": "test.echo", "kwargs": {"value": 1}},
                                          {"task": "test.echo", "queue": "parked"}]})
        pushed = later["steps"][1]["id"]  # pushed by the first step's ending
        wait_for(lambda: _queued_in(r, "parked", pushed), 30, "the later step pushed")
        worker.stop()
        worker = None

        retried = api.post(f"/v1/dead-letters/{dead}/retry")
        assert retried.status_code in (200, 202), retried.text
        first = _workflow(api, {"chain": [{"task": "test.echo", "kwargs": {"value": 2}},
                                          {"task": "test.echo"}]})["steps"][0]["id"]
        lost = {dead: "default", first: "default", pushed: "parked"}
        lists = {task_id: _lose(r, queue, task_id) for task_id, queue in lost.items()}
        for task_id, queue in lost.items():
            assert _queued_in(r, queue, task_id) == []
            assert r.hget(f"taskplane:task:{task_id}", "message") is not None

        for task_id, queue in lost.items():
            wait_for(lambda t=task_id, q=queue: _queued_in(r, q, t) == [lists[t]], 30,
                     f"the lost message of {task_id} enqueued again")
            assert f"requeued task={task_id}" in scheduler.log()

        worker = start_worker(server.url, name="rec2", concurrency=2, **env)
        for task_id in lost:
            api.wait_state(task_id, "SUCCESS", 30)
    finally:
        if worker is not None:
            worker.stop()
        if scheduler is not None:
            scheduler.stop()
        if api is not None:
            api.close()
        server.close()
