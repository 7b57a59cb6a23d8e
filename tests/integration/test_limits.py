"""Per-tenant request rate and unfinished-task cap: 429 with Retry-After, nothing lost."""

from __future__ import annotations

import pytest

from tests.support.services import Api, RedisServer

pytestmark = pytest.mark.integration


def test_rate_limit_is_per_tenant_with_retry_after(isolated_redis: RedisServer) -> None:
    api = Api(isolated_redis.url, workers=2, RATE_LIMIT="0.5", RATE_LIMIT_BURST="3")
    try:
        statuses = [api.get("/v1/task-types").status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        r = api.get("/v1/queues")
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limited"
        assert int(r.headers["Retry-After"]) >= 1
        assert api.get("/v1/task-types", tenant="globex").status_code == 200
        assert api.get("/healthz", tenant=None).status_code == 200  # probes are never limited
        rejected = api.post("/v1/tasks", json={"task": "test.echo", "kwargs": {"value": 1}})
        assert rejected.status_code == 429
        assert isolated_redis.client().keys("taskplane:task:*") == []  # nothing was accepted
    finally:
        api.close()


def test_cap_on_unfinished_tasks_per_tenant(isolated_redis: RedisServer) -> None:
    api = Api(isolated_redis.url, workers=1, QUEUES="parked", MAX_OPEN_TASKS_PER_TENANT="2")
    try:
        body = {"task": "test.echo", "kwargs": {"value": 1}, "queue": "parked"}
        first = api.post("/v1/tasks", json=body)
        assert api.post("/v1/tasks", json=body).status_code == 202
        over = api.post("/v1/tasks", json=body)
        assert over.status_code == 429
        assert over.json()["error"]["code"] == "too_many_open_tasks"
        assert "Retry-After" in over.headers
        assert api.post("/v1/tasks", json=body, tenant="globex").status_code == 202
        assert api.delete(f"/v1/tasks/{first.json()['id']}").status_code == 202  # one finishes
        assert api.post("/v1/tasks", json=body).status_code == 202
        assert api.post("/v1/tasks", json=body).status_code == 429
        waiting = next(q for q in api.get("/v1/queues").json()["items"] if q["name"] == "parked")
        assert waiting["waiting"] == 4  # every 202 is on the queue (the revoked one too, skipped later)
    finally:
        api.close()
