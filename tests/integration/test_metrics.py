"""Metrics from real multi-process API and worker pods, and from the queue exporter."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import requests

from tests.support.scrape import scrape, total, value
from tests.support.services import (
    TEST_TOKENS,
    VENV_BIN,
    Api,
    Process,
    RedisServer,
    base_env,
    free_port,
    start_worker,
    wait_for,
)

pytestmark = pytest.mark.integration
N = 60


def pids(directory: Path, kind: str) -> set[str]:
    return {m.group(1) for f in directory.iterdir()
            if (m := re.match(rf"{kind}_(\d+)\.db$", f.name))}


def test_totals_are_exact_across_gunicorn_and_pool_processes(isolated_redis: RedisServer,
                                                              tmp_path: Path) -> None:
    api_dir, worker_dir = tmp_path / "api", tmp_path / "worker"
    api_dir.mkdir()
    worker_dir.mkdir()
    (worker_dir / "counter_999999.db").write_bytes(b"stale")  # emptied at start
    port = free_port()
    worker = start_worker(isolated_redis.url, name="metrics", concurrency=3,
                          WORKER_METRICS_PORT=str(port), PROMETHEUS_MULTIPROC_DIR=str(worker_dir))
    api = Api(isolated_redis.url, workers=3, PROMETHEUS_MULTIPROC_DIR=str(api_dir))
    try:
        # Three slow tasks running at once occupy all three pool children, so each child
        # writes its own counter file (fast tasks alone may all land on one child).
        slow = [api.submit("test.slow", kwargs={"seconds": 1.5})["id"] for _ in range(3)]
        wait_for(lambda: all(api.get(f"/v1/tasks/{s}").json()["state"] == "PROGRESS"
                             for s in slow), 30, "three pool children busy at once")
        ids = []
        for i in range(N):  # a fresh connection each time, so gunicorn spreads them
            r = requests.post(api.base + "/v1/tasks", timeout=10,
                              json={"task": "test.echo", "kwargs": {"value": i}},
                              headers={"Authorization": f"Bearer {TEST_TOKENS['acme']}"})
            assert r.status_code == 202
            ids.append(r.json()["id"])
        bad = api.post("/v1/tasks", json={"task": "test.echo"})
        assert bad.status_code == 422
        for task_id in ids + slow:
            api.wait_state(task_id, "SUCCESS")

        wm = scrape(f"http://127.0.0.1:{port}/metrics")
        labels = {"task": "test.echo", "queue": "default"}
        assert value(wm, "taskplane_tasks_total", outcome="succeeded", **labels) == N
        assert value(wm, "taskplane_tasks_total", outcome="failed", **labels) == 0
        assert value(wm, "taskplane_task_runtime_seconds_count", **labels) == N
        assert value(wm, "taskplane_task_queue_wait_seconds_count", **labels) == N
        assert value(wm, "taskplane_task_end_to_end_seconds_count", **labels) == N
        assert value(wm, "taskplane_worker_tasks_running") == 0
        assert value(wm, "taskplane_worker_up", worker=next(
            dict(ls)["worker"] for (n, ls) in wm if n == "taskplane_worker_up")) == 1
        assert len(pids(worker_dir, "counter")) >= 3  # one per pool child that ran a task
        assert "999999" not in pids(worker_dir, "counter")

        am = scrape(api.base + "/metrics")
        assert value(am, "taskplane_api_tasks_accepted_total", task="test.echo") == N
        assert value(am, "taskplane_http_requests_total", route="/v1/tasks", method="POST",
                     status="202") == N + 3  # the echoes and the three slow tasks
        assert value(am, "taskplane_api_tasks_rejected_total", reason="validation_failed") == 1
        assert total(am, "taskplane_http_request_duration_seconds_count", route="/v1/tasks") == N + 4
        # Routes are templates, never raw ids.
        assert not any(task_id in str(ls) for (_, ls) in am for task_id in ids)
        assert len(pids(api_dir, "counter")) >= 2, "requests did not reach several gunicorn workers"
    finally:
        api.close()
        worker.stop()


def test_running_gauge_forgets_a_killed_pool_process(isolated_redis: RedisServer) -> None:
    port = free_port()
    worker = start_worker(isolated_redis.url, name="ghost", concurrency=2,
                          WORKER_METRICS_PORT=str(port))
    api = Api(isolated_redis.url, workers=1)
    try:
        task = api.submit("test.slow", kwargs={"seconds": 30})
        api.wait_state(task["id"], "PROGRESS")
        url = f"http://127.0.0.1:{port}/metrics"
        assert value(scrape(url), "taskplane_worker_tasks_running") == 1
        api.delete(f"/v1/tasks/{task['id']}?terminate=true")  # the pool child is killed
        api.wait_state(task["id"], "REVOKED")
        wait_for(lambda: value(scrape(url), "taskplane_worker_tasks_running") == 0, 20,
                 "running gauge back to 0")
        assert value(scrape(url), "taskplane_tasks_total", task="test.slow", queue="default",
                     outcome="revoked") == 1
    finally:
        api.close()
        worker.stop()


def test_exporter_reports_queues_and_survives_redis_down(isolated_redis: RedisServer) -> None:
    port = free_port()
    env = base_env(isolated_redis.url, EXPORTER_PORT=str(port), QUEUES="parked")
    exporter = Process("exporter", [str(VENV_BIN / "taskplane"), "exporter"], env)
    api = Api(isolated_redis.url, workers=1, QUEUES="parked")
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok, 30,
                 "exporter up")
        for priority in (0, 5, 9):
            api.submit("test.echo", kwargs={"value": 1}, queue="parked", priority=priority)
        m = scrape(url)
        assert value(m, "taskplane_queue_waiting", queue="parked") == 3
        assert value(m, "taskplane_queue_reserved", queue="parked") == 0
        assert value(m, "taskplane_queue_oldest_waiting_age_seconds", queue="parked") >= 0
        assert value(m, "taskplane_redis_up") == 1
        isolated_redis.stop(signal.SIGKILL)
        m = scrape(url)
        assert value(m, "taskplane_redis_up") == 0
        assert ("taskplane_queue_waiting", frozenset({("queue", "parked")})) not in m
        isolated_redis.start()
        wait_for(lambda: value(scrape(url), "taskplane_redis_up") == 1, 20, "redis_up back to 1")
    finally:
        api.close()
        exporter.stop()


def test_access_log_off_still_counts_every_request(redis_server: RedisServer,
                                                   tmp_path: Path) -> None:
    api = Api(redis_server.url, workers=1, ACCESS_LOG="false",
              PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    try:
        for _ in range(3):
            assert api.get("/v1/queues").status_code == 200
        wait_for(lambda: total(scrape(api.base + "/metrics"), "taskplane_http_requests_total",
                               route="/v1/queues") == 3, 10, "three requests counted")
        assert "taskplane.access" not in api.process.log()
    finally:
        api.close()
