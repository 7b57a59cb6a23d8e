"""gunicorn's async worker lets an application take a connection away (``api/handoff.py``).

Detached followers rely on what ``AsyncWorker.handle`` does with a ``StopIteration`` raised
by the WSGI callable: it closes its own socket object without writing, shutting the
connection down or reading another request from it. This runs the installed gunicorn's
``gevent`` worker on an app that takes each connection and answers it half a second
later; it fails if gunicorn changes any of that."""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest

from taskplane.api import handoff
from tests.support.follow import read_to_end
from tests.support.handoff_app import BODY, LATER
from tests.support.procs import LOOPBACK, ROOT, Proc, free_port, http_ok, wait_for

pytestmark = pytest.mark.integration


def test_the_installed_gunicorn_is_a_tested_one() -> None:
    assert handoff.supported()


def test_gunicorn_lets_a_taken_connection_be_answered_later() -> None:
    port = free_port()
    proc = Proc("handoff", [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1",
                            "--no-control-socket", "--log-level", "debug", "-b",
                            f"{LOOPBACK}:{port}", "tests.support.handoff_app:app"],
                dict(os.environ), cwd=ROOT, port=port, probe="/plain")
    try:
        wait_for(lambda: http_ok(f"http://{LOOPBACK}:{port}/plain"), 30, "gunicorn serving")
        sock = socket.create_connection((LOOPBACK, port), timeout=10)
        sent = time.monotonic()
        request = f"GET /take HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n"
        # a second request pipelined behind the first: gunicorn must not answer it
        sock.sendall((request + request.replace("/take", "/plain")).encode())
        data = read_to_end(sock, timeout=10)
        waited = time.monotonic() - sent
        head = (f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\n"
                "Connection: close\r\n\r\n").encode()
        # only the taker's bytes: gunicorn wrote nothing, and kept the connection open
        # (no shutdown) for the taker to answer after its own socket was closed
        assert data == head + BODY, data
        assert waited >= LATER
        log = proc.log()
        assert "Closing connection. connection taken over" in log, log[-2000:]
        assert "Error handling request" not in log and "Traceback" not in log, log[-2000:]
    finally:
        proc.stop()
