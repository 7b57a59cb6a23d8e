"""Celery's canvas from a stock Celery 5 client (broker and backend URLs alone) on
Taskplane's workers: chain, group and chord give the results plain Celery gives, the
chord's callback run once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery, chain, chord, group

from tests.integration.test_tasks_api import counter, unique
from tests.support.services import Process, RedisServer, start_worker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stock() -> Iterator[tuple[Celery, RedisServer]]:
    redis_server = RedisServer().start()
    worker: Process | None = None
    try:
        worker = start_worker(redis_server.url, name="canvas", concurrency=3)
        app = Celery("stock", broker=redis_server.url, backend=redis_server.url)
        yield app, redis_server
        app.close()
    finally:
        if worker is not None:
            worker.stop()
        redis_server.close()


def test_a_stock_chain_passes_results_on(stock: tuple[Celery, RedisServer]) -> None:
    app, _ = stock
    echo = app.signature("test.echo", queue="default")
    result = chain(app.signature("test.echo", kwargs={"value": [1, []]}, queue="default"),
                   echo, echo).apply_async()
    assert result.get(timeout=60) == [1, []]
    assert result.parent.get(timeout=5) == [1, []]


def test_a_stock_group_gathers_results_in_order(stock: tuple[Celery, RedisServer]) -> None:
    app, _ = stock
    result = group(app.signature("test.echo", kwargs={"value": i}, queue="default")
                   for i in range(10)).apply_async()
    assert result.get(timeout=60) == list(range(10))


def test_a_stock_chord_runs_its_callback_once_with_every_result(
        stock: tuple[Celery, RedisServer]) -> None:
    app, redis_server = stock
    key = unique("chord")
    header = [app.signature("test.echo", kwargs={"value": i}, queue="default")
              for i in range(20)]
    callback = app.signature("test.collect", kwargs={"key": key}, queue="default")
    result = chord(header)(callback)
    assert result.get(timeout=90) == list(range(20))
    assert counter(redis_server, key) == 1
