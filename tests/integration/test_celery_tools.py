"""The Celery tools a team already runs, pointed at Taskplane's Redis with nothing but its URL.

A stock ``Celery(broker=url, backend=url)`` app (no transport options), the stock
``celery`` command and ``celery -A taskplane.worker`` against a real worker: tasks of
every priority run, ``inspect``/``control`` answer, terminate terminates, and none of it
disturbs the live worker's metrics or leaves folders behind.
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from taskplane import broker, lifecycle
from taskplane.celery_app import create_celery
from taskplane.runtime import STOCK_DEFAULT_QUEUE
from taskplane.settings import Settings
from tests.support.scrape import scrape, value
from tests.support.services import (
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

#: A queue no worker consumes: what a stock client sends there waits, to be counted.
WAITING_QUEUE = "tools-parked"


class Stack:
    """One Redis and one worker (probe port, metrics folder) of this module's own."""

    def __init__(self, tmp: Path) -> None:
        self.redis = RedisServer().start()
        self.metrics_dir = tmp / "worker-metrics"
        self.metrics_dir.mkdir()
        self.port = free_port()
        try:
            self.worker = start_worker(self.redis.url, name="tools", concurrency=2,
                                       WORKER_METRICS_PORT=str(self.port),
                                       PROMETHEUS_MULTIPROC_DIR=str(self.metrics_dir))
        except BaseException:
            self.redis.close()  # a worker that did not start leaves no Redis behind
            raise
        self.stock = Celery("stock", broker=self.redis.url, backend=self.redis.url)
        self.taskplane = create_celery(Settings.from_env({"REDIS_URL": self.redis.url}))

    def inspect(self) -> Any:
        """An inspector that returns as soon as this module's worker answered."""
        return self.stock.control.inspect(timeout=5, destination=[self.node])

    @functools.cached_property
    def node(self) -> str:
        replies = wait_for(self.stock.control.inspect(timeout=2).ping, 30, "a ping reply")
        (name,) = [n for n in replies if n.startswith("tools@")]
        return str(name)

    @functools.cached_property
    def api(self) -> Api:
        return Api(self.redis.url, workers=1)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def celery_cli(self, *args: str, env: dict[str, str] | None = None,
                   timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(VENV_BIN / "celery"), *args], capture_output=True, text=True,
                              timeout=timeout, env=env or base_env(self.redis.url))

    def close(self) -> None:
        if "api" in self.__dict__:
            self.api.close()
        self.stock.close()
        self.taskplane.close()
        self.worker.stop()
        self.redis.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("tools"))
    yield s
    s.close()


def record(stack: Stack, task_id: str) -> Any:
    found, _ = stack.taskplane.runtime.lifecycle.read(task_id, with_result=False)
    return found


def test_a_stock_client_runs_tasks_of_every_priority(stack: Stack) -> None:
    before = value(scrape(stack.metrics_url), "taskplane_tasks_total", task="test.echo",
                   queue="default", outcome="succeeded")
    sent = {p: stack.stock.send_task("test.echo", kwargs={"value": p}, queue="default",
                                     priority=p) for p in (0, 5, 9)}
    for p, result in sent.items():
        assert result.get(timeout=60) == p
        # adopted at start: a record under the system tenant, its priority in API terms
        found = record(stack, result.id)
        assert found is not None and found.tenant == lifecycle.SYSTEM_TENANT
        assert found.priority == broker.api_priority(p)
        assert found.state == "SUCCESS"
    wait_for(lambda: value(scrape(stack.metrics_url), "taskplane_tasks_total", task="test.echo",
                           queue="default", outcome="succeeded") == before + 3, 10,
             "three stock-client runs counted")


def test_a_stock_client_that_names_no_queue_is_served(stack: Stack) -> None:
    """Celery's default queue is `celery`: the workers of the default queue consume it too."""
    result = stack.stock.send_task("test.echo", kwargs={"value": "no queue named"})
    assert result.get(timeout=60) == "no queue named"
    found = record(stack, result.id)
    assert found is not None and found.queue == STOCK_DEFAULT_QUEUE
    names = [q["name"] for q in stack.api.get("/v1/queues").json()["items"]]
    assert STOCK_DEFAULT_QUEUE in names


