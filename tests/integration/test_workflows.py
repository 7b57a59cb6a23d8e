"""Workflows on real workers: a chain passes results on, a batch's callback runs once
with every result in member order, at scale (1,000 members on 4 processes) and when the
members' worker is SIGKILLed mid-run (redelivered members cannot count twice)."""

from __future__ import annotations

import json
import signal
import subprocess
from typing import Any

import pytest

from tests.integration.test_tasks_api import counter, unique
from tests.support.services import (
    TEST_TOKENS,
    VENV_BIN,
    Api,
    RedisServer,
    base_env,
    start_worker,
    wait_for,
)

pytestmark = pytest.mark.integration

V, H, R = 4, 1, 1  # VISIBILITY_TIMEOUT, LEASE_INTERVAL, UNACKED_RESTORE_INTERVAL
LEASES = {"VISIBILITY_TIMEOUT": str(V), "LEASE_INTERVAL": str(H),
          "UNACKED_RESTORE_INTERVAL": str(R)}


def submit(api: Api, body: dict[str, Any], tenant: str = "acme") -> str:
    answer = api.post("/v1/workflows", json=body, tenant=tenant)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def wait_workflow(api: Api, workflow_id: str, state: str, timeout: float = 60
                  ) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"/v1/workflows/{workflow_id}").json()
        if body["state"] not in ("RUNNING", state):
            raise AssertionError(f"workflow ended {body['state']}: {body}")
        return body if body["state"] == state else None
    return wait_for(check, timeout, f"workflow {workflow_id} {state}",  # type: ignore[no-any-return]
                    interval=0.5)


def test_a_chain_passes_each_result_to_the_next_step(api: Api) -> None:
    wid = submit(api, {"chain": [{"task": "test.echo", "kwargs": {"value": {"n": [1, []]}}},
                                 {"task": "test.echo"}, {"task": "test.echo"}]})
    body = wait_workflow(api, wid, "SUCCESS")
    assert body["progress"] == 100 and body["counts"]["SUCCESS"] == 3
    last = api.get(f"/v1/tasks/{body['steps'][2]['id']}").json()
    assert last["result"] == {"n": [1, []]}


def test_a_failing_step_stops_the_chain(api: Api) -> None:
    wid = submit(api, {"chain": [{"task": "test.fail"}, {"task": "test.echo"}]})
    body = wait_workflow(api, wid, "FAILURE")
    assert [s["state"] for s in body["steps"]] == ["FAILURE", "REVOKED"]


def test_another_tenant_never_sees_a_workflow(api: Api) -> None:
    wid = submit(api, {"chain": [{"task": "test.echo", "kwargs": {"value": 1}}]})
    assert api.get(f"/v1/workflows/{wid}", tenant="globex").status_code == 404
    listed = api.get("/v1/workflows?limit=200", tenant="globex").json()["items"]
    assert wid not in {w["id"] for w in listed}


def test_a_batch_of_1000_members_on_4_processes_runs_its_callback_once(
        isolated_redis: RedisServer) -> None:
    worker = start_worker(isolated_redis.url, name="batch", concurrency=4)
    api = Api(isolated_redis.url, workers=1)
    key = unique("batch")
    try:
        wid = submit(api, {"group": [{"task": "test.echo", "kwargs": {"value": i}}
                                     for i in range(1000)],
                           "then": {"task": "test.collect", "kwargs": {"key": key}}})
        body = wait_workflow(api, wid, "SUCCESS", timeout=240)
        assert body["counts"] == {"SUCCESS": 1001, "FAILURE": 0, "REVOKED": 0}
        callback = api.get(f"/v1/tasks/{body['callback']}").json()
        assert callback["result"] == list(range(1000))
        assert counter(isolated_redis, key) == 1
    finally:
        api.close()
        worker.stop()


