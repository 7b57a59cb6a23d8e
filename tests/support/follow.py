"""Followers for tests: many open ``?wait`` requests and event streams on raw sockets.

A raw socket per follower costs the test nothing (no thread each), so a test can hold
hundreds, drop them all at once, and watch the API and Redis give everything back.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import redis

from tests.support.scrape import scrape, total
from tests.support.services import OPERATOR_TOKENS, TEST_TOKENS

#: The gauge of open followers, summed over the API's processes.
FOLLOWERS_OPEN = "taskplane_api_followers_open"


def _token(tenant: str) -> str:
    return TEST_TOKENS.get(tenant) or OPERATOR_TOKENS[tenant]


def open_request(base: str, path: str, tenant: str = "acme",
                 headers: dict[str, str] | None = None) -> socket.socket:
    """Send ``GET path`` on a fresh connection and return it unread."""
    parts = urlsplit(base)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}",
             f"Authorization: Bearer {_token(tenant)}", "Accept: text/event-stream"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def _read(sock: socket.socket, done: Callable[[bytes], bool], timeout: float,
          waited_for: str) -> bytes:
    """Bytes from ``sock`` until ``done(data)`` or the peer closes; fails after ``timeout``."""
    data = b""
    deadline = time.monotonic() + timeout
    while not done(data):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{waited_for} after {timeout}s; got {data[-300:]!r}")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_until(sock: socket.socket, marker: bytes, timeout: float = 10) -> bytes:
    """Bytes from ``sock`` until ``marker`` has arrived (or the peer closed)."""
    return _read(sock, lambda data: marker in data, timeout, f"no {marker!r}")


def read_to_end(sock: socket.socket, timeout: float = 10) -> bytes:
    """Bytes from ``sock`` until the peer closes it; fails after ``timeout`` seconds."""
    return _read(sock, lambda data: False, timeout, "still open")


def open_stream(base: str, task_id: str, tenant: str = "acme") -> socket.socket:
    """An event stream that has sent its first ``state`` event (so it is following)."""
    sock = open_request(base, f"/v1/tasks/{task_id}/events", tenant)
    head = read_until(sock, b"event: state")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return sock


def status_of(sock: socket.socket, timeout: float = 30) -> tuple[int, dict[str, str], Any]:
    """Status, headers and JSON body of a plain (non-streamed) answer on ``sock``."""
    data = read_until(sock, b"\r\n\r\n", timeout)
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    deadline = time.monotonic() + timeout
    while len(rest) < length and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), headers, json.loads(rest[:length] or b"null")


def followers_open(base: str, kind: str | None = None) -> float:
    samples = scrape(f"{base}/metrics")
    return total(samples, FOLLOWERS_OPEN, **({"kind": kind} if kind else {}))


def task_channels(client: redis.Redis) -> int:
    """Task result channels Redis has subscribers for."""
    return len(client.pubsub_channels("celery-task-meta-*"))


def pubsub_clients(client: redis.Redis) -> int:
    """Connections in pub/sub mode (``CLIENT LIST TYPE pubsub``)."""
    return len(client.client_list(_type="pubsub"))


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()
