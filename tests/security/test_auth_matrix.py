"""Authentication on every route of the OpenAPI document, and isolation between tenants.

The routes come from ``GET /openapi.json`` (served without a token), so a route added
later is covered without touching this file. Every route but the probes, the metrics and
the document itself must answer 401 (with ``WWW-Authenticate: Bearer``, in the error
envelope, echoing nothing of what was sent) to a missing, malformed or unknown token, and
do nothing. The scheme name is case-insensitive (RFC 7235 section 2.1, which RFC 6750 uses):
``bearer <token>`` is accepted. A token of another tenant sees none of acme's tasks: 404,
the same answer as for an id that never existed.
"""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import PARKED
from tests.security.helpers import PUBLIC_ROUTES, assert_error
from tests.support.services import OPERATOR_TOKENS, TEST_TOKENS, Api

pytestmark = pytest.mark.security

ACME, GLOBEX = TEST_TOKENS["acme"], TEST_TOKENS["globex"]
OPS = OPERATOR_TOKENS["ops"]
UNKNOWN_ID = "0b6c2f0e-0000-4000-8000-000000000000"

#: Authorization values that must all be 401.
REFUSED = {
    "missing": None,
    "empty": "",
    "scheme-only": "Bearer",
    "basic-garbage": "Basic x",
    "basic-credentials": "Basic " + base64.b64encode(f"acme:{ACME}".encode()).decode(),
    "two-tokens": "Bearer a b",
    "token-and-extra": f"Bearer {ACME} extra",
    "other-scheme": f"Token {ACME}",
    "no-scheme": ACME,
    "wrong": "Bearer wrong-token-0123456789abcdef",
    "one-char-changed": f"Bearer {ACME[:-1]}{'0' if ACME[-1] != '0' else '1'}",
    "prefix": f"Bearer {ACME[:-1]}",
    "suffix": f"Bearer {ACME}x",
    "uppercased-token": f"Bearer {ACME.upper()}",
    "tenant-prefixed": f"Bearer acme:{ACME}",
    "comma-list": f"Bearer {ACME}, Bearer {ACME}",
    "very-long": "Bearer " + "a" * 6000,
    "non-ascii": "Bearer ÿacme",
    "operator-one-char-changed": f"Bearer {OPS[:-1]}{'0' if OPS[-1] != '0' else '1'}",
    "operator-prefix": f"Bearer {OPS[:-1]}",
    "operator-name-prefixed": f"Bearer ops:{OPS}",
}

#: Authorization values that must be accepted (scheme case-insensitive, 1*SP separator).
ACCEPTED = {
    "lowercase-scheme": f"bearer {ACME}",
    "uppercase-scheme": f"BEARER {ACME}",
    "mixed-case-scheme": f"BeArEr {ACME}",
    "two-spaces": f"Bearer  {ACME}",
    "operator": f"Bearer {OPS}",
}


def _routes(api: Api) -> list[tuple[str, str]]:
    doc = requests.get(api.base + "/openapi.json", timeout=10).json()
    return [(method.upper(), path) for path, ops in doc["paths"].items() for method in ops
            if method in ("get", "post", "put", "patch", "delete")]


@pytest.fixture(scope="module")
def routes(api: Api) -> list[tuple[str, str]]:
    found = _routes(api)
    assert len(found) >= 12 and {p for _, p in found} >= PUBLIC_ROUTES, found
    return found


@pytest.fixture(scope="module")
def protected(routes: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(m, p) for m, p in routes if p not in PUBLIC_ROUTES]


def _call(api: Api, method: str, template: str, authorization: str | None,
          task_id: str = UNKNOWN_ID) -> requests.Response:
    path = template.replace("{task_id}", task_id).replace("{data}", "auth-matrix")
    headers = {} if authorization is None else {"Authorization": authorization}
    body = None
    if method == "POST" and template == "/v1/tasks":
        headers["Content-Type"] = "application/json"
        body = json.dumps({"task": "test.echo", "kwargs": {"value": "auth"}, "queue": PARKED})
    # Its own connection: a session would reuse one a 401 may have left with an unread body.
    return requests.request(method, api.base + path, headers=headers, data=body, timeout=15)


