"""Shared fixtures: real Redis, Celery worker and gunicorn processes, always torn down."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.services import Api, Process, RedisServer, start_worker

#: A queue the session worker does not consume: what is sent there waits.
PARKED = "parked"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


#: Logs of the session's long-lived processes, shown at the end of a run that failed.
_LOGS: dict[str, str] = {}


def _show_log_if_failed(request: pytest.FixtureRequest, proc: Process) -> None:
    _LOGS[proc.name] = proc.log()[-8000:]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if terminalreporter.stats.get("failed") or terminalreporter.stats.get("error"):
        for name, text in _LOGS.items():
            terminalreporter.write_sep("-", f"last lines of the {name} log")
            terminalreporter.write(text + "\n")


@pytest.fixture(scope="session")
def worker(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[Process]:
    proc = start_worker(redis_server.url, name="session", concurrency=3,
                        WORKER_QUEUES="default", QUEUES=PARKED)
    yield proc
    proc.stop()
    _show_log_if_failed(request, proc)


@pytest.fixture(scope="session")
def api(request: pytest.FixtureRequest, redis_server: RedisServer, worker: Process) -> Iterator[Api]:
    server = Api(redis_server.url, QUEUES=PARKED)
    yield server
    server.close()
    _show_log_if_failed(request, server.process)


@pytest.fixture
def isolated_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, for tests that stop or kill it."""
    server = RedisServer().start()
    yield server
    server.close()
