"""``taskplane.client`` and the ``taskplane`` task commands against the real API, workers
and Redis; the CLI is driven through a real pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import threading
import time
from typing import Any

import pytest

from taskplane import client_cli
from taskplane.client import Client, Task, TaskplaneError
from tests.conftest import PARKED
from tests.integration.test_tasks_api import unique
from tests.support.services import (
    ROOT,
    TEST_TOKENS,
    VENV_BIN,
    Api,
    RedisServer,
    start_worker,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def tp(api: Api) -> Client:
    return Client(api.base, TEST_TOKENS["acme"], timeout=10)


def test_submit_wait_list_cancel_and_retry(tp: Client, api: Api, redis_server: RedisServer) -> None:
    since = time.time()
    task = tp.submit("test.echo", kwargs={"value": [1, "é"]})
    assert isinstance(task, Task) and task.state == "PENDING"
    done = tp.wait(task.id, timeout=30)
    assert done.state == "SUCCESS" and done.result == [1, "é"] and done.done
    assert tp.get(task.id).result == [1, "é"]
    parked = tp.submit("test.echo", kwargs={"value": 2}, queue=PARKED, priority=9)
    assert tp.wait(parked.id, timeout=0.5).state == "PENDING"  # still waiting at the deadline
    assert tp.cancel(parked.id).state == "REVOKED"
    assert [t.id for t in tp.list(submitted_after=since, page_size=1)] == [parked.id, task.id]
    assert [t.id for t in tp.list(submitted_after=since, state="REVOKED")] == [parked.id]
    key = unique("client-dead")
    failing = tp.submit("test.fail_once", kwargs={"key": key})
    assert tp.wait(failing.id, timeout=30).state == "FAILURE"
    assert failing.id in [e["id"] for e in tp.dead_letters()]
    # the answer re-reads the task: a worker may have taken it already
    assert tp.retry(failing.id).state in ("PENDING", "STARTED", "SUCCESS")
    assert tp.wait(failing.id, timeout=30).result == 2


def test_events_follow_progress_to_the_end(tp: Client) -> None:
    task = tp.submit("test.phases", kwargs={"before": 0.2, "seconds": 1.0})
    seen = list(tp.events(task.id))
    assert seen[-1].state == "SUCCESS"
    percents = [t.progress["percent"] for t in seen if t.state == "PROGRESS" and t.progress]
    assert percents and percents == sorted(percents)


def test_errors_carry_the_api_envelope(tp: Client) -> None:
    with pytest.raises(TaskplaneError) as unknown:
        tp.submit("no.such.task")
    assert (unknown.value.status, unknown.value.code) == (404, "unknown_task")
    with pytest.raises(TaskplaneError) as invalid:
        tp.submit("test.echo", kwargs={"nope": 1})
    assert invalid.value.status == 422 and invalid.value.details["fields"]
    with pytest.raises(TaskplaneError) as missing:
        tp.get("no-such-id")
    assert missing.value.code == "task_not_found"
    bad = Client(tp.url, "wrong-token-0123456789")
    with pytest.raises(TaskplaneError) as denied:
        bad.get("anything")
    assert denied.value.status == 401


def test_a_submit_retried_across_an_api_restart_is_one_task(isolated_redis: RedisServer) -> None:
    api = Api(isolated_redis.url, workers=1)
    worker = start_worker(isolated_redis.url, name="client-restart", concurrency=1)
    try:
        tp = Client(api.base, TEST_TOKENS["acme"], timeout=5, retries=10, max_retry_wait=2)
        key = unique("restart")
        api.process.stop()
        result: dict[str, Any] = {}
        sender = threading.Thread(target=lambda: result.update(
            task=tp.submit("test.count", kwargs={"key": key}, idempotency_key=key)))
        sender.start()
        time.sleep(0.5)  # fault window: the client meets a closed port at least once
        api.start()
        sender.join(60)
        task = result["task"]
        assert tp.wait(task.id, timeout=30).state == "SUCCESS"
        again = tp.submit("test.count", kwargs={"key": key}, idempotency_key=key)
        assert again.id == task.id
        assert int(isolated_redis.client().get(f"test:count:{key}") or 0) == 1
    finally:
        worker.stop()
        api.close()


def test_an_unconfirmed_submit_is_retried_into_the_one_task() -> None:
    """Redis stalls past the API's timeout: the API answers 503 outcome_unknown although it
    stored the task; the client sends the same key again and gets that task."""
    server = RedisServer(debug_commands=True).start()
    api = Api(server.url, workers=1, REDIS_TIMEOUT="0.5", RETRY_AFTER="1")
    worker = start_worker(server.url, name="client-stall", concurrency=1)
    try:
        tp = Client(api.base, TEST_TOKENS["acme"], timeout=10, retries=5)
        tp.wait(tp.submit("test.echo", kwargs={"value": 0}).id, timeout=30)  # scripts loaded
        key = unique("unconfirmed")
        conn = server.stall(2)
        task = tp.submit("test.count", kwargs={"key": key})
        conn.recv(16)
        conn.close()
        assert tp.wait(task.id, timeout=30).state == "SUCCESS"
        assert [t.id for t in tp.list(task="test.count")] == [task.id]
        assert int(server.client().get(f"test:count:{key}") or 0) == 1
    finally:
        worker.stop()
        api.close()
        server.close()


# --- the CLI through a terminal ---------------------------------------------------------

def run_in_terminal(api: Api, *args: str, timeout: float = 60) -> tuple[int, str]:
    """Run ``taskplane ARGS`` with a pseudo-terminal as its stdout; (exit code, output)."""
    env = {**os.environ, "TASKPLANE_URL": api.base, "TASKPLANE_TOKEN": TEST_TOKENS["acme"],
           "COLUMNS": "120", "PYTHONPATH": str(ROOT)}
    leader, follower = pty.openpty()
    proc = subprocess.Popen([str(VENV_BIN / "taskplane"), *args], stdout=follower,
                            stderr=follower, stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                data = os.read(leader, 4096)
            except OSError:  # the terminal closed: the program ended
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    code = proc.wait(10)
    return code, b"".join(chunks).decode(errors="replace")


def test_cli_progress_bar_and_exit_codes(api: Api) -> None:
    code, out = run_in_terminal(api, "submit", "test.phases", "before=0.2", "seconds=1.5",
                                "--wait")
    assert code == client_cli.EXIT_SUCCESS, out
    assert "\r\x1b[K" in out  # redrawn in place
    assert "PROGRESS [" in out
    lines = [line for line in out.replace("\r\n", "\n").split("\n") if line.strip()]
    bar_line = lines[-2].split("\r\x1b[K")[-1]
    assert bar_line.startswith("SUCCESS  [" + "#" * 30 + "] 100.0%"), bar_line
    assert lines[-1].endswith('SUCCESS "done"'), lines[-1]

    code, out = run_in_terminal(api, "submit", "test.fail", "message=boom", "--wait")
    assert code == client_cli.EXIT_FAILURE and "ValueError: boom" in out

    code, out = run_in_terminal(api, "submit", "test.echo", "value=[1,2]", f"--queue={PARKED}",
                                "--json")
    assert code == 0
    parked = json.loads(out)
    assert parked["state"] == "PENDING"
    code, _ = run_in_terminal(api, "wait", parked["id"], "--timeout", "1")
    assert code == client_cli.EXIT_NOT_DONE
    code, _ = run_in_terminal(api, "cancel", parked["id"])
    assert code == 0
    code, out = run_in_terminal(api, "status", parked["id"])
    assert code == client_cli.EXIT_REVOKED and "REVOKED" in out
    code, out = run_in_terminal(api, "status", "no-such-task")
    assert code == client_cli.EXIT_API_ERROR and "task_not_found" in out
    code, out = run_in_terminal(api, "ls", "--state", "REVOKED", "--limit", "5")
    assert code == 0 and out.splitlines()[0].split() == ["ID", "TASK", "STATE", "QUEUE",
                                                          "SUBMITTED"]
    assert parked["id"] in out
    code, _ = run_in_terminal(api, "submit", "test.echo", "novalue")
    assert code == client_cli.EXIT_USAGE