@pytest.fixture(scope="module")
def acme_tasks(api: Api) -> Iterator[dict[str, str]]:
    """acme's tasks in the states another tenant might probe: waiting, finished, dead letter."""
    waiting = api.submit("test.echo", kwargs={"value": "acme's secret"}, queue=PARKED)
    done = api.submit("test.echo", kwargs={"value": "acme's result"})
    failed = api.submit("test.fail", kwargs={"message": "acme's failure"})
    api.wait_state(done["id"], "SUCCESS")
    api.wait_state(failed["id"], "FAILURE")
    yield {"waiting": waiting["id"], "done": done["id"], "dead": failed["id"]}


@pytest.mark.parametrize("variant", list(REFUSED))
def test_every_protected_route_refuses_bad_tokens(api: Api, protected: list[tuple[str, str]],
                                                  variant: str) -> None:
    authorization = REFUSED[variant]
    problems = []
    for method, template in protected:
        r = _call(api, method, template, authorization)
        try:
            err = assert_error(r, 401, "unauthorized")
            assert r.headers.get("WWW-Authenticate", "").startswith("Bearer"), r.headers
            if authorization and len(authorization) > 8:  # nothing of the credential comes back
                secret = authorization.split(" ", 1)[-1]
                assert secret not in r.text, "the presented credential is echoed"
            assert err["details"] is None or isinstance(err["details"], dict)
        except AssertionError as exc:
            problems.append(f"{method} {template}: {exc}")
    assert not problems, "\n".join(problems)


def test_refused_requests_change_nothing(api: Api, protected: list[tuple[str, str]],
                                        acme_tasks: dict[str, str]) -> None:
    """A 401 submits, revokes and retries nothing, even with real ids in the path."""
    before_waiting = api.get("/v1/queues").json()
    before_dead = api.get("/v1/dead-letters?limit=500").json()["total"]
    for variant in ("missing", "wrong", "basic-credentials", "other-scheme"):
        for method, template in protected:
            for task_id in acme_tasks.values():
                assert _call(api, method, template, REFUSED[variant], task_id).status_code == 401
    assert api.get(f"/v1/tasks/{acme_tasks['waiting']}").json()["state"] == "PENDING"
    assert api.get("/v1/dead-letters?limit=500").json()["total"] == before_dead
    parked = lambda q: next(i for i in q["items"] if i["name"] == PARKED)["waiting"]  # noqa: E731
    assert parked(api.get("/v1/queues").json()) == parked(before_waiting)


@pytest.mark.parametrize("variant", list(ACCEPTED))
def test_scheme_is_case_insensitive_and_spaces_are_1_or_more(
        api: Api, protected: list[tuple[str, str]], variant: str) -> None:
    problems = []
    for method, template in protected:
        r = _call(api, method, template, ACCEPTED[variant])
        if r.status_code == 401 or r.status_code >= 500:
            problems.append(f"{method} {template}: {r.status_code} {r.text[:200]}")
        elif template == "/start_task/{data}" and r.status_code == 200:
            # long_running_task runs 10 s on the session worker: stop it.
            api.delete(f"/v1/tasks/{r.json()['task_id']}?terminate=true")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Bearer {ACME}", "Basic x"])
def test_probes_metrics_and_document_need_no_token(api: Api, routes: list[tuple[str, str]],
                                                   authorization: str | None) -> None:
    public = [(m, p) for m, p in routes if p in PUBLIC_ROUTES]
    assert {p for _, p in public} == PUBLIC_ROUTES
    for method, path in public:
        r = _call(api, method, path, authorization)
        assert r.status_code == 200, f"{method} {path} with {authorization!r}: {r.status_code}"
        assert "WWW-Authenticate" not in r.headers


