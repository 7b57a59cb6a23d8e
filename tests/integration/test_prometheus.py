"""A real Prometheus scrapes the real stack; every rule and dashboard query is run against it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import requests
import yaml

from taskplane.devstack import RULE_FILES
from tests.support.dashboards import dashboard_exprs, needs_sentinel, prometheus, substitute
from tests.support.procs import Prometheus
from tests.support.services import (
    ROOT,
    VENV_BIN,
    Api,
    Process,
    RedisServer,
    base_env,
    free_port,
    start_scheduler,
    start_worker,
    wait_for,
)

pytestmark = pytest.mark.integration
SUCCEEDED, FAILED, FLAKY, PARKED = 12, 3, 2, 3
PARKED_QUEUE = "parked"


@pytest.fixture(scope="module")
def stack() -> Iterator[Prometheus]:
    with ExitStack() as cleanup:  # whatever started is stopped, even if a later start fails
        redis_server = RedisServer().start()
        cleanup.callback(redis_server.close)
        worker_port, exporter_port, scheduler_port = free_port(), free_port(), free_port()
        worker = start_worker(redis_server.url, name="prom", concurrency=2,
                              WORKER_METRICS_PORT=str(worker_port), WORKER_QUEUES="default",
                              QUEUES="parked")
        cleanup.callback(worker.stop)
        api = Api(redis_server.url, workers=2, QUEUES="parked")
        cleanup.callback(api.close)
        exporter = Process("exporter", [str(VENV_BIN / "taskplane"), "exporter"],
                           base_env(redis_server.url, EXPORTER_PORT=str(exporter_port),
                                    QUEUES="parked"))
        cleanup.callback(exporter.stop)
        # a schedule declared in code fires every second (tests.support.schedules)
        scheduler = start_scheduler(redis_server.url, name="prom",
                                    SCHEDULER_METRICS_PORT=str(scheduler_port),
                                    TASK_MODULES="tests.support.tasks,tests.support.schedules")
        cleanup.callback(scheduler.stop)
        prom = prometheus({"taskplane-api": f"127.0.0.1:{api.port}",
                           "taskplane-worker": f"127.0.0.1:{worker_port}",
                           "taskplane-exporter": f"127.0.0.1:{exporter_port}",
                           "taskplane-scheduler": f"127.0.0.1:{scheduler_port}"})
        cleanup.callback(prom.close)
        ids = [api.submit("test.echo", kwargs={"value": i})["id"] for i in range(SUCCEEDED)]
        ids += [api.submit("test.flaky", kwargs={"key": f"prom-{i}", "failures": 1})["id"]
                for i in range(FLAKY)]
        failed = [api.submit("test.fail")["id"] for _ in range(FAILED)]
        assert api.post("/v1/tasks", json={"task": "test.echo"}).status_code == 422  # a rejection
        for _ in range(PARKED):
            api.submit("test.echo", kwargs={"value": "parked"}, queue="parked")
        for task_id in ids:
            api.wait_state(task_id, "SUCCESS")
        for task_id in failed:
            api.wait_state(task_id, "FAILURE")
        yield prom


def test_every_target_is_scraped(stack: Prometheus) -> None:
    def all_up() -> bool:
        result = stack.query("up")
        return len(result) == 4 and all(r["value"][1] == "1" for r in result)

    wait_for(all_up, 30, "all four targets up", interval=0.5)


def test_counters_match_the_workload(stack: Prometheus) -> None:
    def check(expr: str, expected: float) -> None:
        wait_for(lambda: stack.scalar(expr) == expected, 30, f"{expr} == {expected}", interval=0.5)

    check('sum(taskplane_tasks_total{task="test.echo",outcome="succeeded"})', SUCCEEDED)
    check('sum(taskplane_tasks_total{task="test.flaky",outcome="succeeded"})', FLAKY)
    check('sum(taskplane_tasks_total{task="test.flaky",outcome="retried"})', FLAKY)
    check('sum(taskplane_tasks_total{task="test.fail",outcome="failed"})', FAILED)
    check('sum(taskplane_tasks_total{task="test.fail",outcome="dead_lettered"})', FAILED)
    check('sum(taskplane_api_tasks_accepted_total)', SUCCEEDED + FLAKY + FAILED + PARKED)
    check('taskplane_queue_waiting{queue="parked"}', PARKED)
    check("taskplane_redis_up", 1)
    check('sum(taskplane_worker_up)', 1)


def test_every_recording_rule_yields_series(stack: Prometheus) -> None:
    groups = yaml.safe_load((ROOT / RULE_FILES[0]).read_text())["groups"]
    records = [r["record"] for g in groups for r in g["rules"] if "record" in r]
    assert records
    for record in records:
        wait_for(lambda record=record: stack.query(record), 30, f"recording rule {record}",
                 interval=0.5)
    def backlog() -> dict[str, float]:
        return {r["metric"]["queue"]: float(r["value"][1])
                for r in stack.query("taskplane:queue_backlog:sum")}

    assert backlog()["parked"] == PARKED
    # the schedule fires into "default" every second: a scrape may catch its task waiting
    # or held for its ack batch (a CI run read 1), so the drained queue is polled for
    wait_for(lambda: backlog()["default"] == 0, 30, "default's backlog back to 0", interval=0.5)


def test_every_dashboard_query_runs_and_returns_data(stack: Prometheus) -> None:
    # the Redis HA row reads series only a Sentinel deployment has: tests/ha/test_dashboard.py
    exprs = [(title, expr) for title, expr in dashboard_exprs() if not needs_sentinel(expr)]
    assert len(exprs) >= 10
    empty = []
    for title, expr in exprs:
        query = substitute(expr)
        assert "$" not in query, f"unsubstituted variable in {title}: {expr}"
        try:
            wait_for(lambda q=query: stack.query(q), 15, f"{title}: {query}", interval=0.5)
        except TimeoutError:
            empty.append((title, query))
    # Only server-error panels may be empty: the workload produced no 5xx.
    assert all(re.search(r'5\.\.|"5', q) for _, q in empty), empty


def test_no_alert_fires_on_a_healthy_stack(stack: Prometheus) -> None:
    """No alert is firing or pending, and no alert's expression holds right now: an alert
    with a long ``for:`` would still be pending (or not yet evaluated) in a short test."""

    def rules() -> list[dict[str, Any]]:
        groups = requests.get(stack.url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        return [r for g in groups for r in g["rules"]]

    def evaluated() -> bool:
        return all(not r["lastEvaluation"].startswith("0001") for r in rules())

    def active() -> set[tuple[str, str]]:
        alerts = requests.get(stack.url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return {(a["labels"]["alertname"], a["labels"].get("queue", "")) for a in alerts}

    # The one condition this workload holds on purpose: tasks wait in "parked", which no
    # worker consumes, so that alert is pending (it fires after its `for:`).
    expected = {("TaskplaneNoWorkersConsuming", PARKED_QUEUE)}
    wait_for(evaluated, 30, "every rule evaluated once", interval=0.5)
    # An evaluation before the first scrape may leave an absent()-based alert pending; it
    # clears at the next evaluation. A real condition stays pending for its whole `for:`.
    try:
        wait_for(lambda: active() == expected, 20, "no other alert firing or pending",
                 interval=0.5)
    except TimeoutError:
        assert active() == expected
    all_rules = rules()
    assert all(r["health"] == "ok" for r in all_rules), all_rules
    alerting = [r for r in all_rules if r["type"] == "alerting"]
    assert alerting
    holding = {(r["name"], series["metric"].get("queue", ""))
               for r in alerting for series in stack.query(r["query"])}
    assert holding == expected
