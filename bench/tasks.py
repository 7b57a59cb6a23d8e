"""Tasks the benchmarks run, loaded into the API and the workers with ``TASK_MODULES=bench.tasks``.

``bench.noop`` does what the blog post's ``long_running_task`` does without its
10-second sleep (and without its two prints, which only cost log I/O): it returns
the same string, so the result each side stores is the same size.

``bench.sleep`` is the autoscaling experiment's task: it sleeps ``ms`` milliseconds
and counts its runs per task id in Redis (``HINCRBY``): ``bench:started`` when a run
begins and ``bench:completed`` when it ends, and the time it ended (``bench:finished_at``).
A task id with no completion was lost; one with two or more completions ran twice.
"""

from __future__ import annotations

import functools
import os
import time

import redis
from celery import current_task

from taskplane.tasks import task

STARTED_KEY = "bench:started"
COMPLETED_KEY = "bench:completed"
FINISHED_AT_KEY = "bench:finished_at"


@functools.cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["REDIS_URL"])


@task("bench.noop", schema={"properties": {"data": {"type": "string", "maxLength": 256}}})
def noop(data: str = "") -> str:
    """Do nothing; return what the blog post's task returns."""
    return f"Task completed successfully with data: {data}"


@task("bench.sleep",
      schema={"properties": {"ms": {"type": "integer", "minimum": 0, "maximum": 10000}},
              "required": ["ms"]},
      time_limit=30, soft_time_limit=25)
def sleep(ms: int) -> int:
    """Sleep ``ms`` milliseconds, counting the run's start and end under its task id."""
    task_id = current_task.request.id
    _redis().hincrby(STARTED_KEY, task_id, 1)
    time.sleep(ms / 1000.0)
    with _redis().pipeline(transaction=False) as pipe:
        pipe.hincrby(COMPLETED_KEY, task_id, 1)
        pipe.hset(FINISHED_AT_KEY, task_id, repr(time.time()))
        pipe.execute()
    return ms