def _not_found(r: requests.Response, task_id: str, code: str) -> None:
    err = assert_error(r, 404, code)
    assert err["details"] == {"id": task_id}, err
    assert "acme" not in r.text, "another tenant's 404 names the owner"


@pytest.mark.parametrize("which", ["waiting", "done", "dead"])
def test_other_tenant_gets_404_exactly_like_an_unknown_id(api: Api, acme_tasks: dict[str, str],
                                                          which: str) -> None:
    task_id = acme_tasks[which]
    for method, template in [("GET", "/v1/tasks/{task_id}"), ("DELETE", "/v1/tasks/{task_id}"),
                             ("GET", "/task_status/{task_id}")]:
        theirs = _call(api, method, template, f"Bearer {GLOBEX}", task_id)
        unknown = _call(api, method, template, f"Bearer {GLOBEX}", UNKNOWN_ID)
        _not_found(theirs, task_id, "task_not_found")
        _not_found(unknown, UNKNOWN_ID, "task_not_found")
        assert theirs.json()["error"]["message"].replace(task_id, "X") == \
            unknown.json()["error"]["message"].replace(UNKNOWN_ID, "X")
        assert set(theirs.headers) == set(unknown.headers)
    # Still acme's, untouched: the DELETE above revoked nothing.
    mine = api.get(f"/v1/tasks/{task_id}").json()
    assert mine["state"] == {"waiting": "PENDING", "done": "SUCCESS", "dead": "FAILURE"}[which]


def test_other_tenant_cannot_retry_or_list_a_dead_letter(api: Api, acme_tasks: dict[str, str]) -> None:
    dead = acme_tasks["dead"]
    r = _call(api, "POST", "/v1/dead-letters/{task_id}/retry", f"Bearer {GLOBEX}", dead)
    _not_found(r, dead, "dead_letter_not_found")
    listing = api.get("/v1/dead-letters?limit=500", tenant="globex").json()
    assert dead not in {e["id"] for e in listing["items"]}
    mine = api.get("/v1/dead-letters?limit=500").json()
    assert dead in {e["id"] for e in mine["items"]}, "globex's retry consumed acme's dead letter"
    assert api.get(f"/v1/tasks/{dead}").json()["state"] == "FAILURE"


