"""The workflow scripts against a real Redis: submission is all or nothing, each member's
ending is counted once in the script that ends it, the stage's last ending pushes the
next stage (with the outcome spliced in) exactly once, a failure stops the workflow, and
retrying the failure from the dead letters resumes it."""

from __future__ import annotations

import json
import threading
from typing import Any

import redis
from flask import Flask
from flask.testing import FlaskClient

from taskplane.lifecycle import Lifecycle, dead_letter
from tests.workflows.conftest import queued

TENANT = "local"


def submit(http: FlaskClient, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    answer = http.post("/v1/workflows", json=body, headers=headers)
    assert answer.status_code == 202, answer.json
    assert answer.headers["Location"] == f"/v1/workflows/{answer.json['id']}"
    return http.get(answer.headers["Location"]).json  # type: ignore[no-any-return]


def succeed(app: Flask, life: Lifecycle, task_id: str, value: Any) -> str:
    backend = app.extensions["taskplane"].celery.backend
    assert life.start(task_id, 0).runs
    return life.finish(task_id, "SUCCESS", tenant=TENANT,
                       result=backend.encode_state(task_id, value, "SUCCESS")).outcome


def fail(app: Flask, life: Lifecycle, task_id: str) -> str:
    backend = app.extensions["taskplane"].celery.backend
    assert life.start(task_id, 0).runs
    exc = ValueError("boom")
    letter = dead_letter(task_id, "test.echo", exc, [], {"value": 1}, ())
    return life.fail(task_id, letter, tenant=TENANT,
                     result=backend.encode_state(task_id, backend.encode_result(exc, "FAILURE"),
                                                 "FAILURE")).outcome


def ids_of(found: dict[str, Any], part: str) -> list[str]:
    return [m["id"] for m in found[part]]


def kept(client: redis.Redis, task_id: str) -> bytes | None:
    """The message a member's record keeps until it starts (reconcile.lua pushes it again
    if a failover loses it), checked to be the one waiting on the list it names."""
    message, where = client.hmget(f"taskplane:task:{task_id}", "message", "list")
    if message is not None:
        assert where is not None and message in client.lrange(where, 0, -1)
    return message  # type: ignore[no-any-return]


def test_a_chain_passes_each_result_on_and_holds_later_steps(
        http: FlaskClient, flask_app: Flask, life: Lifecycle, client: redis.Redis) -> None:
    found = submit(http, {"chain": [{"task": "test.echo", "kwargs": {"value": 1}},
                                    {"task": "test.echo"}, {"task": "test.echo", "args": []}]})
    steps = ids_of(found, "steps")
    assert [m["headers"]["id"] for m in queued(client)] == steps[:1]
    assert kept(client, steps[0]) is not None and kept(client, steps[1]) is None  # held
    # an empty list survives the splice (decoding and encoding in Lua would make it {})
    assert succeed(flask_app, life, steps[0], {"a": [], "b": "x\"y"}) == "done"
    (message,) = [m for m in queued(client) if m["headers"]["id"] == steps[1]]
    assert kept(client, steps[1]) is not None  # pushed: kept as a submitted task's is
    assert message["decoded"][0] == [{"a": [], "b": "x\"y"}]
    assert message["decoded"][1] == {}
    assert message["headers"]["taskplane_enqueued_at"] > 0
    assert succeed(flask_app, life, steps[1], [1, 2]) == "done"
    (message,) = [m for m in queued(client) if m["headers"]["id"] == steps[2]]
    assert message["decoded"][0] == [[1, 2]]
    state = http.get(f"/v1/workflows/{found['id']}").json
    assert (state["state"], state["progress"], state["counts"]["SUCCESS"]) == ("RUNNING", 66, 2)
    assert succeed(flask_app, life, steps[2], "end") == "done"
    state = http.get(f"/v1/workflows/{found['id']}").json
    assert state["state"] == "SUCCESS" and state["progress"] == 100
    assert [s["state"] for s in state["steps"]] == ["SUCCESS"] * 3
    assert state["finished_at"] is not None


def test_a_groups_callback_is_pushed_once_with_results_in_member_order(
        http: FlaskClient, flask_app: Flask, life: Lifecycle, client: redis.Redis) -> None:
    found = submit(http, {"group": [{"task": "test.echo", "kwargs": {"value": i}}
                                    for i in range(4)], "then": {"task": "test.echo"}})
    members = ids_of(found, "members")
    callback = found["callback"]
    assert callback == found["then"][0]["id"]
    assert len(queued(client)) == 4
    for n, member in reversed(list(enumerate(members))):
        assert succeed(flask_app, life, member, n * 10) == "done"
    # a redelivered member's second ending is refused: it cannot count twice
    backend = flask_app.extensions["taskplane"].celery.backend
    again = life.finish(members[0], "SUCCESS", tenant=TENANT,
                        result=backend.encode_state(members[0], 99, "SUCCESS"))
    assert again.outcome == "final"
    pushed = [m for m in queued(client) if m["headers"]["id"] == callback]
    assert len(pushed) == 1
    assert pushed[0]["decoded"][0] == [[0, 10, 20, 30]]


def test_the_last_endings_racing_push_the_callback_exactly_once(
        http: FlaskClient, flask_app: Flask, life: Lifecycle, client: redis.Redis) -> None:
    found = submit(http, {"group": [{"task": "test.echo", "kwargs": {"value": i}}
                                    for i in range(40)], "then": {"task": "test.echo"}})
    members = ids_of(found, "members")
    for member in members:
        assert life.start(member, 0).runs
    backend = flask_app.extensions["taskplane"].celery.backend
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def end_all(offset: int) -> None:
        barrier.wait()
        for member in members[offset::2]:  # every member ended by four threads at once
            outcomes.append(life.finish(member, "SUCCESS", tenant=TENANT, result=(
                backend.encode_state(member, member, "SUCCESS"))).outcome)

    threads = [threading.Thread(target=end_all, args=(n % 2,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("done") == 40 and outcomes.count("final") == 120
    pushed = [m for m in queued(client) if m["headers"]["id"] == found["callback"]]
    assert len(pushed) == 1
    assert pushed[0]["decoded"][0] == [members]
    state = http.get(f"/v1/workflows/{found['id']}").json
    assert state["counts"]["SUCCESS"] == 40 and state["state"] == "RUNNING"


def test_a_failed_step_stops_the_chain_and_its_retry_resumes_it(
        http: FlaskClient, flask_app: Flask, life: Lifecycle, client: redis.Redis) -> None:
    found = submit(http, {"chain": [{"task": "test.echo", "kwargs": {"value": 1}},
                                    {"task": "test.echo"}, {"task": "test.echo"}]})
    steps = ids_of(found, "steps")
    assert fail(flask_app, life, steps[0]) == "done"
    state = http.get(f"/v1/workflows/{found['id']}").json
    assert state["state"] == "FAILURE"
    assert "FAILURE" in state["reason"]
    assert [s["state"] for s in state["steps"]] == ["FAILURE", "REVOKED", "REVOKED"]
    assert state["counts"] == {"SUCCESS": 0, "FAILURE": 1, "REVOKED": 2}
    assert client.hget(f"taskplane:task:{steps[1]}", "reason")
    assert [m["headers"]["id"] for m in queued(client)] == steps[:1]  # nothing more pushed


def test_retrying_a_failed_chain_step_from_the_dead_letters_resumes_the_chain(
        http: FlaskClient, flask_app: Flask, life: Lifecycle, client: redis.Redis) -> None:
    found = submit(http, {"chain": [{"task": "test.echo", "kwargs": {"value": 1}},
                                    {"task": "test.echo"}]})
    steps = ids_of(found, "steps")
    client.delete(*client.keys("default*"))
    assert fail(flask_app, life, steps[0]) == "done"
    assert http.post(f"/v1/dead-letters/{steps[0]}/retry").status_code == 202
    state = http.get(f"/v1/workflows/{found['id']}").json
    assert state["state"] == "RUNNING"
    assert state["counts"] == {"SUCCESS": 0, "FAILURE": 0, "REVOKED": 0}
    assert [s["state"] for s in state["steps"]] == ["PENDING", "PENDING"]
    assert client.zscore(f"taskplane:open:{TENANT}", steps[1]) is not None
    assert succeed(flask_app, life, steps[0], 7) == "done"
    (message,) = [m for m in queued(client) if m["headers"]["id"] == steps[1]]
    assert message["decoded"][0] == [7]
    assert succeed(flask_app, life, steps[1], 8) == "done"
    assert http.get(f"/v1/workflows/{found['id']}").json["state"] == "SUCCESS"


def test_a_group_on_complete_passes_every_outcome(
        http: FlaskClient, flask_app: Flask, life: Lifecycle, client: redis.Redis) -> None:
    found = submit(http, {"group": [{"task": "test.echo", "kwargs": {"value": i}}
                                    for i in range(3)], "on": "complete",
                          "then": {"chain": [{"task": "test.echo"}, {"task": "test.echo"}]}})
    members = ids_of(found, "members")
    assert succeed(flask_app, life, members[0], "a") == "done"
    assert fail(flask_app, life, members[1]) == "done"
    assert life.revoke(members[2], TENANT, terminate=False).outcome == "revoked"
    (message,) = [m for m in queued(client) if m["headers"]["id"] == found["callback"]]
    assert message["decoded"][0] == [[
        {"state": "SUCCESS", "result": "a"},
        {"state": "FAILURE", "error": {"type": "ValueError", "message": "boom"}},
        {"state": "REVOKED"}]]
    state = http.get(f"/v1/workflows/{found['id']}").json
    assert state["state"] == "RUNNING" and state["progress"] == 60


def test_a_group_on_success_with_a_failure_never_runs_its_callback(
        http: FlaskClient, flask_app: Flask, life: Lifecycle, client: redis.Redis) -> None:
    found = submit(http, {"group": [{"task": "test.echo", "kwargs": {"value": i}}
                                    for i in range(3)], "then": {"task": "test.echo"}})
    members = ids_of(found, "members")
    assert fail(flask_app, life, members[1]) == "done"
    assert http.get(f"/v1/workflows/{found['id']}").json["state"] == "RUNNING"
    assert succeed(flask_app, life, members[0], 1) == "done"
    assert succeed(flask_app, life, members[2], 1) == "done"
    state = http.get(f"/v1/workflows/{found['id']}").json
    assert state["state"] == "FAILURE"
    assert state["then"][0]["state"] == "REVOKED"
    assert not [m for m in queued(client) if m["headers"]["id"] == found["callback"]]


def test_cancelling_revokes_members_not_started_and_the_workflow_ends_revoked(
        http: FlaskClient, flask_app: Flask, life: Lifecycle, client: redis.Redis) -> None:
    found = submit(http, {"group": [{"task": "test.echo", "kwargs": {"value": i}}
                                    for i in range(3)], "then": {"task": "test.echo"}})
    members = ids_of(found, "members")
    assert life.start(members[0], 0).runs
    answer = http.delete(f"/v1/workflows/{found['id']}")
    assert answer.status_code == 202
    assert answer.json["cancelled"] == {"revoked": 3, "running": 1}  # 2 members + callback
    assert answer.json["state"] == "RUNNING"  # until its running member ends
    assert succeed(flask_app, life, members[0], 1) == "done"
    state = http.get(f"/v1/workflows/{found['id']}").json
    assert state["state"] == "REVOKED"
    assert state["counts"] == {"SUCCESS": 1, "FAILURE": 0, "REVOKED": 3}
    task = http.get(f"/v1/tasks/{members[1]}").json
    assert task["workflow"]["id"] == found["id"]
    assert task["workflow"]["links"]["self"] == f"/v1/workflows/{found['id']}"


def test_a_step_revoked_by_its_chain_says_why(
        http: FlaskClient, flask_app: Flask, life: Lifecycle) -> None:
    found = submit(http, {"chain": [{"task": "test.echo", "kwargs": {"value": 1}},
                                    {"task": "test.echo"}]})
    steps = ids_of(found, "steps")
    assert fail(flask_app, life, steps[0]) == "done"
    task = http.get(f"/v1/tasks/{steps[1]}").json
    assert task["state"] == "REVOKED"
    assert "stopped" in task["error"]["message"]


def test_the_event_stream_follows_a_workflow_to_its_end(
        http: FlaskClient, flask_app: Flask, life: Lifecycle) -> None:
    found = submit(http, {"chain": [{"task": "test.echo", "kwargs": {"value": 1}},
                                    {"task": "test.echo"}]})
    steps = ids_of(found, "steps")
    answer = http.get(f"/v1/workflows/{found['id']}/events", buffered=False)
    assert answer.mimetype == "text/event-stream"
    chunks = iter(answer.response)
    events = [json.loads(next(chunks).decode().split("data: ", 1)[1])]
    assert events[0]["state"] == "RUNNING" and events[0]["progress"] == 0
    for n, step in enumerate(steps):
        assert succeed(flask_app, life, step, n) == "done"
    events += [json.loads(c.decode().split("data: ", 1)[1]) for c in chunks]
    assert events[-1]["state"] == "SUCCESS" and events[-1]["progress"] == 100
    assert http.get("/v1/workflows/nope/events").status_code == 404


def test_workflow_totals_count_creations_and_endings(
        http: FlaskClient, flask_app: Flask, life: Lifecycle) -> None:
    first = submit(http, {"chain": [{"task": "test.echo", "kwargs": {"value": 1}}]})
    second = submit(http, {"chain": [{"task": "test.echo", "kwargs": {"value": 1}}]})
    assert life.workflow_totals() == {"created": 2}
    assert succeed(flask_app, life, ids_of(first, "steps")[0], 1) == "done"
    assert fail(flask_app, life, ids_of(second, "steps")[0]) == "done"
    assert life.workflow_totals() == {"created": 2, "SUCCESS": 1, "FAILURE": 1}


def test_the_exporter_serves_the_workflow_totals(http: FlaskClient, flask_app: Flask) -> None:
    from prometheus_client import generate_latest

    from taskplane.exporter import create_registry

    submit(http, {"chain": [{"task": "test.echo", "kwargs": {"value": 1}}]})
    registry, _ = create_registry(flask_app.extensions["taskplane"].settings)
    text = generate_latest(registry).decode()
    assert 'taskplane_workflows_total{state="created"} 1.0' in text
    assert 'taskplane_workflows_total{state="SUCCESS"} 0.0' in text


def test_cancelling_while_every_member_runs_stops_before_the_callback(
        http: FlaskClient, flask_app: Flask, life: Lifecycle, client: redis.Redis) -> None:
    found = submit(http, {"group": [{"task": "test.echo", "kwargs": {"value": i}}
                                    for i in range(2)], "then": {"task": "test.echo"}})
    members = ids_of(found, "members")
    for member in members:
        assert life.start(member, 0).runs
    answer = http.delete(f"/v1/workflows/{found['id']}")
    assert answer.json["cancelled"] == {"revoked": 1, "running": 2}  # only the callback
    for member in members:
        assert succeed(flask_app, life, member, 1) == "done"
    state = http.get(f"/v1/workflows/{found['id']}").json
    assert state["state"] == "REVOKED"
    assert state["counts"] == {"SUCCESS": 2, "FAILURE": 0, "REVOKED": 1}
    assert not [m for m in queued(client) if m["headers"]["id"] == found["callback"]]