def test_an_operator_sees_a_stock_clients_tasks_and_no_tenant_does(stack: Stack) -> None:
    done = stack.stock.send_task("test.echo", kwargs={"value": "stock"}, queue="default")
    failed = stack.stock.send_task("test.fail", kwargs={"message": "stock failure"},
                                   queue="default")
    assert done.get(timeout=60) == "stock"
    wait_for(lambda: failed.state == "FAILURE", 60, "the failing task failed")
    api = stack.api
    status = api.get(f"/v1/tasks/{done.id}", tenant="ops")
    assert status.status_code == 200 and status.json()["state"] == "SUCCESS", status.text
    assert api.get(f"/v1/tasks/{done.id}", tenant="acme").status_code == 404
    dead = wait_for(lambda: {e["id"]: e for e in
                             api.get("/v1/dead-letters?limit=500", tenant="ops").json()["items"]
                             }.get(failed.id), 20, "the stock task's dead letter")
    assert dead["tenant"] == lifecycle.SYSTEM_TENANT and dead["task"] == "test.fail"
    assert failed.id not in {e["id"] for e in api.get("/v1/dead-letters?limit=500").json()["items"]}


def test_queue_figures_count_every_list_a_stock_client_writes(stack: Stack) -> None:
    client = stack.redis.client()
    try:
        for p in (None, 0, 2, 3, 5, 6, 8, 9):
            stack.stock.send_task("test.echo", kwargs={"value": p}, queue=WAITING_QUEUE,
                                  priority=p)
        (stats,) = stack.taskplane.runtime.broker.queue_stats([WAITING_QUEUE])
        assert stats.waiting == 8
        # kombu's four lists, all of them used, and nothing else under the queue's name
        used = {k.decode() for k in client.keys(WAITING_QUEUE + "*")}
        assert used == set(broker.queue_keys(WAITING_QUEUE))
    finally:
        client.delete(*broker.queue_keys(WAITING_QUEUE))


#: A queue no worker consumes until a test starts one for it.
REVOKED_QUEUE = "tools-revoked"


def test_a_stock_task_revoked_before_any_worker_started_it_gets_a_revoked_record(
        stack: Stack) -> None:
    """A stock client sends a task to a queue no worker consumes yet and revokes it with
    ``celery control revoke``: the worker that hears the broadcast stores REVOKED through
    the result backend, which adopts the record under the system tenant. The operator
    sees it, and a worker that takes the message later, though it never heard the revoke
    (Taskplane's workers start without mingle), does not run it."""
    api, client = stack.api, stack.redis.client()
    sent = stack.stock.send_task("test.echo", kwargs={"value": "never"}, queue=REVOKED_QUEUE)
    assert record(stack, sent.id) is None
    stack.stock.control.revoke(sent.id)
    found = wait_for(lambda: record(stack, sent.id), 30, "the revoked task's record")
    assert (found.tenant, found.state) == (lifecycle.SYSTEM_TENANT, "REVOKED")
    status = api.get(f"/v1/tasks/{sent.id}", tenant="ops")
    assert status.status_code == 200 and status.json()["state"] == "REVOKED", status.text
    assert api.get(f"/v1/tasks/{sent.id}", tenant="acme").status_code == 404
    listed = api.get("/v1/tasks?state=REVOKED&limit=100", tenant="ops").json()["items"]
    assert sent.id in {t["id"] for t in listed}

    late = start_worker(stack.redis.url, name="late", WORKER_QUEUES=REVOKED_QUEUE)
    try:
        def handled() -> bool:  # received (its id logged), then acknowledged
            (stats,) = stack.taskplane.runtime.broker.queue_stats([REVOKED_QUEUE])
            return f"[{sent.id}]" in late.log() and stats.waiting == 0 and stats.reserved == 0
        wait_for(handled, 30, "the late worker took the message and acknowledged it")
    finally:
        late.stop()
    assert record(stack, sent.id).state == "REVOKED"
    assert client.hget(lifecycle.record_key(sent.id), "runs_started") is None  # never ran
    assert f"[{sent.id}] succeeded" not in late.log()


