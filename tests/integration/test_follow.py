"""Finding and following tasks: GET /v1/tasks, ?wait= and Server-Sent Events, against the
real API, workers and Redis."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from taskplane import lifecycle
from tests.conftest import PARKED
from tests.support.follow import followers_open, open_request, read_to_end, read_until
from tests.support.services import TEST_TOKENS, Api, RedisServer, wait_for

pytestmark = pytest.mark.integration


def listing(api: Api, tenant: str = "acme", **params: Any) -> dict[str, Any]:
    r = api.get("/v1/tasks", params=params, tenant=tenant)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def all_pages(api: Api, **params: Any) -> list[dict[str, Any]]:
    items, cursor = [], None
    for _ in range(100):
        page = listing(api, **params, **({"cursor": cursor} if cursor else {}))
        items += page["items"]
        cursor = page["next"]
        if cursor is None:
            return items
    raise AssertionError("more than 100 pages")


def test_listing_filters_orders_and_isolates_tenants(api: Api) -> None:
    since = time.time()
    parked = [api.submit("test.echo", kwargs={"value": i}, queue=PARKED)["id"] for i in range(3)]
    done = api.submit("test.echo", kwargs={"value": "run"})
    failed = api.submit("test.fail")
    api.wait_state(done["id"], "SUCCESS")
    api.wait_state(failed["id"], "FAILURE")
    mine = [t["id"] for t in listing(api, submitted_after=since)["items"]]
    assert mine == [failed["id"], done["id"], *reversed(parked)]  # newest first
    assert [t["id"] for t in listing(api, submitted_after=since, queue=PARKED)["items"]] == \
        list(reversed(parked))
    assert [t["id"] for t in listing(api, submitted_after=since, state="SUCCESS")["items"]] == \
        [done["id"]]
    assert [t["id"] for t in listing(api, submitted_after=since, state="FAILURE")["items"]] == \
        [failed["id"]]
    assert [t["id"] for t in listing(api, submitted_after=since, state="PENDING",
                                     task="test.echo")["items"]] == list(reversed(parked))
    success = listing(api, submitted_after=since, state="SUCCESS")["items"][0]
    assert success["result"] == "run" and success["links"]["self"].endswith(done["id"])
    iso = listing(api, submitted_after=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since)))
    assert {t["id"] for t in iso["items"]} >= set(mine)
    assert listing(api, submitted_before=since - 3600, submitted_after=since - 3601)["items"] == []
    theirs = {t["id"] for t in listing(api, tenant="globex", submitted_after=since)["items"]}
    assert theirs.isdisjoint(mine)


def test_pages_follow_the_cursor_while_tasks_are_added(api: Api) -> None:
    since = time.time()
    first = [api.submit("test.echo", kwargs={"value": i}, queue=PARKED)["id"] for i in range(7)]
    seen, cursor, added = [], None, []
    while True:
        page = listing(api, submitted_after=since, limit=2, **({"cursor": cursor} if cursor else {}))
        assert len(page["items"]) <= 2
        seen += [t["id"] for t in page["items"]]
        added.append(api.submit("test.echo", kwargs={"value": "late"}, queue=PARKED)["id"])
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == list(reversed(first))  # each once, in order; later tasks not mixed in
    assert [t["id"] for t in all_pages(api, submitted_after=since, limit=3)] == \
        list(reversed(first + added))


def test_listing_drops_tasks_whose_records_expired(api: Api, redis_server: RedisServer) -> None:
    since = time.time()
    ids = [api.submit("test.echo", kwargs={"value": i}, queue=PARKED)["id"] for i in range(3)]
    client = redis_server.client()
    client.delete(lifecycle.record_key(ids[1]))  # as its TTL would
    assert [t["id"] for t in listing(api, submitted_after=since)["items"]] == [ids[2], ids[0]]
    assert client.zscore(lifecycle.tasks_index_key("acme"), ids[1]) is None


def test_listing_refuses_bad_parameters(api: Api) -> None:
    for params in ({"state": "DONE"}, {"limit": "0"}, {"limit": "201"}, {"cursor": "x"},
                   {"submitted_after": "yesterday"}, {"task": "x" * 201}):
        r = api.get("/v1/tasks", params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["error"]["code"] == "validation_failed"


def test_wait_returns_as_soon_as_the_task_ends(api: Api) -> None:
    task = api.submit("test.slow", kwargs={"seconds": 1})
    started = time.monotonic()
    body = api.get(f"/v1/tasks/{task['id']}", params={"wait": 20}).json()
    elapsed = time.monotonic() - started
    assert body["state"] == "SUCCESS"
    assert elapsed < 10, elapsed  # woken by the ending, long before the deadline


def test_wait_returns_at_the_deadline_with_the_current_state(api: Api) -> None:
    task = api.submit("test.slow", kwargs={"seconds": 30})
    api.wait_state(task["id"], ("STARTED", "PROGRESS"))
    started = time.monotonic()
    body = api.get(f"/v1/tasks/{task['id']}", params={"wait": 1.5}).json()
    elapsed = time.monotonic() - started
    assert body["state"] in ("STARTED", "PROGRESS")
    assert 1.5 <= elapsed < 5, elapsed
    assert api.delete(f"/v1/tasks/{task['id']}?terminate=true").status_code == 202
    for bad in ("-1", "61", "nan", "soon"):
        assert api.get(f"/v1/tasks/{task['id']}", params={"wait": bad}).status_code == 422


def sse(api: Api, task_id: str) -> Iterator[dict[str, Any]]:
    with requests.get(f"{api.base}/v1/tasks/{task_id}/events", stream=True, timeout=30,
                      headers={"Authorization": f"Bearer {TEST_TOKENS['acme']}"}) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        event: dict[str, str] = {}
        for line in r.iter_lines(decode_unicode=True):
            if line == "":
                if event.get("event") == "state":
                    yield json.loads(event["data"])
                event = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                event[name] = value


def test_events_stream_each_progress_step_in_order_until_the_end(api: Api) -> None:
    task = api.submit("test.phases", kwargs={"before": 0.3, "seconds": 1.5})
    events = list(sse(api, task["id"]))
    states = [e["state"] for e in events]
    assert states[-1] == "SUCCESS" and events[-1]["result"] == "done"
    assert "PROGRESS" in states
    percents = [e["progress"]["percent"] for e in events if e["state"] == "PROGRESS"]
    assert len(percents) >= 3 and percents == sorted(percents)  # every step, in order
    order = [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]
    ranks = {"PENDING": 0, "STARTED": 1, "PROGRESS": 2, "SUCCESS": 3}
    assert [ranks[s] for s in order] == sorted(ranks[s] for s in order)


def test_an_operator_lists_every_tenants_tasks(api: Api) -> None:
    since = time.time()
    ours = api.submit("test.echo", kwargs={"value": 1}, queue=PARKED)["id"]
    theirs = api.submit("test.echo", tenant="globex", kwargs={"value": 2}, queue=PARKED)["id"]
    seen = {t["id"]: t["tenant"] for t in listing(api, tenant="ops", submitted_after=since)["items"]}
    assert seen == {theirs: "globex", ours: "acme"}
    assert all("tenant" not in t for t in listing(api, submitted_after=since)["items"])
    pending = listing(api, tenant="ops", submitted_after=since, state="PENDING")["items"]
    assert {t["id"] for t in pending} == {ours, theirs}


def _head_and_body(data: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return lines[0], {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}, body


def _dechunk(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body's data; fails unless it ends with the last, empty chunk."""
    data = b""
    while True:
        size, _, rest = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            assert rest == b"\r\n", "bytes after the last chunk"
            return data
        assert rest[n:n + 2] == b"\r\n", "a chunk not ended by CRLF"
        data, body = data + rest[:n], rest[n + 2:]


