"""The bytes of a task's event stream, written by a greenlet-held stream (``follow.py``) and
by the hub of detached followers (``detached.py``) alike."""

from __future__ import annotations

import json

#: A comment line this often keeps proxies from closing an idle stream.
KEEPALIVE = 15.0
KEEPALIVE_COMMENT = b": keep-alive\n\n"


def compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def retry(retry_after: int) -> bytes:
    """How long an SSE client waits before it reconnects."""
    return f"retry: {retry_after * 1000}\n\n".encode()


def state(n: int, body: str) -> bytes:
    """The ``n``-th ``state`` event, ``body`` the task's representation as compact JSON."""
    return f"id: {n}\nevent: state\ndata: {body}\n\n".encode()


def unavailable(task_id: str, retry_after: int) -> bytes:
    """The last event of a stream whose Redis went away: reconnect after the hint."""
    error = {"code": "broker_unavailable", "message": "Redis is unreachable; reconnect "
             "after retry_after seconds", "id": task_id, "retry_after": retry_after}
    return (f"retry: {retry_after * 1000}\nevent: error\n"
            f"data: {compact(error)}\n\n").encode()
