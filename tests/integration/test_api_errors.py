"""Every error status the API promises, through gunicorn, in the one envelope shape."""

from __future__ import annotations

import json
import signal

import pytest
import requests

from tests.support.services import TEST_TOKENS, Api, RedisServer, start_worker, wait_for

pytestmark = pytest.mark.integration


def assert_error(r: requests.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"code", "message", "details"}
    assert isinstance(err["message"], str) and err["message"]
    if code:
        assert err["code"] == code
    return err


def post_raw(api: Api, data: bytes, content_type: str = "application/json", **kw) -> requests.Response:
    return api.post("/v1/tasks", data=data, headers={"Content-Type": content_type, **kw})


@pytest.mark.parametrize("header", [None, "Bearer", "Basic abc", "Bearer a b",
                                    "Bearer wrong-token-0123456789"])
def test_auth_is_required_on_task_routes(api: Api, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    for method, path in [("POST", "/v1/tasks"), ("GET", "/v1/tasks/x"), ("DELETE", "/v1/tasks/x"),
                         ("GET", "/v1/task-types"), ("GET", "/v1/queues"),
                         ("GET", "/v1/dead-letters"), ("POST", "/v1/dead-letters/x/retry"),
                         ("GET", "/start_task/x"), ("GET", "/task_status/x")]:
        r = api.request(method, path, tenant=None, headers=headers, json={})
        assert_error(r, 401, "unauthorized")
        assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_probes_and_openapi_need_no_token(api: Api) -> None:
    assert api.get("/healthz", tenant=None).json() == {"status": "ok"}
    assert api.get("/readyz", tenant=None).json() == {"status": "ready"}
    doc = api.get("/openapi.json", tenant=None).json()
    assert doc["openapi"].startswith("3.")
    assert "/v1/tasks" in doc["paths"]


def test_malformed_json_is_400(api: Api) -> None:
    assert_error(post_raw(api, b'{"task": '), 400, "malformed_json")
    assert_error(post_raw(api, b'{"task": "test.echo", "kwargs": {"value": NaN}}'), 400, "malformed_json")
    assert_error(post_raw(api, b'{"task": "test.echo", "kwargs": {"value": Infinity}}'), 400)
    assert_error(post_raw(api, b'{"task": "\xff\xfe"}'), 400, "malformed_json")
    deep = b'{"task": "test.echo", "kwargs": {"value": ' + b"[" * 5000 + b"]" * 5000 + b"}}"
    assert_error(post_raw(api, deep), 400, "malformed_json")


def test_not_json_is_415(api: Api) -> None:
    assert_error(post_raw(api, b"task=test.echo", "application/x-www-form-urlencoded"), 415,
                 "unsupported_media_type")
    assert_error(post_raw(api, b'{"task": "test.echo"}', "text/plain"), 415)
    assert_error(api.post("/v1/tasks"), 415)


def test_body_over_the_limit_is_413(api: Api) -> None:
    big = json.dumps({"task": "test.echo", "kwargs": {"value": "x" * 2_000_000}}).encode()
    # Its own connection: gunicorn drops a keep-alive connection whose unread body
    # exceeds 64 KiB, which a pooled session would trip over on its next request.
    r = requests.post(api.base + "/v1/tasks", data=big, timeout=30,
                      headers={"Content-Type": "application/json",
                               "Authorization": f"Bearer {TEST_TOKENS['acme']}"})
    assert_error(r, 413, "payload_too_large")


def test_unknown_task_name_is_404(api: Api) -> None:
    err = assert_error(api.post("/v1/tasks", json={"task": "no.such.task"}), 404, "unknown_task")
    assert err["details"]["task"] == "no.such.task"


@pytest.mark.parametrize(("body", "fields"), [
    ({"task": "test.flaky", "kwargs": {"key": 1}}, {"failures", "key"}),
    ({"task": "test.flaky", "kwargs": {"key": "k", "failures": 1, "extra": 2}}, {"kwargs"}),
    ({"task": "test.echo", "args": [1, 2, 3]}, {"args"}),
    ({"task": "test.echo", "kwargs": {"value": 1}, "priority": 10}, {"priority"}),
    ({"task": "test.echo", "kwargs": {"value": 1}, "countdown": -1}, {"countdown"}),
    ({"task": "test.echo", "kwargs": {"value": 1}, "queue": "nope"}, {"queue"}),
    ({"task": "test.echo", "kwargs": {"value": 1}, "queue": "../x"}, {"queue"}),
    ({"task": "test.echo", "bogus": 1}, {"body"}),
    ({"kwargs": {}}, {"task"}),
    (["not", "an", "object"], {"body"}),
    ({"task": "test.echo", "args": list(range(1001))}, {"args"}),
])
def test_invalid_bodies_and_arguments_are_422_naming_each_field(api: Api, body, fields) -> None:
    err = assert_error(api.post("/v1/tasks", json=body), 422, "validation_failed")
    assert {f["field"] for f in err["details"]["fields"]} == fields


def test_idempotency_key_must_be_short_printable(api: Api) -> None:
    body = {"task": "test.echo", "kwargs": {"value": 1}}
    assert_error(api.post("/v1/tasks", json=body, headers={"Idempotency-Key": "k" * 256}), 400,
                 "invalid_idempotency_key")
    assert_error(api.post("/v1/tasks", json=body, headers={"Idempotency-Key": "has space"}), 400)


def test_wrong_method_is_405_in_the_envelope(api: Api) -> None:
    r = api.request("PUT", "/v1/tasks")
    assert_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["Allow"]


def test_dead_letter_paging_is_validated(api: Api) -> None:
    assert_error(api.get("/v1/dead-letters?limit=0"), 422)
    assert_error(api.get("/v1/dead-letters?limit=abc"), 422)
    assert api.get("/v1/dead-letters?limit=1&offset=0").status_code == 200


def test_queues_count_every_priority_list(api: Api, redis_server: RedisServer) -> None:
    before = {q["name"]: q for q in api.get("/v1/queues").json()["items"]}
    assert {"default", "parked"} <= set(before)
    for priority in (0, 9, 5):
        api.submit("test.echo", kwargs={"value": priority}, queue="parked", priority=priority)
    after = {q["name"]: q for q in api.get("/v1/queues").json()["items"]}
    assert after["parked"]["waiting"] == before["parked"]["waiting"] + 3
    assert after["parked"]["oldest_age_seconds"] >= 0
    # Three different priority lists hold them: the count is not just LLEN of the base list.
    lists = [k.decode() for k in redis_server.client().keys("parked*")]
    assert len(lists) >= 3


def test_reserved_counts_unacknowledged_deliveries(api: Api) -> None:
    task = api.submit("test.slow", kwargs={"seconds": 3})
    api.wait_state(task["id"], ("STARTED", "PROGRESS"))
    default = next(q for q in api.get("/v1/queues").json()["items"] if q["name"] == "default")
    assert default["reserved"] >= 1
    api.wait_state(task["id"], "SUCCESS")


def test_redis_down_is_503_with_retry_after_then_recovers(isolated_redis: RedisServer) -> None:
    api = Api(isolated_redis.url, workers=1, REDIS_TIMEOUT="0.5", RETRY_AFTER="7")
    worker = start_worker(isolated_redis.url, name="outage", concurrency=1)
    try:
        before = api.submit("test.echo", kwargs={"value": "before"})
        api.wait_state(before["id"], "SUCCESS")
        isolated_redis.stop(signal.SIGTERM)
        for r in (api.post("/v1/tasks", json={"task": "test.echo", "kwargs": {"value": 1}}),
                  api.get(f"/v1/tasks/{before['id']}"), api.get("/v1/queues"),
                  api.get("/v1/dead-letters"), api.get("/readyz", tenant=None)):
            err = assert_error(r, 503, "broker_unavailable")
            assert err is not None
            assert r.headers["Retry-After"] == "7"
        assert api.get("/healthz", tenant=None).status_code == 200
        isolated_redis.start()
        wait_for(lambda: api.get("/readyz", tenant=None).status_code == 200, 30, "API ready again")
        after = wait_for(lambda: api.post("/v1/tasks", json={"task": "test.echo",
                                                             "kwargs": {"value": "after"}}),
                         30, "submission accepted again")
        assert after.status_code == 202
        assert api.wait_state(after.json()["id"], "SUCCESS", timeout=60)["result"] == "after"
        assert api.process.alive() and worker.alive()
    finally:
        worker.stop()
        api.close()
