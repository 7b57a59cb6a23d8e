"""Hostile input, written by hand, through the real gunicorn: the right status, never a 500.

Everything the API answers is in the one error envelope
``{"error": {"code", "message", "details"}}``, including the requests gunicorn's HTTP
parser refuses before the application sees them (malformed framing, NUL bytes in
headers, an over-long request line): for those the tests also check that nothing
behind them was served.

Tasks that need not run are sent to the ``parked`` queue, which the session
worker does not consume.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.conftest import PARKED
from tests.security.helpers import (
    assert_error,
    assert_raw_error,
    bearer,
    fresh,
    raw_request,
)
from tests.support.services import TEST_TOKENS, Api

pytestmark = pytest.mark.security

MAX_BODY_BYTES = 1_048_576  # the default; the session API does not change it
AUTH = bearer("acme")
JSON = {**AUTH, "Content-Type": "application/json"}
TOKEN = TEST_TOKENS["acme"].encode()


def post_raw(api: Api, data: bytes, content_type: str | None = "application/json",
             **headers: str) -> requests.Response:
    h = {**AUTH, **headers}
    if content_type is not None:
        h["Content-Type"] = content_type
    return fresh(api, "POST", "/v1/tasks", data=data, headers=h)


def submit(api: Api, body: dict[str, Any], **headers: str) -> requests.Response:
    return fresh(api, "POST", "/v1/tasks", data=json.dumps(body), headers={**JSON, **headers})


def fields(err: dict[str, Any]) -> set[str]:
    return {f["field"] for f in err["details"]["fields"]}


@dataclass
class PathResponse:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def path_request(api: Api, method: str, path: str) -> PathResponse:
    """Send ``path`` exactly as written (no dot-segment removal, no re-quoting)."""
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=15)
    try:
        conn.request(method, path, headers=AUTH)
        resp = conn.getresponse()
        return PathResponse(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


# --- size ------------------------------------------------------------------------------


def test_body_over_max_body_bytes_is_413(api: Api) -> None:
    over = b'{"task": "test.echo", "kwargs": {"value": "' + b"x" * MAX_BODY_BYTES + b'"}}'
    assert_error(post_raw(api, over), 413, "payload_too_large")
    # One byte over is over; padding that makes it so still counts.
    body = b'{"task": "test.echo", "kwargs": {"value": 1}, "queue": "parked"}'
    assert_error(post_raw(api, body + b" " * (MAX_BODY_BYTES + 1 - len(body))), 413)
    r = post_raw(api, body + b" " * (MAX_BODY_BYTES - len(body)))
    assert r.status_code == 202, r.text


def test_chunked_body_over_max_body_bytes_is_413(api: Api) -> None:
    """A body without Content-Length (chunked) is bounded too, not cut at the limit and parsed."""
    body = b'{"task": "test.echo", "kwargs": {"value": 1}, "queue": "parked"}' + b" " * 3_000_000

    def chunks() -> Any:
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]

    r = fresh(api, "POST", "/v1/tasks", data=chunks(), headers=JSON)
    assert_error(r, 413, "payload_too_large")


def test_huge_body_of_the_wrong_type_is_refused(api: Api) -> None:
    r = post_raw(api, b"x" * (MAX_BODY_BYTES + 100_000), "text/plain")
    assert r.status_code in (413, 415), r.text
    assert_error(r, r.status_code)


def test_huge_content_length_is_413_before_reading(api: Api) -> None:
    r = raw_request(api, b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN
                    + b"\r\nContent-Type: application/json\r\nContent-Length: 99999999999999999999",
                    b"{}")
    assert_raw_error(r, 413, "payload_too_large")


# --- JSON syntax and encoding ------------------------------------------------------------


@pytest.mark.parametrize("depth", [65, 200, 100_000])
@pytest.mark.parametrize("opener,closer", [(b"[", b"]"), (b'{"a":', b"}")])
def test_deep_nesting_is_400(api: Api, depth: int, opener: bytes, closer: bytes) -> None:
    nested = opener * depth + b"1" + closer * depth
    r = post_raw(api, b'{"task": "test.echo", "kwargs": {"value": ' + nested + b"}}")
    assert_error(r, 400, "malformed_json")


def test_nesting_within_the_limit_and_brackets_in_strings_are_fine(api: Api) -> None:
    nested: Any = 1
    for _ in range(60):  # body object, kwargs and 60 lists: 62 levels
        nested = [nested]
    assert submit(api, {"task": "test.echo", "kwargs": {"value": nested}, "queue": PARKED}
                  ).status_code == 202
    brackets = "[{" * 50_000
    r = submit(api, {"task": "test.echo", "kwargs": {"value": brackets}, "queue": PARKED})
    assert r.status_code == 202, r.text


@pytest.mark.parametrize("raw", [
    b'{"task": "test.echo", "kwargs": {"value": "caf\xe9"}}',  # Latin-1
    '{"task": "test.echo", "kwargs": {"value": 1}}'.encode("utf-16"),  # UTF-16 with BOM
    b'{"task": "test.echo", "kwargs": {"value": "\xc0\xaf"}}',  # overlong "/"
    b'{"task": "test.echo", "kwargs": {"value": "\xed\xa0\x80"}}',  # encoded surrogate
    b'{"task": "test.echo", "kwargs": {"value": "\xff\xfe\xfd"}}',
    b'\xef\xbb\xbf{"task": "test.echo", "kwargs": {"value": 1}}',  # UTF-8 BOM (RFC 8259: MUST NOT)
], ids=["latin1", "utf16", "overlong", "surrogate-bytes", "invalid-bytes", "utf8-bom"])
def test_not_utf8_is_400(api: Api, raw: bytes) -> None:
    assert_error(post_raw(api, raw), 400, "malformed_json")


@pytest.mark.parametrize("raw", [
    b'{"task": "test.echo", "kwargs": {"value": NaN}}',
    b'{"task": "test.echo", "kwargs": {"value": Infinity}}',
    b'{"task": "test.echo", "kwargs": {"value": -Infinity}}',
    b'{"task": "test.echo", "kwargs": {"value": 1}, "countdown": NaN}',
    b'{"task": "test.echo", "kwargs": {"value": 1}, "priority": Infinity}',
    b'{"task": "test.echo", "args": [NaN]}',
], ids=["nan", "inf", "-inf", "countdown-nan", "priority-inf", "args-nan"])
def test_nan_and_infinity_are_400(api: Api, raw: bytes) -> None:
    assert_error(post_raw(api, raw), 400, "malformed_json")


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1.5e99999999999999999999"])
def test_numbers_that_overflow_to_infinity_are_refused(api: Api, number: bytes) -> None:
    """``1e400`` is JSON, but Python reads it as ``inf``: if accepted, the task's result is
    later served as ``Infinity``, which is not JSON (and not what the client sent)."""
    r = post_raw(api, b'{"task": "test.echo", "kwargs": {"value": ' + number
                 + b'}, "queue": "parked"}')
    assert r.status_code in (400, 422), f"{number!r} accepted: {r.status_code} {r.text[:200]}"
    assert_error(r, r.status_code)


@pytest.mark.parametrize("raw", [
    b'{"task": "test.echo", "kwargs": {"value": "a\x00b"}}',  # raw control character in a string
    b'{"task": "test.echo"\x00}',
    b"\x00",
    b'{"task": "test.echo", "kwargs": {"value": 1}',  # truncated
    b'{"task": "test.echo", "kwargs": {"value": 1}}}',  # trailing garbage
    b"]]]]}}}}" + b"[[[[{{{{" * 100,
    b"",
    b"{'task': 'test.echo'}",
], ids=["raw-nul-in-string", "nul-outside", "only-nul", "truncated", "trailing", "unbalanced",
        "empty", "single-quotes"])
def test_malformed_json_is_400(api: Api, raw: bytes) -> None:
    assert_error(post_raw(api, raw), 400, "malformed_json")


def test_integer_with_too_many_digits_is_400(api: Api) -> None:
    r = post_raw(api, b'{"task": "test.echo", "kwargs": {"value": ' + b"9" * 5000 + b"}}")
    assert_error(r, 400, "malformed_json")


@pytest.mark.parametrize("idempotency_key", [None, "lone-surrogate-key"])
def test_lone_surrogate_escape_is_never_a_500(api: Api, idempotency_key: str | None) -> None:
    r"""``"\ud800"`` is valid JSON syntax for a string Python cannot encode as UTF-8."""
    raw = b'{"task": "test.echo", "kwargs": {"value": "\\ud800"}, "queue": "parked"}'
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    r = post_raw(api, raw, **headers)
    assert r.status_code in (202, 400, 422), f"{r.status_code} {r.text[:200]}"
    if r.status_code != 202:
        assert_error(r, r.status_code)


# --- media types -------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/xml", "text/json", "application/jsonx", "application/json-seq", "json",
    ";;;===", "application/octet-stream", None,
])
def test_not_json_media_types_are_415(api: Api, content_type: str | None) -> None:
    r = post_raw(api, b'{"task": "test.echo", "kwargs": {"value": 1}}', content_type)
    assert_error(r, 415, "unsupported_media_type")


def test_json_media_type_variants_are_accepted(api: Api) -> None:
    body = b'{"task": "test.echo", "kwargs": {"value": 1}, "queue": "parked"}'
    for content_type in ("application/json", "APPLICATION/JSON", "application/json; charset=utf-8",
                         "application/vnd.taskplane+json"):
        assert post_raw(api, body, content_type).status_code == 202, content_type


# --- shape and arguments -----------------------------------------------------------------


def test_ten_thousand_args_are_422(api: Api) -> None:
    err = assert_error(submit(api, {"task": "test.echo", "args": list(range(10_000))}), 422,
                       "validation_failed")
    assert "args" in json.dumps(err["details"])
    err = assert_error(submit(api, {"task": "test.echo",
                                    "kwargs": {f"k{i}": i for i in range(10_000)}}), 422)
    assert "kwargs" in json.dumps(err["details"])


@pytest.mark.parametrize("body", [
    [], None, "task", 42, True, {"task": None}, {"task": 1}, {"task": ["test.echo"]},
    {"task": "test.echo", "args": {}}, {"task": "test.echo", "kwargs": []},
    {"task": "test.echo", "kwargs": {"value": 1}, "unknown": 1}, {"task": "x" * 201}, {"task": ""},
], ids=lambda v: repr(v)[:40])
def test_wrong_shapes_are_422(api: Api, body: Any) -> None:
    assert_error(submit(api, body), 422, "validation_failed")


@pytest.mark.parametrize("name", [
    "no.such.task", "celery.backend_cleanup", "celery.ping", "celery.chord_unlock",
    "celery.accumulate", "taskplane.worker", "TEST.ECHO", " test.echo", "test.echo ",
    "test.echo\u0000", "../../etc/passwd", "test.*", "x" * 200, "test.echo\n",
    "\uff54\uff45\uff53\uff54.echo",  # fullwidth "test"
])
def test_unknown_task_names_are_404_and_celery_internals_cannot_be_called(api: Api, name: str) -> None:
    err = assert_error(submit(api, {"task": name, "kwargs": {}}), 404, "unknown_task")
    assert err["details"]["task"] == name


# --- ids in paths ----------------------------------------------------------------------

TRAVERSALS = [
    "..", "%2e%2e", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "....%5C",
    "%252e%252e%252f", "..%5C..%5Cwindows", "*", "celery-task-meta-*", "taskplane:task:*",
    "%00", "a%00b", "abc%0A", "a%0D%0ASet-Cookie:%20x=1", "%ff%fe", "%C0%AE%C0%AE", "a" * 129,
    "a" * 6000, ".hidden", "-leading-dash", "%20", "~root", "$(id)", "'%20OR%201=1--",
]


@pytest.mark.parametrize("task_id", TRAVERSALS, ids=lambda s: s[:30])
def test_hostile_ids_are_404(api: Api, task_id: str) -> None:
    for method, path in [("GET", f"/v1/tasks/{task_id}"), ("DELETE", f"/v1/tasks/{task_id}"),
                         ("GET", f"/task_status/{task_id}"),
                         ("POST", f"/v1/dead-letters/{task_id}/retry")]:
        resp = path_request(api, method, path)
        body = resp.body
        assert resp.status == 404, f"{method} {path[:80]}: {resp.status} {body[:200]!r}"
        assert resp.headers.get("Content-Type", "").startswith("application/json")
        err = json.loads(body)["error"]
        assert set(err) == {"code", "message", "details"}
        assert resp.headers.get("Set-Cookie") is None


@pytest.mark.parametrize("path", ["/v1/tasks/../../etc/passwd", "/v1/tasks/a/b",
                                  "/task_status/../../", "/v1/dead-letters/../../x/retry",
                                  "/v1//tasks", "/v1/tasks/%2F", "/etc/passwd", "/v1/tasks/.%2e/"])
def test_paths_that_match_no_route_are_404_in_the_envelope(api: Api, path: str) -> None:
    resp = path_request(api, "GET", path)
    body = resp.body
    # 405: werkzeug merges "//" and finds a route without GET.
    assert resp.status in (404, 405), f"{path}: {resp.status} {body[:200]!r}"
    assert set(json.loads(body)["error"]) == {"code", "message", "details"}


@pytest.mark.parametrize("path", [b"/v1//queues", b"/v1/tasks//x", b"/task_status//x",
                                  b"/v1/dead-letters/x//retry"])
def test_double_slashes_answer_in_the_envelope_not_a_redirect_to_the_callers_host(
        api: Api, path: bytes) -> None:
    """werkzeug answers these with a 308 (HTML, before authentication) whose Location is
    built from the Host header the client sent: a redirect to any host it names."""
    r = raw_request(api, b"GET " + path + b" HTTP/1.1\r\nHost: evil.example\r\n"
                    b"Authorization: Bearer " + TOKEN)
    assert "evil.example" not in (r.header("Location") or ""), (r.status_lines, r.headers)
    assert_raw_error(r, r.status)
    assert r.status in (401, 404, 405), r.status_lines


def test_very_long_urls(api: Api) -> None:
    # Within gunicorn's request-line limit: the application answers, in the envelope.
    assert_error(api.get("/v1/tasks/" + "a" * 8000), 404, "task_not_found")
    assert_error(api.get("/v1/dead-letters?limit=" + "9" * 5000), 422, "validation_failed")
    assert_error(api.get("/v1/dead-letters?offset=1&" + "&".join(f"x{i}=1" for i in range(900))
                         + "&limit=0"), 422)
    # Past it, gunicorn refuses the request line itself (414) and the app never sees it.
    r = raw_request(api, b"GET /v1/tasks/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x")
    assert_raw_error(r, 414, "uri_too_long")


# --- headers -----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["k" * 256, "k" * 4000, "", "has space", "tab\there", "é-latin1"])
def test_bad_idempotency_keys_are_400(api: Api, key: str) -> None:
    body = {"task": "test.echo", "kwargs": {"value": 1}, "queue": PARKED}
    r = fresh(api, "POST", "/v1/tasks", data=json.dumps(body).encode(),
              headers={**JSON, "Idempotency-Key": key.encode("latin-1")})  # type: ignore[dict-item]
    assert_error(r, 400, "invalid_idempotency_key")


def test_longest_idempotency_key_is_accepted(api: Api) -> None:
    body = {"task": "test.echo", "kwargs": {"value": 1}, "queue": PARKED}
    key = "k" * 254 + "!"
    first = submit(api, body, **{"Idempotency-Key": key})
    assert first.status_code == 202, first.text
    again = submit(api, body, **{"Idempotency-Key": key})
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]


def test_header_injection_through_the_path_reaches_no_header(api: Api) -> None:
    r = raw_request(api, b"GET /v1/tasks/x%0D%0ASet-Cookie:%20pwned=1%0D%0AX-Injected:%201 HTTP/1.1"
                    b"\r\nHost: x\r\nAuthorization: Bearer " + TOKEN)
    assert_raw_error(r, 404, "task_not_found")
    assert r.header("Set-Cookie") is None and r.header("X-Injected") is None


def test_host_and_forwarded_headers_do_not_reach_the_location(api: Api) -> None:
    body = json.dumps({"task": "test.echo", "kwargs": {"value": 1}, "queue": PARKED}).encode()
    r = raw_request(api, b"POST /v1/tasks HTTP/1.1\r\nHost: evil.example\r\n"
                    b"X-Forwarded-Host: evil2.example\r\nX-Forwarded-Proto: gopher\r\n"
                    b"Authorization: Bearer " + TOKEN + b"\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode(), body)
    assert r.status == 202, r.body
    location = r.header("Location") or ""
    assert location.startswith("/v1/tasks/") and "evil" not in location and "gopher" not in location


def test_duplicate_authorization_headers_are_401(api: Api) -> None:
    for second in (b"Bearer nope", b"Bearer " + TOKEN):
        r = raw_request(api, b"GET /v1/queues HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN
                        + b"\r\nAuthorization: " + second)
        assert_raw_error(r, 401, "unauthorized")


@pytest.mark.parametrize("head", [
    b"GET /v1/queues HTTP/1.1\r\nHost: x\r\nX-A: a\x00b",  # NUL in a header
    b"GET /v1/queues HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer\r\n " + TOKEN,  # obs-fold
    b"GET /v1/tasks/\xff HTTP/1.1\r\nHost: x",  # raw non-ASCII in the request line
    b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3",
    b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: -1",
], ids=["nul-header", "obs-fold", "raw-non-ascii", "two-content-lengths", "negative-length"])
def test_malformed_http_is_refused_by_gunicorn(api: Api, head: bytes) -> None:
    r = raw_request(api, head, b"{}")
    assert_raw_error(r, 400, "bad_request")


def test_request_smuggling_is_refused(api: Api) -> None:
    """Content-Length and Transfer-Encoding together: refused, and the request hidden in the
    body is never served."""
    smuggled = b"0\r\n\r\nGET /v1/queues HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN + b"\r\n\r\n"
    r = raw_request(api, b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN
                    + b"\r\nContent-Type: application/json\r\nContent-Length: 5\r\n"
                    b"Transfer-Encoding: chunked", smuggled)
    assert len(r.status_lines) == 1, r.status_lines
    assert_raw_error(r, 400, "bad_request")


@pytest.mark.parametrize("count,size", [(150, 10), (1, 10_000)], ids=["many", "huge"])
def test_too_many_or_too_large_headers_are_refused(api: Api, count: int, size: int) -> None:
    extra = b"".join(b"X-%d: %s\r\n" % (i, b"a" * size) for i in range(count))
    r = raw_request(api, b"GET /v1/queues HTTP/1.1\r\nHost: x\r\n" + extra + b"Authorization: Bearer "
                    + TOKEN)
    assert r.status in (400, 431), r.status_lines
    assert_raw_error(r, r.status)


def test_unsupported_methods_are_405_in_the_envelope(api: Api) -> None:
    for method, path in [("PUT", "/v1/tasks"), ("PATCH", "/v1/tasks/x"), ("TRACE", "/v1/queues"),
                         ("POST", "/v1/queues"), ("DELETE", "/v1/task-types")]:
        r = api.request(method, path)
        assert_error(r, 405, "method_not_allowed")
        assert r.headers.get("Allow")
    r = raw_request(api, b"FOO /v1/queues HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN)
    assert_raw_error(r, 405)


# --- queue, countdown, priority ----------------------------------------------------------


@pytest.mark.parametrize("queue", [
    "défaut", "DEFAULT", "default\n", "default\u0000", "😀", "", " default", "default ",
    "\uff44\uff45\uff46\uff41\uff55\uff4c\uff54",  # fullwidth "default"
    "nosuchqueue", "parked:9", "default\x06\x169", "-x", "a" * 64, "a" * 10_000, 7, None,
], ids=lambda v: repr(v)[:30])
def test_unknown_or_invalid_queue_names_are_422(api: Api, queue: Any) -> None:
    err = assert_error(submit(api, {"task": "test.echo", "kwargs": {"value": 1}, "queue": queue}),
                       422, "validation_failed")
    assert "queue" in fields(err)


@pytest.mark.parametrize("countdown", [-1, -0.001, 86_401, 1e308, "5", True, [], {}, None],
                         ids=repr)
def test_out_of_range_countdowns_are_422(api: Api, countdown: Any) -> None:
    err = assert_error(submit(api, {"task": "test.echo", "kwargs": {"value": 1},
                                    "countdown": countdown, "queue": PARKED}), 422)
    assert "countdown" in fields(err)


@pytest.mark.parametrize("priority", [-1, 10, 2**63, -(2**63), 10**30, 5.5, "9", True, None, []],
                         ids=repr)
def test_out_of_range_priorities_are_422(api: Api, priority: Any) -> None:
    err = assert_error(submit(api, {"task": "test.echo", "kwargs": {"value": 1},
                                    "priority": priority, "queue": PARKED}), 422)
    assert "priority" in fields(err)


@pytest.mark.parametrize("extra", [{"countdown": 0}, {"countdown": 86_400}, {"countdown": 0.25},
                                   {"priority": 0}, {"priority": 9}], ids=repr)
def test_boundary_countdowns_and_priorities_are_accepted(api: Api, extra: dict[str, Any]) -> None:
    r = submit(api, {"task": "test.echo", "kwargs": {"value": 1}, "queue": PARKED, **extra})
    assert r.status_code == 202, r.text
    assert api.get(r.headers["Location"]).status_code == 200


def test_integral_float_priority_is_refused_or_works(api: Api) -> None:
    """JSON Schema counts 7.0 as an integer: if it is accepted, the task must be readable."""
    r = submit(api, {"task": "test.echo", "kwargs": {"value": 1}, "priority": 7.0, "queue": PARKED})
    if r.status_code == 422:
        assert_error(r, 422)
        return
    assert r.status_code == 202, r.text
    task_id = r.json()["id"]
    got = api.get(f"/v1/tasks/{task_id}")
    assert got.status_code == 200, f"GET after priority 7.0: {got.status_code} {got.text[:200]}"
    assert got.json()["priority"] == 7
    assert api.get(f"/task_status/{task_id}").status_code == 200
    assert api.delete(f"/v1/tasks/{task_id}").status_code == 202


# --- null bytes and unicode in task data --------------------------------------------------


def test_null_bytes_and_odd_unicode_in_arguments_round_trip(api: Api) -> None:
    value = {"nul": "a\u0000b", "rtl": "\u202eevil", "emoji": "😀", "nbsp": "\u00a0",
             "bom": "\ufeff", "long": "ä" * 10_000, "\u0000key": "v"}
    r = submit(api, {"task": "test.echo", "kwargs": {"value": value}})
    assert r.status_code == 202, r.text
    done = api.wait_state(r.json()["id"], ("SUCCESS", "FAILURE"))
    assert done["state"] == "SUCCESS" and done["result"] == value


def test_seed_route_with_hostile_data(api: Api) -> None:
    resp = path_request(api, "GET", "/start_task/..%2F..%2Fetc")  # "/" in data: no such route
    assert resp.status == 404 and set(resp.json()) == {"error"}
    for data in ["%00", "..", "%0D%0AX-Injected:%201", "%F0%9F%98%80", "a" * 7000]:
        resp = path_request(api, "GET", f"/start_task/{data}")
        body = resp.json()
        assert resp.status == 200 and "task_id" in body, (data[:40], resp.status, body)
        assert resp.headers.get("X-Injected") is None
        # Long-running task: revoke it so it does not hold the session worker.
        assert api.delete(f"/v1/tasks/{body['task_id']}?terminate=true").status_code in (202, 409)
