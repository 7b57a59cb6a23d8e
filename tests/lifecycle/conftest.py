"""A real redis-server of this package's own and a Celery app bound to it, flushed per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from taskplane.celery_app import create_celery, submit
from taskplane.lifecycle import Lifecycle
from taskplane.runtime import TaskplaneCelery
from taskplane.settings import Settings
from tests.support.services import RedisServer

#: A queue nothing consumes here: messages stay where the scripts put them.
QUEUE = "lifecycle"
TASK = "test.echo"
TENANT = "acme"


@pytest.fixture(scope="package")
def lifecycle_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


def make_app(server: RedisServer, **env: str) -> TaskplaneCelery:
    return create_celery(Settings.from_env({
        "REDIS_URL": server.url, "QUEUES": QUEUE, "TASK_MODULES": "tests.support.tasks", **env}))


@pytest.fixture(scope="package")
def app(lifecycle_redis: RedisServer) -> Iterator[TaskplaneCelery]:
    app = make_app(lifecycle_redis)
    yield app
    app.close()


@pytest.fixture
def client(lifecycle_redis: RedisServer) -> redis.Redis:
    """A plain client of the package's Redis (flushed), to inspect what the scripts wrote."""
    client = lifecycle_redis.client()
    client.flushdb()
    return client


@pytest.fixture
def life(app: TaskplaneCelery, client: redis.Redis) -> Lifecycle:
    return app.runtime.lifecycle


def accept(app: TaskplaneCelery, tenant: str = TENANT, **options: Any) -> str:
    """Submit a test task straight through the lifecycle; returns its id."""
    accepted = submit(app, tenant=tenant, name=TASK, args=[], kwargs={"value": 1},
                      queue=QUEUE, priority=5, **options)
    return accepted.task_id
