"""A worker's soft shutdown (``REMAP_SIGTERM=SIGQUIT``) ends when its tasks end, not after
the whole ``WORKER_SOFT_SHUTDOWN_TIMEOUT``, and nothing it finished runs again."""

from __future__ import annotations

import signal
import time
from collections.abc import Set as AbstractSet

import pytest
from celery.apps.worker import Worker
from celery.worker import state

from tests.integration.test_tasks_api import unique
from tests.support.services import Api, RedisServer, start_worker

pytestmark = pytest.mark.integration

SOFT_TIMEOUT = 10


def test_the_celery_hooks_the_soft_shutdown_relies_on_exist() -> None:
    """taskplane.worker.TaskplaneWorker overrides these; fail loudly if Celery moves them."""
    from celery.worker.worker import WorkController

    assert "wait_for_soft_shutdown" in vars(WorkController)
    assert issubclass(Worker, WorkController)
    assert isinstance(state.active_requests, AbstractSet)  # a WeakSet of requests


def test_soft_shutdown_ends_when_the_running_task_ends(isolated_redis: RedisServer) -> None:
    api = Api(isolated_redis.url, workers=1)
    env = {"REMAP_SIGTERM": "SIGQUIT", "WORKER_SOFT_SHUTDOWN_TIMEOUT": str(SOFT_TIMEOUT)}
    worker = start_worker(isolated_redis.url, name="soft", concurrency=1, **env)
    try:
        key = unique("soft")
        task = api.submit("test.slow", kwargs={"seconds": 2, "key": key})
        api.wait_state(task["id"], ("STARTED", "PROGRESS"))
        started = time.monotonic()
        code = worker.stop(signal.SIGTERM, timeout=SOFT_TIMEOUT + 20)
        took = time.monotonic() - started
        assert code == 0
        assert took < SOFT_TIMEOUT - 2, f"waited {took:.1f}s: the whole soft timeout"
        assert api.get(f"/v1/tasks/{task['id']}").json()["state"] == "SUCCESS"
        # a new worker receives nothing of it again, or skips it: it ran once
        worker = start_worker(isolated_redis.url, name="after", concurrency=1)
        marker = api.submit("test.echo", kwargs={"value": 1})
        api.wait_state(marker["id"], "SUCCESS")
        assert int(isolated_redis.client().get(f"test:count:{key}") or 0) == 1
    finally:
        worker.stop()
        api.close()
