"""``/v1/schedules`` through real gunicorn: validation at write (422 naming the field),
tenant isolation, and the fire state a GET shows once a real scheduler has fired."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.support.services import (
    TEST_TOKENS,
    Api,
    Process,
    RedisServer,
    start_scheduler,
    wait_for,
)

#: An operator's token: tenant ``system``, which owns the schedules declared in code.
SYSTEM = {"Authorization": "Bearer system-token-0123456789abcdef"}


@pytest.fixture(scope="module")
def sched_api(sched_redis: RedisServer, sched_worker: Process) -> Iterator[Api]:
    tokens = ",".join(f"{t}:{tok}" for t, tok in {
        **TEST_TOKENS, "system": SYSTEM["Authorization"].split()[1]}.items())
    server = Api(sched_redis.url, workers=1, threads=4, API_TOKENS=tokens,
                 TASK_MODULES="tests.support.tasks,tests.support.schedules")
    yield server
    server.close()


GOOD = {"name": "echo-often", "task": "test.count", "kwargs": {"key": "api-often"},
        "every": 1}


def fields_of(response: Any) -> list[str]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"]["code"] == "validation_failed"
    return [f["field"] for f in body["error"]["details"]["fields"]]


@pytest.mark.parametrize(("change", "field"), [
    ({"cron": "*/5 * * *", "every": None}, "cron"),
    ({"cron": "0 3 * * *", "every": None, "timezone": "Atlantis/Capital"}, "timezone"),
    ({"kwargs": {"key": 5}}, "kwargs.key"),
    ({"kwargs": {}}, "kwargs.key"),
    ({"task": "test.no_such_task"}, "task"),
    ({"overlap": "maybe"}, "overlap"),
    ({"catch_up": "everything"}, "catch_up"),
    ({"every": 0}, "every"),
    ({"queue": "nowhere"}, "queue"),
    ({"surprise": 1}, "body"),
])
def test_a_bad_schedule_is_refused_at_write_naming_the_field(
        sched_api: Api, r: redis.Redis, change: dict[str, Any], field: str) -> None:
    response = sched_api.post("/v1/schedules", json={**GOOD, **change})
    assert field in fields_of(response)
    assert sched_api.get(f"/v1/schedules/{GOOD['name']}").status_code == 404  # nothing stored


def test_a_patch_is_checked_in_full_too(sched_api: Api, r: redis.Redis) -> None:
    assert sched_api.post("/v1/schedules", json={**GOOD, "enabled": False}).status_code == 201
    r2 = sched_api.request("PATCH", f"/v1/schedules/{GOOD['name']}",
                           json={"kwargs": {"key": 1}})
    assert fields_of(r2) == ["kwargs.key"]
    r3 = sched_api.request("PATCH", f"/v1/schedules/{GOOD['name']}",
                           json={"cron": "30 2 * * *", "timezone": "Europe/Berlin"})
    assert r3.status_code == 200, r3.text
    assert (r3.json()["cron"], r3.json()["every"]) == ("30 2 * * *", None)
    assert r3.json()["next_fire_at"] is None  # disabled


def test_tenants_see_and_touch_only_their_own_schedules(sched_api: Api, r: redis.Redis) -> None:
    assert sched_api.post("/v1/schedules", json={**GOOD, "enabled": False}).status_code == 201
    assert sched_api.post("/v1/schedules", json={**GOOD, "enabled": False}).status_code == 409
    name = GOOD["name"]
    assert sched_api.get(f"/v1/schedules/{name}", tenant="globex").status_code == 404
    assert sched_api.get("/v1/schedules", tenant="globex").json()["items"] == []
    assert sched_api.request("PATCH", f"/v1/schedules/{name}", tenant="globex",
                             json={"enabled": True}).status_code == 404
    assert sched_api.delete(f"/v1/schedules/{name}", tenant="globex").status_code == 404
    # globex may use the same name: its own schedule, not acme's
    assert sched_api.post("/v1/schedules", tenant="globex",
                          json={**GOOD, "every": 7, "enabled": False}).status_code == 201
    assert sched_api.get(f"/v1/schedules/{name}").json()["every"] == 1
    assert [s["name"] for s in sched_api.get("/v1/schedules").json()["items"]] == [name]
    assert sched_api.delete(f"/v1/schedules/{name}").status_code == 204
    assert sched_api.get(f"/v1/schedules/{name}", tenant="globex").json()["every"] == 7
    assert sched_api.get(f"/v1/schedules/{name}", tenant=None).status_code == 401


def test_get_shows_last_and_next_fire_and_the_last_task(
        sched_api: Api, sched_redis: RedisServer, r: redis.Redis) -> None:
    created = sched_api.post("/v1/schedules", json=GOOD)
    assert created.status_code == 201, created.text
    assert created.headers["Location"].endswith(f"/v1/schedules/{GOOD['name']}")
    assert created.json()["last_task"] is None and created.json()["fires"] == 0
    proc = start_scheduler(sched_redis.url, name="api", SCHEDULER_INTERVAL="0.2")
    try:
        shown = wait_for(lambda: (b := sched_api.get(f"/v1/schedules/{GOOD['name']}").json())
                         ["fires"] >= 2 and b, 15, "two fires shown")
    finally:
        proc.stop()
    assert shown["last_fired_at"] and shown["last_tick_at"] and shown["next_fire_at"]
    assert shown["next_fire_at"] > shown["last_tick_at"]
    task = shown["last_task"]
    assert task["state"] in ("PENDING", "STARTED", "SUCCESS")
    assert sched_api.get(task["links"]["self"].removeprefix(sched_api.base)).json()[
        "task"] == "test.count"
    final = sched_api.wait_state(task["id"], "SUCCESS")
    assert final["id"] == task["id"]


def test_operators_see_the_schedules_declared_in_code_read_only(sched_api: Api,
                                                                r: redis.Redis) -> None:
    name = "declared-every-second"
    listed = sched_api.get("/v1/schedules", tenant=None, headers=SYSTEM).json()["items"]
    assert [(s["name"], s["source"]) for s in listed] == [(name, "code")]
    shown = sched_api.get(f"/v1/schedules/{name}", tenant=None, headers=SYSTEM).json()
    assert shown["every"] == 1 and shown["kwargs"] == {"key": name}
    assert sched_api.get(f"/v1/schedules/{name}").status_code == 404  # a tenant does not
    for method, body in (("PATCH", {"enabled": False}), ("DELETE", None)):
        answer = sched_api.request(method, f"/v1/schedules/{name}", tenant=None,
                                   headers=SYSTEM, json=body)
        assert answer.status_code == 409 and \
            answer.json()["error"]["code"] == "declared_in_code", answer.text
    again = sched_api.post("/v1/schedules", tenant=None, headers=SYSTEM,
                           json={**GOOD, "name": name})
    assert again.status_code == 409


def test_an_operator_sees_every_tenants_schedules(sched_api: Api, r: redis.Redis) -> None:
    body = {**GOOD, "name": "operator-view", "enabled": False}
    assert sched_api.post("/v1/schedules", json=body, tenant="globex").status_code == 201
    listed = {(s["tenant"], s["name"]) for s in
              sched_api.get("/v1/schedules", tenant="ops").json()["items"]}
    assert ("globex", "operator-view") in listed
    one = sched_api.get("/v1/schedules/operator-view", params={"tenant": "globex"}, tenant="ops")
    assert one.status_code == 200 and one.json()["name"] == "operator-view"
    # a tenant's token may not name a tenant: refused, never silently ignored
    assert sched_api.get("/v1/schedules/operator-view", params={"tenant": "globex"},
                         tenant="acme").status_code == 403
    assert sched_api.delete("/v1/schedules/operator-view", params={"tenant": "globex"},
                            tenant="ops").status_code == 204
    assert sched_api.get("/v1/schedules/operator-view", tenant="globex").status_code == 404


def test_one_schedule_over_the_tenants_cap_is_429_like_the_task_cap(
        sched_redis: RedisServer, r: redis.Redis) -> None:
    capped = Api(sched_redis.url, workers=1, threads=2, MAX_SCHEDULES_PER_TENANT="2",
                 TASK_MODULES="tests.support.tasks")
    try:
        for n in range(2):
            made = capped.post("/v1/schedules", json={**GOOD, "name": f"capped-{n}",
                                                      "enabled": False})
            assert made.status_code == 201, made.text
        refused = capped.post("/v1/schedules", json={**GOOD, "name": "capped-2", "enabled": False})
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "too_many_schedules"
        assert refused.json()["error"]["details"] == {"limit": 2}
        assert int(refused.headers["Retry-After"]) > 0
        assert capped.get("/v1/schedules/capped-2").status_code == 404  # nothing stored
        assert capped.post("/v1/schedules", tenant="globex",
                           json={**GOOD, "enabled": False}).status_code == 201  # per tenant
        assert capped.delete("/v1/schedules/capped-0").status_code == 204
        again = capped.post("/v1/schedules", json={**GOOD, "name": "capped-2", "enabled": False})
        assert again.status_code == 201, again.text
    finally:
        capped.close()