def test_a_detached_stream_sends_every_update_and_its_final_event_then_closes(api: Api) -> None:
    """Under gevent a stream's request ends once it follows; the process's hub writes its
    events (in HTTP/1.1 chunks, as gunicorn did) and ends the body, then closes."""
    task = api.submit("test.phases", kwargs={"before": 0.3, "seconds": 1.5})
    sock = open_request(api.base, f"/v1/tasks/{task['id']}/events",
                        headers={"Last-Event-ID": "41"})
    status, headers, chunked = _head_and_body(read_to_end(sock, 30))
    sock.close()
    body = _dechunk(chunked)
    assert status == "HTTP/1.1 200 OK"
    assert headers["connection"] == "close" and headers["cache-control"] == "no-store"
    assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    assert headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in body.decode().split("\n\n") if b]
    assert blocks[0].startswith("retry: ")  # the reconnection hint first
    events = [dict(ln.split(": ", 1) for ln in b.split("\n")) for b in blocks[1:]
              if not b.startswith(":")]
    assert [int(e["id"]) for e in events] == list(range(42, 42 + len(events)))  # ids go on
    states = [json.loads(e["data"])["state"] for e in events]
    assert states[-1] == "SUCCESS" and "PROGRESS" in states
    percents = [json.loads(e["data"])["progress"]["percent"] for e in events
                if json.loads(e["data"])["state"] == "PROGRESS"]
    assert len(percents) >= 3 and percents == sorted(percents)
    assert body.endswith(b"\n\n")  # closed after a whole event


