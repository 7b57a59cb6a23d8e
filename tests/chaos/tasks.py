"""Tasks of the chaos suite, loaded with ``TASK_MODULES=tests.chaos.tasks`` (``BUILTIN_TASKS=false``).

Two differences from ``tests/support/tasks.py``:

* every hard time limit is a few seconds, so the suite may run with a short
  ``VISIBILITY_TIMEOUT`` (a setting that must stay above every task's hard limit);
* side effects are counted in a *ledger* Redis (``CHAOS_LEDGER_URL``), a second
  redis-server the faults never touch, so counts survive the broker being killed.

Ledger keys (hash fields are the ``key`` argument each test gives its tasks):

* ``chaos:started`` hash: runs entered; more than 1 means the task ran again.
* ``chaos:done`` hash: runs that reached the end of the body; more than 1 is a duplicate
  side effect (the task finished twice).
* ``chaos:last_start`` hash: epoch time of the latest run's start (redelivery delay).
* ``chaos:running:<pid>`` string: the key of the task the pool process ``pid`` is running,
  so a test can pick a victim mid-task.
"""

from __future__ import annotations

import os
import signal
import time

import redis

from taskplane.tasks import task

_client: redis.Redis | None = None


def ledger() -> redis.Redis:
    """The ledger client (redis-py's pool reconnects after a fork by itself)."""
    global _client
    if _client is None:
        url = os.environ.get("CHAOS_LEDGER_URL") or os.environ["REDIS_URL"]
        _client = redis.Redis.from_url(url, socket_timeout=5)
    return _client


def _started(key: str) -> None:
    pid = os.getpid()
    with ledger().pipeline(transaction=False) as pipe:
        pipe.hincrby("chaos:started", key, 1)
        pipe.hset("chaos:last_start", key, repr(time.time()))
        pipe.set(f"chaos:running:{pid}", key, ex=60)
        pipe.execute()


def _done(key: str) -> None:
    with ledger().pipeline(transaction=False) as pipe:
        pipe.hincrby("chaos:done", key, 1)
        pipe.delete(f"chaos:running:{os.getpid()}")
        pipe.execute()


@task(
    "chaos.work",
    schema={"properties": {"key": {"type": "string"},
                           "seconds": {"type": "number", "minimum": 0, "maximum": 4}},
            "required": ["key"]},
    time_limit=6,
    soft_time_limit=5,
)
def work(key: str, seconds: float = 0.0) -> str:
    """Count a start, sleep ``seconds``, count an end; returns ``key``."""
    _started(key)
    if seconds:
        time.sleep(seconds)
    _done(key)
    return key


@task("chaos.fail", schema={"properties": {"key": {"type": "string"}}, "required": ["key"]})
def fail(key: str) -> None:
    """Raise ValueError (not retryable): ends FAILURE and dead-lettered."""
    _started(key)
    raise ValueError(f"planned failure of {key}")


@task("chaos.hang", schema={"properties": {"key": {"type": "string"}}, "required": ["key"]},
      time_limit=2, soft_time_limit=1)
def hang(key: str) -> None:
    """Ignore the soft time limit and sleep past the hard one."""
    _started(key)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            time.sleep(0.1)
        except BaseException:  # the point: swallow SoftTimeLimitExceeded
            continue


@task("chaos.selfkill", schema={"properties": {"key": {"type": "string"}}, "required": ["key"]})
def selfkill(key: str) -> None:
    """SIGKILL the pool process running it, every time."""
    _started(key)
    os.kill(os.getpid(), signal.SIGKILL)


@task("chaos.unserializable", schema={"properties": {"key": {"type": "string"}},
                                      "required": ["key"]})
def unserializable(key: str) -> object:
    """Return something JSON cannot encode."""
    _started(key)
    return {1, 2, 3}
