"""The task lifecycle through the real stack: gunicorn → Redis → Celery worker → result."""

from __future__ import annotations

import re
import time

import pytest

from tests.support.services import Api, RedisServer, wait_for

pytestmark = pytest.mark.integration


def counter(redis_server: RedisServer, key: str) -> int:
    return int(redis_server.client().get(f"test:count:{key}") or 0)


def unique(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns()}"


def test_submit_answers_202_with_location_and_task_body(api: Api) -> None:
    r = api.post("/v1/tasks", json={"task": "test.echo", "kwargs": {"value": [1, "two"]}})
    assert r.status_code == 202
    body = r.json()
    assert re.fullmatch(r"[0-9a-f-]{36}", body["id"])
    assert body["task"] == "test.echo"
    assert body["state"] == "PENDING"
    assert body["links"]["self"] == f"/v1/tasks/{body['id']}"
    assert r.headers["Location"] == body["links"]["self"]
    done = api.wait_state(body["id"], "SUCCESS")
    assert done["result"] == [1, "two"]
    assert done["retries"] == 0
    for stamp in ("submitted_at", "started_at", "finished_at"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", done[stamp]), stamp
    assert done["submitted_at"] <= done["started_at"] <= done["finished_at"]


def test_positional_args_are_named_by_the_signature(api: Api) -> None:
    task = api.submit("test.echo", args=[{"nested": True}])
    assert api.wait_state(task["id"], "SUCCESS")["result"] == {"nested": True}


def test_lifecycle_pending_started_progress_success(api: Api) -> None:
    task = api.submit("test.phases", kwargs={"before": 1.0, "seconds": 1.5})
    seen: list[str] = [task["state"]]
    progress: list[float] = []

    def finished() -> bool:
        body = api.get(f"/v1/tasks/{task['id']}").json()
        if body["state"] != seen[-1]:
            seen.append(body["state"])
        if body["state"] == "PROGRESS":
            progress.append(body["progress"]["percent"])
            assert body["progress"]["message"] == "sleeping"
        return body["state"] == "SUCCESS"

    wait_for(finished, 30, "phases task to succeed", interval=0.05)
    assert seen[0] == "PENDING"
    assert "STARTED" in seen and "PROGRESS" in seen
    assert seen.index("STARTED") < seen.index("PROGRESS") < seen.index("SUCCESS")
    assert progress and all(0 <= p <= 100 for p in progress)
    assert progress == sorted(progress)


def test_failure_shows_the_error_and_is_dead_lettered(api: Api) -> None:
    task = api.submit("test.fail", kwargs={"message": "disk on fire"})
    body = api.wait_state(task["id"], "FAILURE")
    assert body["error"] == {"type": "ValueError", "message": "disk on fire"}
    assert "result" not in body
    dead = api.get("/v1/dead-letters").json()
    entry = next(e for e in dead["items"] if e["id"] == task["id"])
    assert entry["reason"] == "failed"
    assert entry["error"]["type"] == "ValueError"


def test_retry_with_backoff_then_success(api: Api, redis_server: RedisServer) -> None:
    key = unique("flaky")
    task = api.submit("test.flaky", kwargs={"key": key, "failures": 2})
    body = api.wait_state(task["id"], "SUCCESS")
    assert body["result"] == 3
    assert body["retries"] == 2
    assert counter(redis_server, key) == 3


def test_retries_exhausted_dead_letter_then_retry_succeeds(api: Api, redis_server: RedisServer) -> None:
    key = unique("exhaust")
    task = api.submit("test.flaky", kwargs={"key": key, "failures": 100})
    body = api.wait_state(task["id"], "FAILURE", timeout=60)
    assert body["error"]["type"] == "Transient"
    assert counter(redis_server, key) == 4  # the first run and max_retries=3 retries
    dead = api.get("/v1/dead-letters").json()
    entry = next(e for e in dead["items"] if e["id"] == task["id"])
    assert entry["reason"] == "retries exhausted"
    assert entry["kwargs"] == {"key": key, "failures": 100}
    assert entry["retries"] == 3

    redis_server.client().set(f"test:count:{key}", 1000)  # the cause is fixed
    r = api.post(f"/v1/dead-letters/{task['id']}/retry")
    assert r.status_code == 202, r.text
    assert r.json()["id"] == task["id"]
    # the answer re-reads the task: a worker may have taken it already
    assert r.json()["state"] in ("PENDING", "STARTED", "SUCCESS")
    body = api.wait_state(task["id"], "SUCCESS")
    assert body["result"] == 1001
    assert body["retries"] == 0
    ids = [e["id"] for e in api.get("/v1/dead-letters").json()["items"]]
    assert task["id"] not in ids
    again = api.post(f"/v1/dead-letters/{task['id']}/retry")  # no longer a dead letter
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_dead_lettered"
    assert api.post("/v1/dead-letters/no-such-task/retry").status_code == 404


def test_revoke_a_queued_task_it_never_runs(api: Api, redis_server: RedisServer) -> None:
    key = unique("revoked")
    task = api.submit("test.count", kwargs={"key": key}, countdown=1)
    r = api.delete(f"/v1/tasks/{task['id']}")
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "REVOKED"
    # A later task on the same queue has run, so the revoked one had its chance too.
    marker = api.submit("test.count", kwargs={"key": unique("marker")}, countdown=1.5)
    api.wait_state(marker["id"], "SUCCESS")
    assert counter(redis_server, key) == 0
    body = api.get(f"/v1/tasks/{task['id']}").json()
    assert body["state"] == "REVOKED"
    assert body["error"]["type"] == "TaskRevokedError"
    assert api.delete(f"/v1/tasks/{task['id']}").status_code == 409


def test_revoke_a_running_task_needs_terminate(api: Api, redis_server: RedisServer) -> None:
    key = unique("running")
    task = api.submit("test.slow", kwargs={"seconds": 60, "key": key})
    api.wait_state(task["id"], ("STARTED", "PROGRESS"))
    r = api.delete(f"/v1/tasks/{task['id']}")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "task_running"
    r = api.delete(f"/v1/tasks/{task['id']}?terminate=true")
    assert r.status_code == 202
    body = api.wait_state(task["id"], "REVOKED", timeout=30)
    assert "finished_at" in body
    marker = api.submit("test.echo", kwargs={"value": 1})
    api.wait_state(marker["id"], "SUCCESS")
    assert counter(redis_server, key) == 1  # terminated, not redelivered


def test_idempotency_key_runs_once_and_conflicts_on_other_body(api: Api, redis_server: RedisServer) -> None:
    key = unique("idem")
    body = {"task": "test.count", "kwargs": {"key": key}}
    headers = {"Idempotency-Key": key}
    first = api.post("/v1/tasks", json=body, headers=headers)
    second = api.post("/v1/tasks", json=body, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers.get("Idempotent-Replayed") == "true"
    api.wait_state(first.json()["id"], "SUCCESS")
    third = api.post("/v1/tasks", json=body, headers=headers)
    assert third.json()["id"] == first.json()["id"]
    assert third.json()["state"] == "SUCCESS"
    other = api.post("/v1/tasks", json={**body, "priority": 9}, headers=headers)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_conflict"
    # Keys are per tenant: another tenant's identical key is a new task.
    theirs = api.post("/v1/tasks", json=body, headers=headers, tenant="globex")
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]
    api.wait_state(theirs.json()["id"], "SUCCESS", tenant="globex")
    assert counter(redis_server, key) == 2


def test_tenants_cannot_see_each_others_tasks(api: Api) -> None:
    task = api.submit("test.fail", kwargs={"message": "private"})
    api.wait_state(task["id"], "FAILURE")
    for method in ("GET", "DELETE"):
        r = api.request(method, f"/v1/tasks/{task['id']}", tenant="globex")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "task_not_found"
    assert api.get(f"/task_status/{task['id']}", tenant="globex").status_code == 404
    ids = [e["id"] for e in api.get("/v1/dead-letters", tenant="globex").json()["items"]]
    assert task["id"] not in ids
    assert api.post(f"/v1/dead-letters/{task['id']}/retry", tenant="globex").status_code == 404


def test_unknown_ids_are_404_not_pending(api: Api) -> None:
    for task_id in ("00000000-0000-0000-0000-000000000000", "..%2F..%2Fetc%2Fpasswd", "x" * 300):
        r = api.get(f"/v1/tasks/{task_id}")
        assert r.status_code == 404, task_id
        assert r.json()["error"]["code"] in ("task_not_found", "not_found")
    assert api.get("/task_status/00000000-0000-0000-0000-000000000000").status_code == 404


def test_task_types_lists_the_registry(api: Api) -> None:
    items = {t["name"]: t for t in api.get("/v1/task-types").json()["items"]}
    assert {"long_running_task", "images.thumbnail", "reports.summary", "test.flaky"} <= set(items)
    flaky = items["test.flaky"]
    assert flaky["queue"] == "default"
    assert flaky["max_retries"] == 3
    assert flaky["schema"]["required"] == ["key", "failures"]
    assert items["images.thumbnail"]["time_limit"] == 60


def test_builtin_tasks_do_real_work(api: Api) -> None:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (400, 200), "red").save(buf, format="PNG")
    thumb = api.submit("images.thumbnail",
                       kwargs={"image_b64": base64.b64encode(buf.getvalue()).decode(), "max_size": 64})
    report = api.submit("reports.summary", kwargs={"csv": "name,age\nann,30\nbob,40\n,\n"})
    t = api.wait_state(thumb["id"], "SUCCESS")["result"]
    assert (t["width"], t["height"]) == (64, 32)
    assert Image.open(io.BytesIO(base64.b64decode(t["image_b64"]))).size == (64, 32)
    rep = api.wait_state(report["id"], "SUCCESS")["result"]
    assert rep["rows"] == 3
    assert rep["columns"]["age"]["mean"] == 35.0
    assert rep["columns"]["age"]["missing"] == 1
    bad = api.submit("images.thumbnail", kwargs={"image_b64": base64.b64encode(b"not an image").decode()})
    assert api.wait_state(bad["id"], "FAILURE")["error"]["type"] == "BadImage"


def test_seed_routes_keep_the_posts_shapes(api: Api) -> None:
    r = api.get("/start_task/example_data")
    assert r.status_code == 200
    body = r.json()
    assert body["message"] == "Task enqueued!"
    task_id = body["task_id"]
    status = api.get(f"/task_status/{task_id}").json()
    assert status["state"] in ("PENDING", "STARTED", "PROGRESS")
    if status["state"] == "PENDING":
        assert status == {"state": "PENDING", "status": "Pending..."}

    def done() -> dict | None:
        s = api.get(f"/task_status/{task_id}").json()
        return s if s["state"] == "SUCCESS" else None

    final = wait_for(done, 30, "seed task to finish", interval=0.2)
    assert final == {"state": "SUCCESS",
                     "result": "Task completed successfully with data: example_data"}
