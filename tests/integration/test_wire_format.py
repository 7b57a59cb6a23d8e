"""Taskplane writes some of Celery's data itself: task messages (one atomic script with the
record) and result states (one guarded script). They must be what Celery's own
``send_task`` and result backend write, or workers and clients would read them differently."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, states

from taskplane import broker, lifecycle
from taskplane.celery_app import TenantCapReached, create_celery, submit
from taskplane.results import ResultBackend
from taskplane.settings import Settings
from tests.support.services import RedisServer

pytestmark = pytest.mark.integration

QUEUE = "format"
TASK = "long_running_task"  # a task with its own time limits, which the message carries
#: Fields that differ between any two sends (ids, clocks, the sending process), and the
#: argument reprs, which Taskplane redacts.
PER_SEND = {"id", "root_id", "correlation_id", "delivery_tag", "eta", "reply_to",
            broker.ENQUEUED_AT_HEADER, lifecycle.TENANT_HEADER, "argsrepr", "kwargsrepr"}


def make_app(redis: RedisServer, **env: str) -> Celery:
    return create_celery(Settings.from_env({"REDIS_URL": redis.url, "QUEUES": QUEUE, **env}))


@pytest.fixture
def app(isolated_redis: RedisServer) -> Iterator[Celery]:
    app = make_app(isolated_redis)
    yield app
    app.close()


def pop(app: Celery, key: str) -> dict[str, Any]:
    raw = app.backend.client.rpop(key)
    assert raw is not None, f"nothing on {key}"
    return json.loads(raw)  # type: ignore[no-any-return]


def scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "*" if k in PER_SEND else scrub(v) for k, v in value.items()}
    return value


def decoded_body(message: dict[str, Any]) -> Any:
    return json.loads(base64.b64decode(message["body"]))


@pytest.mark.parametrize("priority,countdown", [(5, None), (9, None), (0, 30.0)])
def test_submitted_message_matches_send_task(app: Celery, priority: int,
                                             countdown: float | None) -> None:
    args, kwargs = [1, {"deep": ["x"]}], {"value": "é", "n": 2}
    record = submit(app, tenant="t", name=TASK, args=args, kwargs=kwargs,
                    queue=QUEUE, priority=priority, countdown=countdown).record
    assert record is not None
    key = broker.queue_key(QUEUE, broker.transport_priority(priority))
    ours = pop(app, key)

    app.send_task(TASK, args=args, kwargs=kwargs, task_id="celery-sent",
                  queue=QUEUE, routing_key=QUEUE,
                  priority=broker.transport_priority(priority), countdown=countdown,
                  headers={broker.ENQUEUED_AT_HEADER: 0.0, lifecycle.TENANT_HEADER: "t"})
    theirs = pop(app, key)

    assert decoded_body(ours) == decoded_body(theirs) == [args, kwargs, {
        "callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    ours.pop("body"), theirs.pop("body")
    assert scrub(ours) == scrub(theirs)
    assert ours["headers"]["id"] == ours["properties"]["correlation_id"] == record.id
    assert ours["headers"]["argsrepr"] == "<2 redacted>"  # values stay out of Celery's logs
    if countdown:
        assert theirs["headers"]["eta"] is not None
        assert ours["headers"]["eta"].endswith("+00:00")
        assert record.eta is not None and record.eta == pytest.approx(record.submitted_at + 30)
    else:
        assert ours["headers"]["eta"] is None
    assert list(ours) == list(theirs)  # the same envelope, key for key


def test_record_and_message_are_written_together_or_not_at_all(
        isolated_redis: RedisServer) -> None:
    app = make_app(isolated_redis, MAX_OPEN_TASKS_PER_TENANT="1")
    life = app.runtime.lifecycle
    client = isolated_redis.client()
    first = submit(app, tenant="capped", name=TASK, args=[], kwargs={"data": "x"},
                   queue=QUEUE, priority=5)
    key = broker.queue_key(QUEUE, broker.transport_priority(5))
    assert client.llen(key) == 1
    with pytest.raises(TenantCapReached):
        submit(app, tenant="capped", name=TASK, args=[], kwargs={"data": "x"},
               queue=QUEUE, priority=5)
    assert client.llen(key) == 1  # the refused task left no message behind
    assert life.read(first.task_id, with_result=False)[0] is not None
    app.close()


def test_result_writes_are_celerys_and_never_overwrite_success(app: Celery) -> None:
    from celery.backends.redis import RedisBackend

    ours = app.backend
    assert isinstance(ours, ResultBackend)
    client = app.backend.client
    plain = RedisBackend(app=app, url=app.conf.result_backend.split("+", 1)[1])
    plain.store_result("plain", {"x": [1, "é"]}, states.SUCCESS)
    ours.store_result("ours", {"x": [1, "é"]}, states.SUCCESS)
    stored = {name: json.loads(client.get(f"celery-task-meta-{name}")) for name in ("plain", "ours")}
    for meta in stored.values():
        meta.pop("task_id"), meta.pop("date_done")
    assert stored["ours"] == stored["plain"]
    assert client.ttl("celery-task-meta-ours") == client.ttl("celery-task-meta-plain") > 0

    for late in (states.RETRY, states.STARTED, states.REVOKED, states.FAILURE):
        ours.store_result("ours", None, late)
        assert ours.get_task_meta("ours", cache=False)["status"] == states.SUCCESS, late
    ours.store_result("other", None, states.STARTED)
    ours.store_result("other", None, states.RETRY)  # a state that does not end may be replaced
    assert ours.get_task_meta("other", cache=False)["status"] == states.RETRY
    ours.store_result("other", None, states.FAILURE)  # ...but a final one stays
    ours.store_result("other", None, states.SUCCESS)
    assert ours.get_task_meta("other", cache=False)["status"] == states.FAILURE


def test_a_run_start_stores_started_unless_revoked(app: Celery) -> None:
    from celery.app.task import Context

    backend, life = app.backend, app.runtime.lifecycle
    running = submit(app, tenant="t", name=TASK, args=[], kwargs={"data": "x"}, queue=QUEUE,
                     priority=5)
    revoked = submit(app, tenant="t", name=TASK, args=[], kwargs={"data": "x"}, queue=QUEUE,
                     priority=5)
    assert life.revoke(revoked.task_id, "t", terminate=False).outcome == "revoked"
    verdicts = {}
    for accepted in (running, revoked):
        state = backend.started_state(Context(id=accepted.task_id, hostname="w@h"), pid=42)
        verdicts[accepted.task_id] = life.start(accepted.task_id, retries=0, started=state).verdict
    assert verdicts == {running.task_id: "run", revoked.task_id: "REVOKED"}
    meta = backend.get_task_meta(running.task_id, cache=False)
    assert meta["status"] == states.STARTED and meta["result"] == {"pid": 42, "hostname": "w@h"}
    assert backend.get_task_meta(revoked.task_id, cache=False)["status"] == states.PENDING
    assert life.read(running.task_id, with_result=False)[0].started_at is not None
    # a task sent around the API (no record) still shows STARTED
    state = backend.started_state(Context(id="no-record", hostname="w@h"), pid=42)
    assert life.start("no-record", retries=0, started=state).verdict == "unknown"
    assert backend.get_task_meta("no-record", cache=False)["status"] == states.STARTED
