"""``?tenant=``: refused from a tenant's token; an operator's filters tasks, dead letters and
schedules alike and creates a schedule under that tenant. And two parameters refused
plainly: a number too long to parse, a dead-letter ``offset`` named as itself."""

from __future__ import annotations

import time

import pytest

from tests.conftest import PARKED
from tests.support.services import Api

pytestmark = pytest.mark.integration

SCHEDULE = {"name": "tenant-scope-check", "task": "test.echo", "every": 3600,
            "kwargs": {"value": 1}, "queue": PARKED}


def fields(r) -> list[str]:  # type: ignore[no-untyped-def]
    return [f["field"] for f in r.json()["error"]["details"]["fields"]]


def test_a_tenant_token_naming_a_tenant_is_refused(api: Api) -> None:
    for path in ("/v1/tasks", "/v1/dead-letters", "/v1/schedules"):
        for named in ("globex", "acme"):
            r = api.get(path, params={"tenant": named})
            assert r.status_code == 403, (path, r.text)
            assert r.json()["error"]["code"] == "forbidden" and fields(r) == ["tenant"]
    r = api.post("/v1/schedules", params={"tenant": "globex"}, json=SCHEDULE)
    assert r.status_code == 403


def test_an_operator_names_one_tenant_for_tasks_dead_letters_and_schedules(api: Api) -> None:
    since = time.time()
    ours = api.submit("test.echo", kwargs={"value": 1}, queue=PARKED)["id"]
    theirs = api.submit("test.echo", tenant="globex", kwargs={"value": 2}, queue=PARKED)["id"]
    everyone = api.get("/v1/tasks", tenant="ops", params={"submitted_after": since}).json()
    assert {t["id"] for t in everyone["items"]} == {ours, theirs}
    only = api.get("/v1/tasks", tenant="ops",
                   params={"submitted_after": since, "tenant": "globex"}).json()
    assert [(t["id"], t["tenant"]) for t in only["items"]] == [(theirs, "globex")]

    failed = api.submit("test.fail", tenant="globex")["id"]
    api.wait_state(failed, "FAILURE", tenant="globex")
    letters = api.get("/v1/dead-letters", tenant="ops", params={"tenant": "globex"}).json()
    assert failed in {e["id"] for e in letters["items"]}
    assert all(e["tenant"] == "globex" for e in letters["items"])
    none = api.get("/v1/dead-letters", tenant="ops", params={"tenant": "nobody"}).json()
    assert none["items"] == [] and none["total"] == 0

    created = api.post("/v1/schedules", tenant="ops", params={"tenant": "globex"}, json=SCHEDULE)
    assert created.status_code == 201, created.text
    try:
        mine = api.get("/v1/schedules", tenant="globex").json()["items"]
        assert SCHEDULE["name"] in {s["name"] for s in mine}  # globex's, not the operator's
        listed = api.get("/v1/schedules", tenant="ops", params={"tenant": "globex"}).json()
        assert [(s["name"], s["tenant"]) for s in listed["items"]] == \
            [(SCHEDULE["name"], "globex")]
        assert api.get("/v1/schedules", tenant="ops",
                       params={"tenant": "acme"}).json()["items"] == []
    finally:
        api.delete(f"/v1/schedules/{SCHEDULE['name']}", tenant="globex")
    assert api.get("/v1/tasks", tenant="ops", params={"tenant": "x" * 65}).status_code == 422


def test_numbers_too_long_to_parse_are_plain_refusals(api: Api) -> None:
    body = '{"task": "test.echo", "countdown": 1' + "0" * 5000 + "}"
    r = api.post("/v1/tasks", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    assert "int_max_str_digits" not in r.text and "digits" not in r.text
    malformed = api.post("/v1/tasks", data='{"task": "test.echo", "countdown": 1e999}',
                         headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400 and "out of range" in malformed.text
    assert "out of range" in r.text
    for path in ("/v1/tasks?limit=1" + "0" * 5000, "/v1/dead-letters?limit=1" + "0" * 5000,
                 "/v1/dead-letters?offset=1" + "0" * 5000):
        assert api.get(path).status_code == 422, path


def test_a_refused_dead_letter_offset_is_named_offset(api: Api) -> None:
    for offset in ("-1", "x", "1000001"):
        r = api.get("/v1/dead-letters", params={"offset": offset})
        assert r.status_code == 422 and fields(r) == ["offset"], r.text
    r = api.get("/v1/dead-letters", params={"offset": "x", "limit": "0"})
    assert fields(r) == ["limit", "offset"]
