"""Leases: redelivered promptly when a worker dies, never while it lives; poison quarantined."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
import requests

from tests.support.scrape import scrape, total
from tests.support.services import Api, RedisServer, free_port, start_worker, wait_for

pytestmark = pytest.mark.integration

V, H, R = 4, 1, 1  # VISIBILITY_TIMEOUT, LEASE_INTERVAL, UNACKED_RESTORE_INTERVAL for the tests
LEASES = {"VISIBILITY_TIMEOUT": str(V), "LEASE_INTERVAL": str(H),
          "UNACKED_RESTORE_INTERVAL": str(R)}


def runs(redis_server: RedisServer, key: str) -> int:
    return int(redis_server.client().get(f"test:count:{key}") or 0)


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_long_and_delayed_tasks_run_exactly_once(isolated_redis: RedisServer) -> None:
    # Two workers: while one runs or holds the tasks, the other sweeps for expired leases.
    workers = [start_worker(isolated_redis.url, name=f"lease{i}", concurrency=2, **LEASES)
               for i in range(2)]
    api = Api(isolated_redis.url, workers=1, **LEASES)
    try:
        long_task = api.submit("test.slow", kwargs={"seconds": 3 * V, "key": "long"})
        delayed = api.submit("test.count", kwargs={"key": "delayed"}, countdown=3 * V)
        api.wait_state(long_task["id"], "PROGRESS")

        def scheduled() -> bool:
            q = next(q for q in api.get("/v1/queues").json()["items"] if q["name"] == "default")
            return q["scheduled"] == 1 and q["waiting"] == 0

        wait_for(scheduled, 10, "the delayed task counted as scheduled, not backlog")
        api.wait_state(long_task["id"], "SUCCESS", timeout=6 * V)
        api.wait_state(delayed["id"], "SUCCESS", timeout=6 * V)
        assert runs(isolated_redis, "long") == 1
        assert runs(isolated_redis, "delayed") == 1
        # acks go in batches (ACK_BATCH_INTERVAL): the last one within the interval
        wait_for(lambda: isolated_redis.client().hlen("unacked") == 0, 5, "every ack sent")
    finally:
        api.close()
        for w in workers:
            w.stop()


def test_dead_worker_tasks_come_back_within_the_bound(isolated_redis: RedisServer) -> None:
    doomed = start_worker(isolated_redis.url, name="doomed", concurrency=2,
                          WORKER_PREFETCH_MULTIPLIER="2", **LEASES)
    api = Api(isolated_redis.url, workers=1, **LEASES)
    rescuer = None
    try:
        tasks = [api.submit("test.slow", kwargs={"seconds": 3, "key": f"held{i}"})
                 for i in range(4)]
        for t in tasks[:2]:
            api.wait_state(t["id"], "PROGRESS")
        wait_for(lambda: isolated_redis.client().hlen("unacked") == 4, 10,
                 "two running and two reserved by the doomed worker")
        rescuer = start_worker(isolated_redis.url, name="rescuer", concurrency=2,
                               WORKER_QUEUES="default", **LEASES)
        killed_at = time.time()
        doomed.stop(signal.SIGKILL)  # main process and pool together, no goodbye
        finished = [api.wait_state(t["id"], "SUCCESS", timeout=V + R + 30) for t in tasks]
        for i in range(4):
            assert runs(isolated_redis, f"held{i}") >= 1
        restarted = [epoch(b["started_at"]) - killed_at for b in finished]
        first = min(s for s in restarted if s > 0)
        print(f"\nredelivery after SIGKILL: first run {first:.1f}s after the kill "
              f"(bound VISIBILITY_TIMEOUT + UNACKED_RESTORE_INTERVAL = {V + R}s)")
        assert first <= V + R + 2  # + scheduling slack on a loaded 2-core machine
        # acks go in batches (ACK_BATCH_INTERVAL): the last one within the interval
        wait_for(lambda: isolated_redis.client().hlen("unacked") == 0, 5, "every ack sent")
    finally:
        api.close()
        doomed.stop()
        if rescuer:
            rescuer.stop()


def test_poison_task_is_quarantined_then_retried_under_a_fresh_count(
        isolated_redis: RedisServer) -> None:
    worker = start_worker(isolated_redis.url, name="poison", concurrency=2, MAX_DELIVERIES="3")
    api = Api(isolated_redis.url, workers=1, MAX_DELIVERIES="3")
    try:
        task = api.submit("test.selfkill", kwargs={"key": "poison"})
        body = api.wait_state(task["id"], "FAILURE", timeout=60)
        assert body["error"]["type"] == "PoisonedTask"
        assert runs(isolated_redis, "poison") == 3
        entry = next(e for e in api.get("/v1/dead-letters").json()["items"] if e["id"] == task["id"])
        assert entry["reason"] == "poisoned"
        healthy = api.submit("test.echo", kwargs={"value": "still serving"})
        assert api.wait_state(healthy["id"], "SUCCESS")["result"] == "still serving"

        assert api.post(f"/v1/dead-letters/{task['id']}/retry").status_code == 202
        assert api.wait_state(task["id"], "FAILURE", timeout=60)["error"]["type"] == "PoisonedTask"
        assert runs(isolated_redis, "poison") == 6  # three fresh runs, then quarantined again
    finally:
        api.close()
        worker.stop()


@pytest.fixture
def aof_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own that keeps its data across a restart (AOF)."""
    server = RedisServer(appendonly=True).start()
    yield server
    server.close()


