"""``POST /v1/workflows`` at the door: every member checked and named, limits, the
tenant's cap counted per member, the Idempotency-Key; nothing written on a refusal."""

from __future__ import annotations

import json
from typing import Any

import redis
from flask.testing import FlaskClient

ECHO = {"task": "test.echo", "kwargs": {"value": 1}}


def refused(http: FlaskClient, body: Any, status: int = 422) -> dict[str, Any]:
    answer = http.post("/v1/workflows", json=body)
    assert answer.status_code == status, answer.json
    return answer.json["error"]  # type: ignore[no-any-return]


def fields(error: dict[str, Any]) -> list[str]:
    return [f["field"] for f in error["details"]["fields"]]


def test_every_bad_member_is_named_by_its_path_and_nothing_is_written(
        http: FlaskClient, client: redis.Redis) -> None:
    error = refused(http, {"group": [ECHO, {"task": "test.echo", "kwargs": {"x": 1}},
                                     {"task": "nope"}, {"task": "test.echo", "priority": 12}],
                           "then": {"chain": [{"task": "test.echo", "queue": "nowhere"}]}})
    assert fields(error) == ["group[1].kwargs", "group[2].task", "group[3].priority",
                             "then.chain[0].queue"]
    assert client.dbsize() == 0


def test_a_step_that_takes_the_outcome_is_checked_without_it(http: FlaskClient) -> None:
    # test.echo(value): the second step's value is the first step's result
    assert http.post("/v1/workflows", json={"chain": [ECHO, {"task": "test.echo"}]}
                     ).status_code == 202
    error = refused(http, {"chain": [ECHO, {"task": "test.echo", "kwargs": {"value": 2}}]})
    assert fields(error) == ["chain[1].kwargs"]


def test_bad_shapes_are_422(http: FlaskClient) -> None:
    assert fields(refused(http, {"group": []})) == ["group"]
    assert fields(refused(http, {"chain": []})) == ["chain"]
    assert fields(refused(http, {"chain": [ECHO], "group": [ECHO]})) == ["body"]
    assert fields(refused(http, [ECHO])) == ["body"]
    assert fields(refused(http, {"group": [ECHO], "on": "sometimes"})) == ["on"]
    assert fields(refused(http, {"chain": [ECHO], "then": ECHO})) == ["then"]
    assert fields(refused(http, {"group": [{"group": [ECHO]}]})) == ["group[0]"]
    assert fields(refused(http, {"group": [ECHO], "then": {"group": [ECHO]}})) == ["then.group"]
    assert fields(refused(http, {"chain": [ECHO, {"task": "test.echo", "countdown": 5}]})
                  ) == ["chain[1].countdown"]


def test_limits_are_413(http: FlaskClient, client: redis.Redis) -> None:
    error = refused(http, {"group": [ECHO] * 51}, 413)
    assert error["code"] == "workflow_too_large"
    assert error["details"] == {"field": "group", "limit": 50, "size": 51}
    assert refused(http, {"chain": [ECHO] * 6}, 413)["details"]["field"] == "chain"
    assert refused(http, {"group": [ECHO], "then": {"chain": [ECHO] * 6}}, 413)
    assert client.dbsize() == 0


def test_every_member_counts_against_the_tenants_cap(http: FlaskClient,
                                                     client: redis.Redis) -> None:
    assert http.post("/v1/workflows", json={"group": [ECHO] * 50}).status_code == 202
    before = client.dbsize()
    error = refused(http, {"group": [ECHO] * 10, "then": {"task": "test.echo"}}, 429)  # 61 > 60
    assert error["code"] == "too_many_open_tasks"
    assert client.dbsize() == before
    assert http.post("/v1/workflows", json={"group": [ECHO] * 9, "then": {"task": "test.echo"}}
                     ).status_code == 202


