"""``api/detached.py`` and ``api/handoff.py`` without a server: which requests detach, the
WSGI wrapper's pass-through, and a client too slow to read being dropped (real sockets)."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import pytest

from taskplane.api import detached, handoff
from taskplane.api.gone import GoneWatch


class _Sock:
    def fileno(self) -> int:
        return 0


class _TlsSock(_Sock):
    def getpeercert(self) -> None:
        return None


def _environ(**changes: Any) -> dict[str, Any]:
    environ: dict[str, Any] = {"gunicorn.socket": _Sock(), "SERVER_PROTOCOL": "HTTP/1.1",
                               "REQUEST_METHOD": "GET", "CONTENT_LENGTH": ""}
    environ.update(changes)
    return {k: v for k, v in environ.items() if v is not None}


@pytest.mark.parametrize(("changes", "expected"), [
    ({}, True),
    ({"gunicorn.socket": None}, False),  # not under gunicorn (a test client)
    ({"gunicorn.socket": _TlsSock()}, False),
    ({"SERVER_PROTOCOL": "HTTP/1.0"}, False),
    ({"REQUEST_METHOD": "HEAD"}, False),
    ({"HTTP_VERSION": "2"}, False),
    ({"CONTENT_LENGTH": "5"}, False),
    ({"HTTP_TRANSFER_ENCODING": "chunked"}, False),
])
def test_only_plain_http11_gets_without_a_body_detach(changes: dict[str, Any],
                                                      expected: bool) -> None:
    assert handoff.detachable(_environ(**changes)) is expected


def test_consumed_raises_what_gunicorn_treats_as_a_taken_connection() -> None:
    with pytest.raises(StopIteration):
        handoff.consumed()


class _Following:
    kind = "events"

    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def _hub() -> detached.Hub:
    return detached.Hub(None, 1, json.dumps, GoneWatch(), lambda seconds: None)


def _follower(hub: detached.Hub, fd: int) -> tuple[detached.Detached, _Following]:
    follower = detached.Detached(hub, "/v1/tasks/t1")
    following = _Following()
    follower.following = following
    follower.fd = fd
    hub._all.add(follower)
    return follower, following


def _slow_pair() -> tuple[int, socket.socket]:
    """A non-blocking descriptor whose send buffer fills fast, and its peer (the client)."""
    ours, client = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    fd = ours.detach()
    os.set_blocking(fd, False)
    return fd, client


def test_a_client_that_reads_nothing_is_dropped_after_the_stall_limit() -> None:
    fd, client = _slow_pair()
    hub = _hub()
    follower, following = _follower(hub, fd)
    event = b"x" * 1024
    for _ in range(1000):  # until the socket takes no more
        hub._send(follower, event, 100.0)
        if follower.pending:
            break
    assert follower.pending and follower in hub._stalled
    hub._flush(100.0 + detached.STALL_LIMIT / 2)
    assert follower.fd == fd and hub.dropped == 0  # slow, not yet too slow
    hub._flush(100.0 + detached.STALL_LIMIT + 1)
    assert hub.dropped == 1 and follower.fd is None and following.closed == 1
    assert len(hub) == 0 and not hub._stalled
    with pytest.raises(OSError):
        os.fstat(fd)  # the descriptor is closed
    client.close()


def test_a_slow_client_gets_everything_before_its_stream_closes() -> None:
    fd, client = _slow_pair()
    hub = _hub()
    follower, following = _follower(hub, fd)
    sent = b"".join(bytes([65 + i % 26]) * 1024 for i in range(64))
    hub._send(follower, sent, 0.0)
    assert follower.pending  # more than the socket takes at once
    hub._end(follower)
    assert follower.finished and following.closed == 0  # closes once it is all out
    got = b""
    client.settimeout(5)
    while follower.fd is not None:
        got += client.recv(65536)
        hub._flush(1.0)
    got += b"".join(iter(lambda: client.recv(65536), b""))
    # one chunk, then the last (empty) one: the chunked body ends before the connection
    assert got == detached._chunk(sent) + detached.LAST_CHUNK
    assert following.closed == 1 and hub.dropped == 0
    client.close()


def test_the_wrapper_passes_a_refused_request_through_and_gives_its_slot_back() -> None:
    follower = detached.Detached(_hub(), "/v1/tasks/t1")
    following = _Following()
    follower.following = following

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ[detached.MARK] = follower
        start_response("429 TOO MANY REQUESTS", [("Content-Type", "application/json")])
        return [b"{}"]

    started: list[Any] = []
    wrapper = detached.Detaching(app, _hub())
    body = wrapper(_environ(), lambda *args: started.append(args))
    assert list(body) == [b"{}"] and started[0][0].startswith("429")
    assert following.closed == 1


def test_a_streams_timer_sends_a_keep_alive_then_ends_it_at_its_deadline() -> None:
    ours, client = socket.socketpair()
    fd = ours.detach()
    os.set_blocking(fd, False)
    hub = _hub()
    follower, following = _follower(hub, fd)
    follower.deadline = 100.0
    reads: dict[str, Any] = {}
    hub._look(follower, True, 50.0, reads)  # due before its deadline: a comment, next beat
    client.settimeout(5)
    assert client.recv(100) == b"e\r\n: keep-alive\n\n\r\n"  # one chunk of 14 bytes
    assert follower.due == min(50.0 + detached.sse.KEEPALIVE, 100.0) and not reads
    hub._look(follower, True, 100.0, reads)  # due at its deadline: the stream ends
    assert follower.fd is None and following.closed == 1 and not reads
    assert client.recv(100) == detached.LAST_CHUNK  # the body ends, whole events only
    assert client.recv(100) == b""  # then the connection closes
    client.close()