def test_a_stream_read_in_chunks_gets_its_first_event_at_once(api: Api) -> None:
    """requests' ``iter_lines`` (urllib3 beneath) reads 512 bytes at a time unless the body
    is chunked: a stream whose first event is shorter would wait for keep-alive comments to
    fill the buffer (the CLI's ``taskplane wait`` printed nothing for minutes)."""
    parked = api.submit("test.echo", kwargs={"value": 1}, queue=PARKED)  # never runs
    started = time.monotonic()
    with requests.get(f"{api.base}/v1/tasks/{parked['id']}/events", stream=True,
                      timeout=(5, 5),  # a read that waits 5 s raises: keep-alive is 15 s
                      headers={"Authorization": f"Bearer {TEST_TOKENS['acme']}"}) as r:
        first = next(line for line in r.iter_lines() if line.startswith(b"data: "))
    assert json.loads(first[len(b"data: "):])["state"] == "PENDING"
    assert time.monotonic() - started < 5
    api.delete(f"/v1/tasks/{parked['id']}")


def test_a_detached_wait_is_answered_whole_and_closes_its_connection(api: Api) -> None:
    task = api.submit("test.slow", kwargs={"seconds": 1})
    sock = open_request(api.base, f"/v1/tasks/{task['id']}?wait=20")
    started = time.monotonic()
    status, headers, body = _head_and_body(read_to_end(sock, 30))
    sock.close()
    assert time.monotonic() - started < 10
    assert status == "HTTP/1.1 200 OK"
    assert headers["connection"] == "close" and headers["taskplane-wait"] == "waited"
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    answer = json.loads(body)
    assert answer["state"] == "SUCCESS" and answer["links"]["self"].endswith(task["id"])
    # the deadline: a parked task is answered as it is when the wait runs out
    parked = api.submit("test.echo", kwargs={"value": 1}, queue=PARKED)["id"]
    sock = open_request(api.base, f"/v1/tasks/{parked}?wait=1")
    started = time.monotonic()
    status, headers, body = _head_and_body(read_to_end(sock, 30))
    sock.close()
    assert 1 <= time.monotonic() - started < 5
    assert headers["taskplane-wait"] == "waited" and json.loads(body)["state"] == "PENDING"


def test_http10_followers_keep_their_greenlets_and_still_follow(api: Api) -> None:
    """A connection that cannot be handed over (here HTTP/1.0; also TLS, HTTP/2, HEAD) is
    followed as before, by its request's greenlet, to the same answers."""
    task = api.submit("test.echo", kwargs={"value": 1}, queue=PARKED)["id"]
    port = int(api.base.rsplit(":", 1)[1])

    def old_request(path: str) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(f"GET {path} HTTP/1.0\r\nAuthorization: Bearer {TEST_TOKENS['acme']}"
                     "\r\n\r\n".encode())
        return sock

    stream = old_request(f"/v1/tasks/{task}/events")
    first = read_until(stream, b"event: state")
    wait = old_request(f"/v1/tasks/{task}?wait=30")
    # both held by greenlets, not detached: gunicorn's own head (it names itself)
    assert first.startswith(b"HTTP/1.0 200") and b"\r\nServer: gunicorn" in first
    wait_for(lambda: followers_open(api.base, "wait") == 1, 10, "the wait following")
    assert api.delete(f"/v1/tasks/{task}").status_code == 202
    rest = read_to_end(stream, 10)
    assert b'"state":"REVOKED"' in rest and rest.endswith(b"\n\n")
    status, headers, body = _head_and_body(read_to_end(wait, 10))
    assert status == "HTTP/1.0 200 OK" and headers["server"] == "gunicorn"
    assert headers["taskplane-wait"] == "waited" and json.loads(body)["state"] == "REVOKED"
    stream.close()
    wait.close()