def test_members_whose_worker_is_killed_mid_run_count_once(isolated_redis: RedisServer
                                                            ) -> None:
    doomed = start_worker(isolated_redis.url, name="doomed", concurrency=2,
                          WORKER_PREFETCH_MULTIPLIER="2", **LEASES)
    api = Api(isolated_redis.url, workers=1, **LEASES)
    key = unique("killed")
    rescuer = None
    try:
        wid = submit(api, {"group": [{"task": "test.slow", "kwargs": {"seconds": 2,
                                                                      "key": f"{key}-{i}"}}
                                     for i in range(4)],
                           "then": {"task": "test.collect", "kwargs": {"key": key}}})
        members = [m["id"] for m in api.get(f"/v1/workflows/{wid}").json()["members"]]
        wait_for(lambda: sum(api.get(f"/v1/tasks/{m}").json()["state"] == "PROGRESS"
                             for m in members) == 2, 20, "two members running")
        rescuer = start_worker(isolated_redis.url, name="rescuer", concurrency=2, **LEASES)
        doomed.stop(signal.SIGKILL)  # main process and pool together, mid-run
        body = wait_workflow(api, wid, "SUCCESS", timeout=V + R + 60)
        assert body["counts"]["SUCCESS"] == 5
        assert counter(isolated_redis, key) == 1
        assert api.get(f"/v1/tasks/{body['callback']}").json()["result"] == ["slept"] * 4
        assert sum(counter(isolated_redis, f"{key}-{i}") for i in range(4)) >= 6  # 2 reran
    finally:
        api.close()
        doomed.stop()
        if rescuer:
            rescuer.stop()


def test_retrying_a_failed_step_from_the_dead_letters_resumes_the_chain(api: Api) -> None:
    key = unique("resume")
    wid = submit(api, {"chain": [{"task": "test.fail_once", "kwargs": {"key": key}},
                                 {"task": "test.echo"}]})
    body = wait_workflow(api, wid, "FAILURE")
    failed = body["steps"][0]["id"]
    assert api.post(f"/v1/dead-letters/{failed}/retry").status_code == 202
    body = wait_workflow(api, wid, "SUCCESS")
    assert api.get(f"/v1/tasks/{body['steps'][1]['id']}").json()["result"] == 2


def test_the_client_and_the_cli_submit_follow_list_and_cancel(api: Api) -> None:
    from taskplane.client import Client
    from taskplane.client_workflows import WorkflowClient

    flows = WorkflowClient(Client(api.base, TEST_TOKENS["acme"]), poll=0.2)
    seen: list[int] = []
    made = flows.submit({"group": [{"task": "test.echo", "kwargs": {"value": i}}
                                   for i in range(3)], "then": {"task": "test.echo"}})
    done = flows.wait(made.id, timeout=60, on_change=lambda w: seen.append(w.progress))
    assert done.state == "SUCCESS" and done.progress == 100 and seen[-1] == 100
    assert made.id in [w.id for w in flows.list(page_size=2)]

    env = {**base_env(api.env["REDIS_URL"]), "TASKPLANE_URL": api.base,
           "TASKPLANE_TOKEN": TEST_TOKENS["acme"]}
    body = json.dumps({"chain": [{"task": "test.echo", "kwargs": {"value": "cli"}},
                                 {"task": "test.echo"}]})
    run = subprocess.run([str(VENV_BIN / "taskplane"), "workflow", "submit", "-", "--wait",
                          "--json"], input=body, capture_output=True, text=True, env=env,
                         timeout=90)
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)
    assert shown["state"] == "SUCCESS" and shown["progress"] == 100
    status = subprocess.run([str(VENV_BIN / "taskplane"), "workflow", "status", shown["id"]],
                            capture_output=True, text=True, env=env, timeout=60)
    assert status.returncode == 0 and "100%" in status.stdout and "SUCCESS" in status.stdout
    slow = flows.submit({"chain": [{"task": "test.slow", "kwargs": {"seconds": 30}},
                                   {"task": "test.echo"}]})
    cancel = subprocess.run([str(VENV_BIN / "taskplane"), "workflow", "cancel", slow.id,
                             "--terminate"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert cancel.returncode in (3, 4), cancel.stderr  # REVOKED, or ending as it is killed
    assert flows.wait(slow.id, timeout=60).state == "REVOKED"
    bad = subprocess.run([str(VENV_BIN / "taskplane"), "workflow", "submit", "-"],
                         input='{"chain": []}', capture_output=True, text=True, env=env,
                         timeout=60)
    assert bad.returncode == 5 and "validation_failed" in bad.stderr
