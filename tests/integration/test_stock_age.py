"""Oldest age of messages a stock Celery client sent: they carry no enqueue time, so the
queue reads date them from the first read that saw them oldest in their list."""

from __future__ import annotations

import pytest
from celery import Celery

from taskplane import broker
from taskplane.exporter import QueueCollector
from taskplane.settings import Settings
from tests.support.services import RedisServer

pytestmark = pytest.mark.integration
QUEUE = "stock-age"
AGE = "taskplane_queue_oldest_waiting_age_seconds"


def send_stock(url: str, priority: int | None = None) -> str:
    """``send_task`` from a plain Celery app: no Taskplane header, only the broker URL."""
    app = Celery("stock", broker=url, set_as_current=False)
    try:
        options = {} if priority is None else {"priority": priority}
        return app.send_task("test.echo", kwargs={"value": 1}, queue=QUEUE, **options).id
    finally:
        app.close()


def test_a_stock_message_ages_from_the_first_read_that_saw_it(
        isolated_redis: RedisServer) -> None:
    from prometheus_client import CollectorRegistry

    client = isolated_redis.client()
    reader = broker.RedisBroker(client)
    send_stock(isolated_redis.url)
    clock = [1_000_000.0]
    collector = QueueCollector(reader, [QUEUE], clock=lambda: clock[0])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    assert registry.get_sample_value(AGE, {"queue": QUEUE}) == 0.0  # first seen now
    clock[0] += 45.0
    assert registry.get_sample_value(AGE, {"queue": QUEUE}) == pytest.approx(45.0)
    (stats,) = reader.queue_stats([QUEUE], clock[0] + 15.0)
    assert stats.waiting == 1 and stats.oldest_age(clock[0] + 15.0) == pytest.approx(60.0)

    # A second stock message behind it does not make the queue younger; once the first
    # leaves, the next tail is dated from the read that first finds it there.
    send_stock(isolated_redis.url)
    clock[0] += 10.0
    assert registry.get_sample_value(AGE, {"queue": QUEUE}) == pytest.approx(55.0)
    client.rpop(QUEUE)  # what a worker's BRPOP takes: the oldest
    clock[0] += 5.0
    assert registry.get_sample_value(AGE, {"queue": QUEUE}) == 0.0
    clock[0] += 30.0
    assert registry.get_sample_value(AGE, {"queue": QUEUE}) == pytest.approx(30.0)

    # Drained: nothing waits, the age is 0 and no first-seen entry is left behind.
    client.rpop(QUEUE)
    assert registry.get_sample_value(AGE, {"queue": QUEUE}) == 0.0
    assert client.hlen(broker.FIRST_SEEN_KEY) == 0


def test_a_stamped_message_keeps_its_enqueue_time_beside_stock_ones(
        isolated_redis: RedisServer) -> None:
    """Taskplane's own messages are dated by their header; the oldest of both counts."""
    from taskplane.celery_app import create_celery, submit

    app = create_celery(Settings.from_env({"REDIS_URL": isolated_redis.url,
                                           "QUEUES": QUEUE, "RATE_LIMIT": "0"}))
    accepted = submit(app, tenant="acme", name="long_running_task", args=["x"], kwargs={},
                      queue=QUEUE, priority=9)
    record = accepted.record
    assert record is not None
    send_stock(isolated_redis.url, priority=broker.transport_priority(5))  # another list
    reader = app.runtime.broker
    later = record.submitted_at + 100.0
    (stats,) = reader.queue_stats([QUEUE], later)
    assert stats.waiting == 2
    assert stats.oldest_age(later) == pytest.approx(100.0, abs=0.01)  # the stamped one
    assert isolated_redis.client().hlen(broker.FIRST_SEEN_KEY) == 1  # the stock one's list
