"""Test-only tasks, loaded into the API and workers through ``TASK_MODULES``.

Side effects are counted in Redis (``INCR``) so tests can tell how many times a
task really ran, not just what its result says.
"""

from __future__ import annotations

import os
import signal
import time

import redis

from taskplane import redis_conn
from taskplane.settings import Settings
from taskplane.tasks import progress, task


class Transient(Exception):
    """A failure worth retrying."""


def _redis() -> redis.Redis:
    url = os.environ["REDIS_URL"]
    if redis_conn.is_sentinel(url):  # the master the sentinels name now (tests/ha)
        settings = Settings.from_env()
        return redis_conn.client(settings.redis_url, settings, patient=True)
    return redis.Redis.from_url(url)


def count(key: str) -> int:
    return int(_redis().incr(f"test:count:{key}"))


@task("test.echo", schema={"properties": {"value": {}}, "required": ["value"]})
def echo(value: object) -> object:
    """Return the argument."""
    return value


@task("test.count", schema={"properties": {"key": {"type": "string"}}, "required": ["key"]})
def count_task(key: str) -> int:
    """Count one run under ``key``."""
    return count(key)


@task("test.fail", schema={"properties": {"message": {"type": "string"}}})
def fail(message: str = "boom") -> None:
    """Always raise ValueError (not retried)."""
    raise ValueError(message)


@task(
    "test.flaky",
    schema={"properties": {"key": {"type": "string"}, "failures": {"type": "integer"}},
            "required": ["key", "failures"]},
    retry_for=(Transient,),
    max_retries=3,
    retry_backoff_max=1,
)
def flaky(key: str, failures: int) -> int:
    """Raise Transient for the first ``failures`` runs, then succeed."""
    n = count(key)
    if n <= failures:
        raise Transient(f"run {n} of {failures} planned failures")
    return n


@task(
    "test.slow",
    schema={"properties": {"seconds": {"type": "number"}, "key": {"type": "string"}},
            "required": ["seconds"]},
    time_limit=600,
    soft_time_limit=590,
)
def slow(seconds: float, key: str = "") -> str:
    """Sleep in small steps, reporting progress; counts its runs under ``key``."""
    if key:
        count(key)
    _sleep_reporting(seconds)
    return "slept"


def _sleep_reporting(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        progress(100 * (seconds - left) / seconds, "sleeping")
        time.sleep(min(0.1, left))


@task("test.hang", schema={"properties": {}}, time_limit=2, soft_time_limit=1)
def hang() -> None:
    """Ignore the soft limit and sleep past the hard one."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            time.sleep(0.1)
        except BaseException:
            continue


@task("test.selfkill", schema={"properties": {"key": {"type": "string"}}})
def selfkill(key: str = "") -> None:
    """SIGKILL the pool process running it."""
    if key:
        count(key)
    os.kill(os.getpid(), signal.SIGKILL)


@task("test.unserializable", schema={"properties": {}})
def unserializable() -> object:
    """Return something JSON cannot encode."""
    return {1, 2, 3}


@task(
    "test.phases",
    schema={"properties": {"before": {"type": "number"}, "seconds": {"type": "number"},
                           "key": {"type": "string"}}},
    time_limit=600,
    soft_time_limit=590,
)
def phases(before: float = 1.0, seconds: float = 1.0, key: str = "") -> str:
    """Stay STARTED for ``before`` seconds, then report PROGRESS for ``seconds``."""
    if key:
        count(key)
    time.sleep(before)
    _sleep_reporting(seconds)
    return "done"


@task("test.fail_once", schema={"properties": {"key": {"type": "string"}}, "required": ["key"]})
def fail_once(key: str) -> int:
    """Fail (not retried) on the first run under ``key``; succeed on every later one."""
    n = count(key)
    if n == 1:
        raise ValueError("the first run fails")
    return n


@task("test.collect", schema={"properties": {"results": {"type": "array"},
                                             "key": {"type": "string"}},
                              "required": ["results", "key"]})
def collect(results: list[object], key: str) -> list[object]:
    """A workflow callback: counts its runs under ``key`` and returns what it was given."""
    count(key)
    return results