def test_inspect_answers_a_stock_client_and_the_stock_cli(stack: Stack) -> None:
    inspect, node = stack.inspect(), stack.node
    assert inspect.ping() == {node: {"ok": "pong"}}
    registered = inspect.registered()
    assert {"test.echo", "test.slow", "long_running_task"} <= set(registered[node])

    slow = stack.stock.send_task("test.slow", kwargs={"seconds": 120}, queue="default")
    try:
        active = wait_for(lambda: [t for t in (inspect.active() or {}).get(node, [])
                                   if t["id"] == slow.id], 30, "the slow task active")
        assert active[0]["name"] == "test.slow"
    finally:
        slow.revoke(terminate=True, signal="SIGKILL")

    # the stock command line, configured with the broker URL only
    ping = stack.celery_cli(f"--broker={stack.redis.url}", "inspect", "ping", "--timeout=5",
                            f"--destination={node}")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "pong" in ping.stdout and node in ping.stdout


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("how", ["client", "cli"])
def test_terminate_with_sigterm_stops_a_running_task(stack: Stack, how: str) -> None:
    """Flower's button and ``celery control terminate`` send SIGTERM; it must stop the task
    whatever SIGTERM means to the worker (``taskplane.pool``). Celery reports REVOKED as soon
    as it has sent the signal, so the test checks the process running it is gone."""
    slow = stack.stock.send_task("test.slow", kwargs={"seconds": 120}, queue="default")
    inspect = stack.inspect()
    (running,) = wait_for(lambda: [t for tasks in (inspect.active() or {}).values()
                                   for t in tasks if t["id"] == slow.id], 30,
                          "the slow task running")
    pid = int(running["worker_pid"])
    assert alive(pid)
    # running its body, past the start that adopts it (a record under the system tenant)
    wait_for(lambda: (found := record(stack, slow.id)) and found.state in lifecycle.RUNNING_STATES,
             20, "the task's record running")
    if how == "client":
        stack.stock.control.terminate(slow.id, signal="SIGTERM")
    else:
        done = stack.celery_cli(f"--broker={stack.redis.url}", "control", "terminate",
                                "SIGTERM", slow.id, "--timeout=5")
        assert done.returncode == 0, done.stdout + done.stderr
    wait_for(lambda: not alive(pid), 20, f"pool process {pid} running the task gone")
    wait_for(lambda: slow.state == "REVOKED", 20, "the task revoked")
    wait_for(lambda: record(stack, slow.id).state == "REVOKED", 10, "its record revoked")
    # the pool has its process back: the next task runs at once
    assert stack.stock.send_task("test.echo", kwargs={"value": how},
                                 queue="default").get(timeout=30) == how


def test_an_unknown_task_is_logged_without_its_arguments(stack: Stack) -> None:
    secret = "SECRET-ARGUMENT-7f3a"
    sent = stack.stock.send_task("no.such.task", args=[secret], kwargs={"k": secret},
                                 queue="default")
    wait_for(lambda: sent.state == "FAILURE", 30, "the unknown task failed")
    log = wait_for(lambda: (text := stack.worker.log()) and sent.id in text and text, 10,
                   "the unknown task logged")
    assert "no.such.task" in log
    assert secret not in log


def test_the_cli_beside_a_live_worker_leaves_its_metrics_intact(stack: Stack) -> None:
    """``celery -A taskplane.worker ...`` in the worker's pod (same environment, same
    metrics folder) must not empty the worker's files."""
    stack.stock.send_task("test.echo", kwargs={"value": 1}, queue="default").get(timeout=60)
    before = scrape(stack.metrics_url)
    counted = value(before, "taskplane_tasks_total", task="test.echo", queue="default",
                    outcome="succeeded")
    files = sorted(p.name for p in stack.metrics_dir.iterdir())
    assert counted >= 1 and files
    env = base_env(stack.redis.url, PROMETHEUS_MULTIPROC_DIR=str(stack.metrics_dir))
    for command in (["inspect", "ping"], ["inspect", "registered"]):
        run = stack.celery_cli("-A", "taskplane.worker", *command, "--timeout=5",
                               f"--destination={stack.node}", env=env)
        assert run.returncode == 0, run.stdout + run.stderr
    assert set(files) <= {p.name for p in stack.metrics_dir.iterdir()}
    after = scrape(stack.metrics_url)
    assert value(after, "taskplane_tasks_total", task="test.echo", queue="default",
                 outcome="succeeded") == counted


def test_no_process_leaves_a_metrics_folder_behind(stack: Stack) -> None:
    """Without PROMETHEUS_MULTIPROC_DIR each owner makes a temporary folder; it goes when
    the owner exits: the CLI makes none, a worker and the API remove theirs."""
    tmp = Path(tempfile.mkdtemp(prefix="tp-tools-tmp-"))
    env = {"TMPDIR": str(tmp)}
    run = stack.celery_cli("-A", "taskplane.worker", "inspect", "ping", "--timeout=5",
                           f"--destination={stack.node}", env=base_env(stack.redis.url, **env))
    assert run.returncode == 0, run.stdout + run.stderr
    assert not list(tmp.glob("taskplane-*"))

    worker: Process = start_worker(stack.redis.url, name="tmpdir", concurrency=1,
                                   WORKER_QUEUES=WAITING_QUEUE, **env)
    api = Api(stack.redis.url, workers=1, **env)
    try:
        assert {p.name.split("-metrics-")[0] for p in tmp.glob("taskplane-*")} == {
            "taskplane-worker", "taskplane-api"}
    finally:
        api.close()
        assert worker.stop() == 0
    wait_for(lambda: not list(tmp.glob("taskplane-*")), 10, "temporary folders removed")
    os.rmdir(tmp)
