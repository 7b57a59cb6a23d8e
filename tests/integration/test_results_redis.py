"""RESULT_BACKEND_URL: results in a Redis of their own, records and queues in REDIS_URL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.services import Api, Process, RedisServer, start_worker, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def split_stack(isolated_redis: RedisServer) -> Iterator[tuple[Api, RedisServer, RedisServer]]:
    results = RedisServer().start()
    worker: Process | None = None
    api: Api | None = None
    try:
        worker = start_worker(isolated_redis.url, name="split", RESULT_BACKEND_URL=results.url)
        api = Api(isolated_redis.url, RESULT_BACKEND_URL=results.url)
        yield api, isolated_redis, results
    finally:
        if api is not None:
            api.close()
        if worker is not None:
            worker.stop()
        results.close()


def test_states_live_in_the_results_redis(split_stack: tuple[Api, RedisServer, RedisServer]) -> None:
    api, broker, results = split_stack
    task = api.submit("test.phases", kwargs={"before": 1.5, "seconds": 0.2})
    key = f"celery-task-meta-{task['id']}"
    seen: list[str] = []

    def done() -> bool:
        state = api.get(f"/v1/tasks/{task['id']}").json()["state"]
        seen.append(state)
        return state == "SUCCESS"

    wait_for(done, 30, "the task to succeed", interval=0.05)
    assert "STARTED" in seen  # written to the results Redis, not with the record
    assert results.client().exists(key) and not broker.client().exists(key)
    assert broker.client().exists(f"taskplane:task:{task['id']}")
