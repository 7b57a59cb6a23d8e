"""Metric values read in-process from each app's own registry (no scrape, no multiprocess
directory): the API's accepted counter, and the worker's signal handlers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from taskplane import broker, worker
from taskplane.api import create_app
from taskplane.settings import Settings
from tests.support.services import RedisServer

pytestmark = pytest.mark.integration


def test_an_accepted_submission_counts_on_the_apps_registry(isolated_redis: RedisServer) -> None:
    settings = Settings.from_env({"REDIS_URL": isolated_redis.url, "AUTH_DISABLED": "true",
                                  "TASK_MODULES": "tests.support.tasks", "RATE_LIMIT": "0"})
    app = create_app(settings)
    other = create_app(settings)
    client = app.test_client()
    for value in range(3):
        answer = client.post("/v1/tasks", json={"task": "test.echo", "kwargs": {"value": value}})
        assert answer.status_code == 202, answer.get_json()
    assert client.post("/v1/tasks", json={"task": "test.echo"}).status_code == 422
    registry = app.extensions["taskplane"].runtime.metrics.registry
    accepted = "taskplane_api_tasks_accepted_total"
    assert registry.get_sample_value(accepted, {"task": "test.echo"}) == 3
    assert registry.get_sample_value("taskplane_api_tasks_rejected_total",
                                     {"reason": "validation_failed"}) == 1
    assert registry.get_sample_value("taskplane_http_requests_total", {
        "route": "/v1/tasks", "method": "POST", "status": "202"}) == 3
    # The other app's series are its own: it counted nothing.
    assert other.extensions["taskplane"].runtime.metrics.registry.get_sample_value(
        accepted, {"task": "test.echo"}) is None
    redis = isolated_redis.client()  # the three really were queued (all priority lists)
    assert sum(redis.llen(key) for key in broker.queue_keys("default")) == 3


def test_the_worker_signals_count_on_the_worker_apps_registry(
        isolated_redis: RedisServer) -> None:
    app = worker.create_worker_app(Settings.from_env({
        "REDIS_URL": isolated_redis.url, "TASK_MODULES": "tests.support.tasks"}))
    registry = app.runtime.metrics.registry
    consumer = SimpleNamespace(app=app, hostname="w1@test")
    worker._on_worker_ready(sender=consumer)
    assert registry.get_sample_value("taskplane_worker_up", {"worker": "w1@test"}) == 1
    labels = {"task": "test.echo", "queue": "default"}
    for outcome in ("succeeded", "failed", "rejected"):  # zeroed, so rate() has a series
        assert registry.get_sample_value("taskplane_tasks_total",
                                         {**labels, "outcome": outcome}) == 0
    worker._on_rejected(sender=consumer)
    assert registry.get_sample_value("taskplane_tasks_total", {
        "task": "<unknown>", "queue": "<unknown>", "outcome": "rejected"}) == 1
    hook = app.runtime.on_dead_letter  # what the result backend calls
    assert hook is not None
    hook("test.echo", "some-id", "default")
    assert registry.get_sample_value("taskplane_tasks_total",
                                     {**labels, "outcome": "dead_lettered"}) == 1
    worker._on_worker_shutdown(sender=SimpleNamespace(app=app, hostname="w1@test"))
    assert registry.get_sample_value("taskplane_worker_up", {"worker": "w1@test"}) == 0
