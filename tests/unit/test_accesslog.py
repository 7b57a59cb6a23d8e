"""The access log's fast writer: the same line logging would write, at a fraction of the cost,
and logging's configuration still obeyed."""

from __future__ import annotations

import io
import logging
import re
import timeit
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from taskplane import logs
from taskplane.api import accesslog

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO taskplane\.access: POST /v1/tasks 202 1\.2ms$")


@contextmanager
def basic_logging() -> Iterator[io.StringIO]:
    """The root logger as ``logs.configure`` leaves it, on a buffer.

    Entered in the test's body: pytest adds its own capturing handlers to the root logger
    for each phase, after fixtures are set up."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(logs.FORMAT))
    saved = logging.root.handlers, logging.root.level
    logging.root.handlers, logging.root.level = [handler], logging.INFO
    logging.getLogger("taskplane.access").setLevel(logging.NOTSET)
    try:
        yield stream
    finally:
        logging.root.handlers, logging.root.level = saved


def test_fast_line_is_the_line_logging_writes() -> None:
    with basic_logging() as stream:
        assert accesslog._plain(stream)
        accesslog.AccessLog(stream).line("POST", "/v1/tasks", 202, 1.234)
        accesslog.access.info("%s %s %d %.1fms", "POST", "/v1/tasks", 202, 1.234)
    fast, slow = stream.getvalue().splitlines()
    assert LINE.match(fast) and LINE.match(slow)
    assert fast.split(" ", 2)[2] == slow.split(" ", 2)[2]


def test_level_is_obeyed() -> None:
    with basic_logging() as stream:
        logging.root.level = logging.WARNING
        accesslog.AccessLog(stream).line("POST", "/v1/tasks", 202, 1.234)
    assert stream.getvalue() == ""


def test_other_handlers_get_the_line_through_logging(caplog: pytest.LogCaptureFixture) -> None:
    """pytest's handlers on the root logger: not basicConfig's set-up, so logging writes."""
    with caplog.at_level(logging.INFO, logger="taskplane.access"):
        accesslog.AccessLog(io.StringIO()).line("GET", "/v1/tasks/<task_id>", 404, 0.5)
    assert [r.getMessage() for r in caplog.records] == ["GET /v1/tasks/<task_id> 404 0.5ms"]


def test_fast_line_is_much_cheaper_than_logging() -> None:
    n = 2000
    with basic_logging() as stream:
        log = accesslog.AccessLog(stream)
        fast = min(timeit.repeat(lambda: log.line("POST", "/v1/tasks", 202, 1.2), number=n, repeat=3))
        slow = min(timeit.repeat(lambda: accesslog.access.info("%s %s %d %.1fms", "POST", "/v1/tasks",
                                                               202, 1.2), number=n, repeat=3))
    assert fast < slow / 2, (fast / n * 1e6, slow / n * 1e6)


def test_the_api_keeps_no_session() -> None:
    """One shared null session for every request: nothing is built or saved per request."""
    from flask import session
    from flask.sessions import NullSession

    from taskplane.api import NoSessions, TaskplaneFlask

    app = TaskplaneFlask("t")
    app.session_interface = NoSessions()
    seen = []

    @app.get("/")
    def index() -> str:
        seen.append(session._get_current_object())  # type: ignore[attr-defined]
        return "ok"

    client = app.test_client()
    for _ in range(2):
        response = client.get("/")
        assert response.status_code == 200 and "Set-Cookie" not in response.headers
    assert isinstance(seen[0], NullSession) and seen[0] is seen[1]