def test_an_idempotency_key_replays_the_first_workflow(http: FlaskClient) -> None:
    body = {"chain": [ECHO, {"task": "test.echo"}]}
    first = http.post("/v1/workflows", json=body, headers={"Idempotency-Key": "k1"})
    again = http.post("/v1/workflows", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 202
    assert again.json["id"] == first.json["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = http.post("/v1/workflows", json={"chain": [ECHO]}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 409
    assert len(http.get("/v1/workflows").json["items"]) == 1


def test_unknown_workflows_are_404_and_the_listing_pages(http: FlaskClient) -> None:
    assert http.get("/v1/workflows/nope").status_code == 404
    assert http.get("/v1/workflows/" + "x" * 300).json["error"]["code"] == "workflow_not_found"
    made = [http.post("/v1/workflows", json={"chain": [ECHO]}).json["id"] for _ in range(3)]
    page = http.get("/v1/workflows?limit=2").json
    assert [w["id"] for w in page["items"]] == made[::-1][:2]
    rest = http.get(f"/v1/workflows?limit=2&cursor={page['next']}").json
    assert [w["id"] for w in rest["items"]] == made[:1]
    assert http.get("/v1/workflows?limit=0").status_code == 422
    assert http.get("/v1/workflows?cursor=abc").status_code == 422


SECRET = "whsec_" + "a2V5LW9mLXRoaXJ0eS10d28tYnl0ZXMtLS0tLS0tLS0="


def test_webhook_targets_are_checked_at_the_door(http: FlaskClient, client: redis.Redis) -> None:
    for url, field in (("https://127.0.0.1/h", "notify.url"), ("https://169.254.169.254/",
                                                             "notify.url"),
                       ("http://93.184.215.14/h", "notify.url"), ("ftp://93.184.215.14/",
                                                                 "notify.url")):
        answer = http.post("/v1/tasks", json={**ECHO, "notify": {"url": url, "secret": SECRET}})
        assert answer.status_code == 422, url
        assert [f["field"] for f in answer.json["error"]["details"]["fields"]] == [field]
    error = refused(http, {"group": [ECHO, {**ECHO, "notify": {"url": "https://10.0.0.1/",
                                                               "secret": "nope"}},
                                     {**ECHO, "notify": {"url": "https://10.0.0.1/",
                                                         "secret": SECRET}}]})
    assert fields(error) == ["group[1].notify.secret", "group[2].notify.url"]
    assert fields(refused(http, {"chain": [ECHO], "notify": {"url": "gopher://x/",
                                                             "secret": SECRET}})
                  ) == ["notify.url"]
    assert client.dbsize() == 0


def test_an_ending_pushes_its_delivery_in_the_same_step(http: FlaskClient, client: redis.Redis,
                                                        life: Any) -> None:
    hook = {"url": "https://93.184.215.14/hook", "secret": SECRET}
    task = http.post("/v1/tasks", json={**ECHO, "notify": hook}).json
    assert client.llen("webhooks") + client.llen("webhooks\x06\x163") == 0
    assert life.revoke(task["id"], "local", terminate=False).outcome == "revoked"
    (raw,) = client.lrange("webhooks\x06\x163", 0, -1)
    message = json.loads(raw)
    assert message["headers"]["task"] == "taskplane.webhook.deliver"
    assert json.loads(message["body"])[0] == ["REVOKED", "task", task["id"]]
    assert SECRET not in http.get(f"/v1/tasks/{task['id']}").get_data(as_text=True)


def test_an_operators_endpoint_notifies_the_tenants_tasks(
        flask_app: Any, wf_redis: Any, client: redis.Redis) -> None:
    from taskplane.api import create_app
    from taskplane.settings import Settings
    from tests.support.services import OPERATOR_TOKENS, TEST_TOKENS

    app = create_app(Settings.from_env({
        "REDIS_URL": wf_redis.url, "RATE_LIMIT": "0", "TASK_MODULES": "tests.support.tasks",
        "ACCESS_LOG": "false",
        "API_TOKENS": ",".join(f"{t}:{k}" for t, k in TEST_TOKENS.items()),
        "API_ADMIN_TOKENS": ",".join(f"{o}:{k}" for o, k in OPERATOR_TOKENS.items())}))
    http = app.test_client()
    ops = {"Authorization": f"Bearer {OPERATOR_TOKENS['ops']}"}
    acme = {"Authorization": f"Bearer {TEST_TOKENS['acme']}"}
    hook = {"url": "https://93.184.215.14/acme", "secret": SECRET}
    assert http.put("/v1/webhook-endpoints/acme", json=hook, headers=acme).status_code == 403
    assert http.put("/v1/webhook-endpoints/acme", json={**hook, "url": "https://10.0.0.1/"},
                    headers=ops).status_code == 422
    assert http.put("/v1/webhook-endpoints/acme", json=hook, headers=ops).status_code == 200
    assert http.get("/v1/webhook-endpoints", headers=acme).json == {
        "items": [{"tenant": "acme", "url": hook["url"]}]}
    assert http.get("/v1/webhook-endpoints", headers={
        "Authorization": f"Bearer {TEST_TOKENS['globex']}"}).json == {"items": []}
    task = http.post("/v1/tasks", json=ECHO, headers=acme).json
    assert json.loads(client.hget(f"taskplane:task:{task['id']}", "notify"))["url"] == hook["url"]
    assert http.delete("/v1/webhook-endpoints/acme", headers=ops).status_code == 204
    assert http.delete("/v1/webhook-endpoints/acme", headers=ops).status_code == 404


def test_a_dead_letter_retry_keeps_the_tasks_webhook(http: FlaskClient, client: redis.Redis,
                                                     life: Any, flask_app: Any) -> None:
    from tests.workflows.test_workflow_scripts import fail

    hook = {"url": "https://93.184.215.14/hook", "secret": SECRET}
    task = http.post("/v1/tasks", json={**ECHO, "notify": hook}).json
    assert fail(flask_app, life, task["id"]) == "done"
    assert http.post(f"/v1/dead-letters/{task['id']}/retry").status_code == 202
    assert json.loads(client.hget(f"taskplane:task:{task['id']}", "notify"))["url"] == hook["url"]