def test_idempotency_keys_are_per_tenant(api: Api) -> None:
    key = "shared-key-auth-matrix"
    mine = api.post("/v1/tasks", json={"task": "test.echo", "kwargs": {"value": 1}, "queue": PARKED},
                    headers={"Idempotency-Key": key})
    theirs = api.post("/v1/tasks", tenant="globex", headers={"Idempotency-Key": key},
                      json={"task": "test.echo", "kwargs": {"value": 2}, "queue": PARKED})
    assert mine.status_code == 202 and theirs.status_code == 202, (mine.text, theirs.text)
    assert mine.json()["id"] != theirs.json()["id"]
    assert "Idempotent-Replayed" not in theirs.headers
    assert api.get(f"/v1/tasks/{theirs.json()['id']}").status_code == 404


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every configured token is compared with hmac.compare_digest, whichever matches."""
    from taskplane.api import auth

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    tokens = {f"token-{i:02d}-0123456789abcdef": f"t{i}" for i in range(10)}
    for presented in ("token-00-0123456789abcdef", "token-09-0123456789abcdef", "x", "y" * 500):
        calls.clear()
        expected = tokens.get(presented)
        assert auth.match_token(tokens, presented) == expected
        assert len(calls) == len(tokens), f"{presented[:20]}: {len(calls)} comparisons"


# --- the operator role (API_ADMIN_TOKENS) ---------------------------------------------------


@pytest.mark.parametrize("which", ["waiting", "done", "dead"])
def test_an_operator_reads_any_tenants_task(api: Api, acme_tasks: dict[str, str],
                                            which: str) -> None:
    task_id = acme_tasks[which]
    theirs = api.get(f"/v1/tasks/{task_id}", tenant="ops")
    assert theirs.status_code == 200, theirs.text
    assert theirs.json() == api.get(f"/v1/tasks/{task_id}").json()
    assert _call(api, "GET", "/task_status/{task_id}", f"Bearer {OPS}", task_id).status_code == 200
    # and still 404 for what does not exist, like everyone
    _not_found(_call(api, "GET", "/v1/tasks/{task_id}", f"Bearer {OPS}", UNKNOWN_ID),
               UNKNOWN_ID, "task_not_found")


def test_an_operator_lists_every_tenants_dead_letters_with_their_tenant(
        api: Api, acme_tasks: dict[str, str]) -> None:
    globex_failed = api.submit("test.fail", tenant="globex", kwargs={"message": "globex's"})
    api.wait_state(globex_failed["id"], "FAILURE", tenant="globex")
    listing = api.get("/v1/dead-letters?limit=500", tenant="ops").json()
    tenants = {e["id"]: e["tenant"] for e in listing["items"]}
    assert tenants[acme_tasks["dead"]] == "acme"
    assert tenants[globex_failed["id"]] == "globex"
    assert listing["total"] >= 2
    # tenants keep seeing only their own, without a tenant field
    acme = api.get("/v1/dead-letters?limit=500").json()["items"]
    assert globex_failed["id"] not in {e["id"] for e in acme}
    assert all("tenant" not in e for e in acme)


def test_an_operator_revokes_and_retries_for_the_tasks_tenant(api: Api) -> None:
    waiting = api.submit("test.echo", kwargs={"value": "ops revokes"}, queue=PARKED)
    r = api.delete(f"/v1/tasks/{waiting['id']}", tenant="ops")
    assert r.status_code == 202, r.text
    assert api.get(f"/v1/tasks/{waiting['id']}").json()["state"] == "REVOKED"

    failed = api.submit("test.fail", kwargs={"message": "ops retries"})
    api.wait_state(failed["id"], "FAILURE")
    retried = api.post(f"/v1/dead-letters/{failed['id']}/retry", tenant="ops")
    assert retried.status_code == 202, retried.text
    # still acme's task: acme sees it run (and fail) again; globex still does not
    api.wait_state(failed["id"], "FAILURE")
    assert failed["id"] in {e["id"] for e in api.get("/v1/dead-letters?limit=500").json()["items"]}
    assert api.get(f"/v1/tasks/{failed['id']}", tenant="globex").status_code == 404


def test_an_operators_own_tasks_are_its_own_tenants(api: Api) -> None:
    mine = api.submit("test.echo", tenant="ops", kwargs={"value": "ops"}, queue=PARKED)
    assert api.get(f"/v1/tasks/{mine['id']}", tenant="ops").status_code == 200
    for tenant in ("acme", "globex"):
        assert api.get(f"/v1/tasks/{mine['id']}", tenant=tenant).status_code == 404


def test_operator_tokens_are_compared_in_constant_time_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A presented token meets every tenant and every operator token, whichever matches."""
    from taskplane.api import create_app
    from taskplane.settings import Settings

    settings = Settings.from_env({
        "API_TOKENS": ",".join(f"t{i}:tenant-token-{i:02d}-0123456789" for i in range(5)),
        "API_ADMIN_TOKENS": ",".join(f"o{i}:operator-token-{i:02d}-0123456789" for i in range(3)),
    })
    app = create_app(settings)
    from taskplane.api import auth

    calls: list[Any] = []
    real = hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest",
                        lambda a, b: calls.append(a) or real(a, b))
    client = app.test_client()
    for presented in ("tenant-token-00-0123456789", "operator-token-02-0123456789", "nope"):
        calls.clear()
        client.get("/v1/task-types", headers={"Authorization": f"Bearer {presented}"})
        assert len(calls) == 8, f"{presented}: {len(calls)} comparisons"
    assert client.get("/v1/task-types", headers={
        "Authorization": "Bearer operator-token-02-0123456789"}).status_code == 200