def test_livez_follows_the_consumer_loop_not_redis(aof_redis: RedisServer) -> None:
    isolated_redis = aof_redis
    port = free_port()
    liveness = 3  # LIVENESS_TIMEOUT
    env = {**LEASES, "LIVENESS_TIMEOUT": str(liveness)}
    worker = start_worker(isolated_redis.url, name="probe", concurrency=1,
                          WORKER_METRICS_PORT=str(port), **env)
    api = Api(isolated_redis.url, workers=1, **env)
    url = f"http://127.0.0.1:{port}"

    def status(path: str) -> int:
        try:
            return requests.get(url + path, timeout=1).status_code
        except requests.RequestException:
            return 0  # no answer: what a kubelet probe counts as a failure

    def renewals() -> float:
        return total(scrape(url + "/metrics"), "taskplane_lease_renewals_total")

    try:
        assert status("/livez") == 200 and status("/readyz") == 200
        # A countdown task the worker holds all along: its lease is renewed every H seconds.
        api.submit("test.count", kwargs={"key": "held"}, countdown=120)
        wait_for(lambda: renewals() > 0, 5 * H, "lease renewals of the held task")
        worker.send(signal.SIGSTOP)
        wait_for(lambda: status("/livez") != 200, 10, "/livez failing while stopped")
        worker.send(signal.SIGCONT)
        wait_for(lambda: status("/livez") == 200, 10, "/livez healthy after SIGCONT")

        isolated_redis.stop()
        wait_for(lambda: status("/readyz") == 503, 10, "/readyz failing with Redis down")
        deadline = time.monotonic() + 2 * liveness
        while time.monotonic() < deadline:
            assert status("/livez") == 200, "a Redis outage must not fail liveness"
            time.sleep(0.5)  # pacing of the probe, as a kubelet's period
        isolated_redis.start()
        wait_for(lambda: status("/readyz") == 200, 60, "/readyz healthy after Redis returns")
        # The loop ticks again once reconnected, and goes on ticking: past LIVENESS_TIMEOUT
        # with Redis reachable, a beat that was not re-armed on the new connection would fail.
        before = renewals()
        deadline = time.monotonic() + liveness + 2
        while time.monotonic() < deadline:
            assert status("/livez") == 200, "/livez failing after Redis came back"
            time.sleep(0.5)  # pacing of the probe
        assert renewals() > before, "lease renewals stopped after the reconnection"
        assert worker.alive()
    finally:
        api.close()
        worker.stop()


def test_runs_cut_short_by_scale_down_do_not_count_towards_poison(
        isolated_redis: RedisServer) -> None:
    """SIGTERM (a scale-down) stops a worker mid-task: the run was handed back, not killed
    by the task, so it must not bring a healthy long task closer to quarantine."""
    env = {"MAX_DELIVERIES": "1", "WORKER_SOFT_SHUTDOWN_TIMEOUT": "1"}
    first = start_worker(isolated_redis.url, name="scaled-down", concurrency=1, **env)
    api = Api(isolated_redis.url, workers=1, **env)
    second = None
    try:
        task = api.submit("test.slow", kwargs={"seconds": 3, "key": "scaled"})
        wait_for(lambda: runs(isolated_redis, "scaled") == 1, 30, "the task running")
        first.send(signal.SIGTERM)
        wait_for(lambda: not first.alive(), 30, "the worker to finish its soft shutdown")
        record = isolated_redis.client().hgetall(f"taskplane:task:{task['id']}")
        assert record[b"runs_started"] == record[b"runs_ended"] == b"1", record
        second = start_worker(isolated_redis.url, name="after", concurrency=1, **env)
        assert api.wait_state(task["id"], "SUCCESS", timeout=60)["result"] == "slept"
        assert runs(isolated_redis, "scaled") == 2
    finally:
        api.close()
        first.stop()
        if second:
            second.stop()
