"""A real redis-server and the API app (Flask's test client) bound to it, flushed per test.

Members are ended here by calling the lifecycle's transitions as a worker would (the
integration suite runs real workers): what these tests check is the scripts' counting.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from taskplane.api import create_app
from taskplane.lifecycle import Lifecycle
from taskplane.settings import Settings
from tests.support.services import RedisServer


@pytest.fixture(scope="package")
def wf_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture(scope="package")
def flask_app(wf_redis: RedisServer) -> Flask:
    return create_app(Settings.from_env({
        "REDIS_URL": wf_redis.url, "AUTH_DISABLED": "true", "RATE_LIMIT": "0",
        "TASK_MODULES": "tests.support.tasks", "WORKFLOW_MAX_GROUP": "50",
        "WORKFLOW_MAX_CHAIN": "5", "MAX_OPEN_TASKS_PER_TENANT": "60", "ACCESS_LOG": "false"}))


@pytest.fixture
def client(wf_redis: RedisServer) -> redis.Redis:
    raw = wf_redis.client()
    raw.flushdb()
    return raw


@pytest.fixture
def http(flask_app: Flask, client: redis.Redis) -> FlaskClient:
    return flask_app.test_client()


@pytest.fixture
def life(flask_app: Flask) -> Lifecycle:
    return flask_app.extensions["taskplane"].runtime.lifecycle  # type: ignore[no-any-return]


def queued(client: redis.Redis) -> list[dict[str, Any]]:
    """Every message waiting in any list, oldest first, each with its decoded body."""
    out = []
    for key in client.keys("default*"):
        for raw in reversed(client.lrange(key, 0, -1)):
            message = json.loads(raw)
            body = message["body"]
            if message["properties"].get("body_encoding") == "base64":
                body = base64.b64decode(body).decode()
            message["decoded"] = json.loads(body)
            out.append(message)
    return out
