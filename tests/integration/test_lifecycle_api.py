"""The lifecycle's guarantees through the real API and workers: concurrent requests, a
revoke racing a worker's start, a Redis that stalls past the API's timeout, and a Redis
restart under running and finished tasks. (A restart under a stream of submissions is
chaos fault 4, whose ledger lives on a Redis the fault does not touch.)"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.integration.test_tasks_api import counter, unique
from tests.support.services import (
    TEST_TOKENS,
    Api,
    Process,
    RedisServer,
    start_worker,
    wait_for,
)

pytestmark = pytest.mark.integration

RACERS = 8


def api_auth() -> str:
    return f"Bearer {TEST_TOKENS['acme']}"


def at_once(call: Callable[[], requests.Response], n: int = RACERS) -> list[requests.Response]:
    barrier = threading.Barrier(n)

    def run(_: int) -> requests.Response:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def settle(api: Api) -> None:
    """Wait until the worker has run everything sent so far (a marker task ends)."""
    marker = api.submit("test.echo", kwargs={"value": "marker"})
    api.wait_state(marker["id"], "SUCCESS")


def test_concurrent_dead_letter_retries_run_the_task_once(api: Api, redis_server: RedisServer
                                                          ) -> None:
    key = unique("dead")
    task = api.submit("test.fail_once", kwargs={"key": key})
    api.wait_state(task["id"], "FAILURE")
    wait_for(lambda: api.get("/v1/dead-letters").json()["items"], 10, "the dead letter")
    answers = at_once(lambda: requests.post(
        f"{api.base}/v1/dead-letters/{task['id']}/retry",
        headers={"Authorization": api_auth()}, timeout=30))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [202] + [409] * (RACERS - 1), statuses
    assert {r.json()["error"]["code"] for r in answers if r.status_code == 409} == {
        "not_dead_lettered"}
    body = api.wait_state(task["id"], "SUCCESS")
    assert body["result"] == 2
    settle(api)
    assert counter(redis_server, key) == 2  # the failed run and exactly one retry


def test_concurrent_submits_with_one_key_make_one_task(api: Api, redis_server: RedisServer) -> None:
    key = unique("same-key")
    answers = at_once(lambda: api.post("/v1/tasks", json={"task": "test.count",
                                                           "kwargs": {"key": key}},
                                       headers={"Idempotency-Key": key}))
    assert {r.status_code for r in answers} == {202}
    assert len({r.json()["id"] for r in answers}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in answers) == RACERS - 1
    api.wait_state(answers[0].json()["id"], "SUCCESS")
    settle(api)
    assert counter(redis_server, key) == 1


def test_a_task_revoked_before_it_started_never_runs(api: Api, redis_server: RedisServer) -> None:
    """DELETE races the worker's start: whichever wins, REVOKED means it did not run.

    An idle worker starts a task within a millisecond of its submission, before any HTTP
    round trip: countdowns of 0 to 70 ms move the start across the DELETE's arrival, so
    both sides of the race are met."""
    revoked = []
    for i in range(15):
        key = unique("race")
        task = api.submit("test.count", kwargs={"key": key}, countdown=i * 0.005)
        r = api.delete(f"/v1/tasks/{task['id']}")
        if r.status_code == 202:
            assert r.json()["state"] == "REVOKED"
            revoked.append((task["id"], key))
        else:  # the worker started (or finished) it first
            assert r.status_code == 409 and r.json()["error"]["code"] in (
                "task_running", "task_finished")
    settle(api)
    for task_id, key in revoked:
        assert counter(redis_server, key) == 0
        assert api.get(f"/v1/tasks/{task_id}").json()["state"] == "REVOKED"
    assert revoked, "no DELETE came before the start in 15 tries"


@pytest.fixture
def debug_redis() -> Any:
    server = RedisServer(appendonly=True, debug_commands=True).start()
    yield server
    server.close()


def test_a_keyed_submit_during_a_stall_is_unknown_then_found_not_duplicated(
        debug_redis: RedisServer) -> None:
    api = Api(debug_redis.url, workers=1, REDIS_TIMEOUT="0.5")
    worker = start_worker(debug_redis.url, name="stall", concurrency=1)
    try:
        settle(api)  # scripts loaded, connections open
        key = unique("stalled")
        body = {"task": "test.count", "kwargs": {"key": key}}
        conn = debug_redis.stall(2)
        first = api.post("/v1/tasks", json=body, headers={"Idempotency-Key": key})
        assert first.status_code == 503, first.text
        error = first.json()["error"]
        assert error["code"] == "outcome_unknown" and "may" in error["message"]
        assert "nothing was accepted" not in error["message"]
        assert first.headers["Retry-After"]
        conn.recv(16)  # the stall is over
        conn.close()
        again = wait_for(lambda: api.post("/v1/tasks", json=body,
                                          headers={"Idempotency-Key": key}), 10, "a retry")
        assert again.status_code == 202
        assert again.json()["id"] == error["details"]["id"]  # the task the stall hid
        assert again.headers.get("Idempotent-Replayed") == "true"
        api.wait_state(again.json()["id"], "SUCCESS")
        settle(api)
        assert int(debug_redis.client().get(f"test:count:{key}") or 0) == 1
        assert worker.alive()
    finally:
        worker.stop()
        api.close()


def restart(server: RedisServer) -> None:
    server.stop(signal.SIGTERM)  # SIGTERM: Redis writes its AOF out before exiting
    server.start()


def test_redis_restart_under_a_long_task_runs_it_once_and_finished_ones_never_again(
        debug_redis: RedisServer) -> None:
    env = {"VISIBILITY_TIMEOUT": "6", "LEASE_INTERVAL": "1", "UNACKED_RESTORE_INTERVAL": "1",
           "WORKER_METRICS_PORT": "0"}
    api = Api(debug_redis.url, workers=1, **env)
    workers: list[Process] = [start_worker(debug_redis.url, name="restart", concurrency=2, **env)]
    try:
        quick = [unique("quick") for _ in range(4)]
        for key in quick:
            api.wait_state(api.submit("test.count", kwargs={"key": key})["id"], "SUCCESS")
        long_key = unique("long")
        long_task = api.submit("test.slow", kwargs={"seconds": 10, "key": long_key})
        api.wait_state(long_task["id"], ("STARTED", "PROGRESS"))
        restart(debug_redis)
        if not workers[0].alive():  # the worker's own survival is tested elsewhere
            workers.append(start_worker(debug_redis.url, name="restart2", concurrency=2, **env))
        api.wait_state(long_task["id"], "SUCCESS", timeout=60)
        settle(api)
        client = debug_redis.client()
        assert int(client.get(f"test:count:{long_key}") or 0) == 1
        assert [int(client.get(f"test:count:{k}") or 0) for k in quick] == [1] * len(quick)
    finally:
        for w in workers:
            w.stop()
        api.close()
