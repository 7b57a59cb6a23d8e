"""A WSGI app for ``tests/integration/test_handoff.py``: it takes each request's connection
with ``taskplane.api.handoff`` and answers it later, from a greenlet of its own, after the
request has ended in gunicorn (the way detached followers do)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from taskplane.api import handoff

#: How long after the hand-off the answer is written: gunicorn has closed its socket by then.
LATER = 0.5
BODY = b"answered by the taker\n"


def _answer_later(fd: int) -> None:
    time.sleep(LATER)  # gevent's, under the worker's monkey-patching
    os.set_blocking(fd, True)
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\nConnection: close\r\n\r\n"
    os.write(fd, head.encode() + BODY)
    os.close(fd)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/plain":  # a request served by gunicorn as usual
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]
    import gevent

    assert handoff.detachable(environ)
    gevent.spawn(_answer_later, handoff.take(environ))
    handoff.consumed()
