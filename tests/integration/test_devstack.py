"""``taskplane dev`` (``make run``) twice on one machine: two stacks side by side, each
saying where it is in its ``.run/env``, each stopped cleanly by one signal.

Each stack runs from its own folder, as a second clone would, with the environment a
newcomer has: no ``REDIS_URL``, no tokens, no ports. The first takes whatever defaults
are free; the second finds them taken and falls back to free ports, and says so.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from celery import Celery

from taskplane import devstack
from tests.support.procs import (
    MissingBinary,
    Proc,
    descendants,
    find_binary,
    group_alive,
    http_ok,
    process_groups,
    wait_for,
)
from tests.support.services import ROOT, VENV_BIN

pytestmark = pytest.mark.integration

STACK_ENV_SCRIPT = ROOT / "scripts" / "stack-env.sh"
#: Every setting the dev stack would otherwise take from the caller, and the CLI's own.
CALLER_SETTINGS = ("REDIS_URL", "API_TOKENS", "API_ADMIN_TOKENS", "AUTH_DISABLED",
                   *devstack.SERVED_PORTS, "PROMETHEUS_PORT", "TASK_MODULES", "BUILTIN_TASKS")
CSV = "a,b\n1,2\n3,4"


def _prometheus_installed() -> bool:
    try:
        find_binary("prometheus")
    except MissingBinary:
        return False
    return True


MONITOR = _prometheus_installed()


class DevStack:
    """One ``taskplane dev`` in ``folder``; ``env`` is what its ``.run/env`` sets."""

    def __init__(self, folder: Path, monitor: bool = False) -> None:
        self.folder = folder
        env = {k: v for k, v in os.environ.items()
               if k not in CALLER_SETTINGS and not k.startswith(("PROMETHEUS_", "TASKPLANE_"))}
        # small, on a shared 2-core machine: one API process, one pool process
        env.update(API_WORKERS="1", WORKER_CONCURRENCY="1", WORKER_SOFT_SHUTDOWN_TIMEOUT="1")
        args = [str(VENV_BIN / "taskplane"), "dev", *(["--monitor"] if monitor else [])]
        self.proc = Proc(f"dev-{folder.name}", args, env, cwd=folder)
        self.env_path = folder / ".run" / "env"
        self.proc.started_or_stopped(self.env_path.exists, 60, ".run/env written")
        self.env = self.sourced()
        urls = [self.env["API_URL"] + "/healthz", self.env["EXPORTER_METRICS_URL"],
                self.env["WORKER_METRICS_URL"], self.env["SCHEDULER_METRICS_URL"],
                *([self.env["PROMETHEUS_URL"] + "/-/ready"] if monitor else [])]
        self.proc.started_or_stopped(lambda: all(http_ok(u) for u in urls), 120,
                                     "API, exporter, worker and scheduler answering")

    def sourced(self) -> dict[str, str]:
        """What a shell has after ``. .run/env`` (a real shell: the file must source)."""
        out = subprocess.run(["sh", "-c", ". ./.run/env && env -0"], cwd=self.folder,
                             capture_output=True, text=True, timeout=10, env={"PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr
        return dict(line.split("=", 1) for line in out.stdout.split("\0") if "=" in line)

    def ports(self) -> set[int]:
        return {int(self.env[n].rsplit(":", 1)[1].split("/")[0])
                for n in ("REDIS_URL", "API_URL", "EXPORTER_METRICS_URL", "WORKER_METRICS_URL",
                          "SCHEDULER_METRICS_URL")}

    def api(self, method: str, path: str, token: str, **kwargs: object) -> requests.Response:
        return requests.request(method, self.env["API_URL"] + path, timeout=10,
                                headers={"Authorization": f"Bearer {token}"}, **kwargs)  # type: ignore[arg-type]

    def run_task(self) -> dict[str, object]:
        r = self.api("POST", "/v1/tasks", self.env["TOKEN"],
                     json={"task": "reports.summary", "kwargs": {"csv": CSV}})
        assert r.status_code == 202, r.text
        task_id = r.json()["id"]
        return wait_for(lambda: (body := self.api("GET", f"/v1/tasks/{task_id}",
                                                  self.env["TOKEN"]).json())["state"] == "SUCCESS"
                        and body, 60, f"task {task_id} SUCCESS", interval=0.2)

    def stop(self) -> None:
        """What Ctrl-C does: honcho stops every process it started (each in its own group),
        then exits; nothing of the stack is left and ``.run/env`` is gone."""
        started = descendants(self.proc.pid)
        groups = process_groups(started) - {os.getpgid(0)}
        assert len(groups) >= 5, f"redis, api, worker, exporter, scheduler: {groups}"
        self.proc.send(signal.SIGINT)
        code = self.proc.wait_exit(30)
        assert code is not None, f"taskplane dev still runs:\n{self.proc.log()[-3000:]}"
        wait_for(lambda: not any(group_alive(g) for g in groups), 15,
                 "every process group of the stack gone")
        assert "SIGKILL" not in self.proc.log(), self.proc.log()[-3000:]
        assert not self.env_path.exists()
        self.proc.stop()  # closes the log

    def kill(self) -> None:
        """Whatever happened: stop the supervisor's group and every group it made."""
        groups = process_groups(descendants(self.proc.pid)) - {os.getpgid(0)}
        self.proc.stop(timeout=15)
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[DevStack]]:
    """Two stacks for the whole module (ten processes each: started once); the last test
    stops them and checks nothing is left, the fixture kills whatever a failure left."""
    started: list[DevStack] = []
    try:
        # the second starts once the first holds its ports; it runs `make monitor`'s stack
        # (Prometheus too) where Prometheus is installed
        started.append(DevStack(tmp_path_factory.mktemp("first")))
        started.append(DevStack(tmp_path_factory.mktemp("second"), monitor=MONITOR))
        yield started
    finally:
        for stack in started:
            stack.kill()


def test_the_second_stack_falls_back_to_free_ports_and_says_so(stacks: list[DevStack]) -> None:
    first, second = stacks
    assert not first.ports() & second.ports(), (first.env, second.env)
    # every default the first holds, the second reports as taken and replaced
    log = second.proc.log()
    defaults = {"REDIS_URL": devstack.REDIS_PORT, "API_URL": 8000, "EXPORTER_METRICS_URL": 9808,
                "WORKER_METRICS_URL": 9809, "SCHEDULER_METRICS_URL": 9810}
    for name, default in defaults.items():
        if f":{default}" in first.env[name]:
            assert f"port {default} is taken, using" in log, log[-3000:]
    # the banner prints every variable of .run/env with its value, the worker's included
    for name in ("REDIS_URL", "API_URL", "TOKEN", "OPERATOR_TOKEN", "API_METRICS_URL",
                 "EXPORTER_METRICS_URL", "WORKER_METRICS_URL", "SCHEDULER_METRICS_URL"):
        assert second.env[name], name
        assert f"{name} " in log and second.env[name] in log, name
    assert second.env["TASKPLANE_URL"] == second.env["API_URL"]
    assert second.env["TASKPLANE_TOKEN"] == second.env["TOKEN"]
    assert (second.env_path.stat().st_mode & 0o777) == 0o600  # it holds tokens


def test_both_stacks_run_tasks_and_keep_their_own_tokens(stacks: list[DevStack]) -> None:
    for stack in stacks:
        assert stack.run_task()["result"] is not None
        metrics = requests.get(stack.env["API_METRICS_URL"], timeout=10).text
        assert "taskplane_api_tasks_accepted_total" in metrics
    first, second = stacks
    assert first.env["TOKEN"] != second.env["TOKEN"]
    assert second.api("GET", "/v1/tasks", first.env["TOKEN"]).status_code == 401


def test_operator_token_sees_a_stock_clients_tasks(stacks: list[DevStack]) -> None:
    """A stock Celery client pointed at ``$REDIS_URL`` from ``.run/env`` reaches this stack;
    its task belongs to the ``system`` tenant, which ``$OPERATOR_TOKEN`` sees and the
    tenant token does not."""
    stack = stacks[1]
    stock = Celery("stock", broker=stack.env["REDIS_URL"], backend=stack.env["REDIS_URL"])
    try:
        sent = stock.send_task("reports.summary", kwargs={"csv": CSV}, queue="default")
        assert sent.get(timeout=60)
    finally:
        stock.close()

    def listed(token: str) -> list[dict[str, object]]:
        r = stack.api("GET", "/v1/tasks", token)
        assert r.status_code == 200, r.text
        return list(r.json()["items"])

    seen = wait_for(lambda: [t for t in listed(stack.env["OPERATOR_TOKEN"]) if t["id"] == sent.id],
                    30, "the stock task listed for the operator")
    assert seen[0]["tenant"] == "system"
    assert not [t for t in listed(stack.env["TOKEN"]) if t["id"] == sent.id]


@pytest.mark.skipif(not MONITOR, reason="prometheus is not installed (scripts/monitoring-tools.sh)")
def test_make_monitor_scrapes_its_own_stack(stacks: list[DevStack]) -> None:
    """The second stack's Prometheus scrapes the second stack's ports (fallbacks included)."""
    stack = stacks[1]
    url = stack.env["PROMETHEUS_URL"] + "/api/v1/query"

    def up() -> dict[str, str] | None:
        body = requests.get(url, params={"query": "up == 1"}, timeout=5).json()
        found = {r["metric"]["job"]: r["metric"]["instance"] for r in body["data"]["result"]}
        return found if len(found) == 4 else None

    targets = wait_for(up, 60, "Prometheus scraping the API, worker, exporter and scheduler",
                       interval=0.5)
    assert targets["taskplane-worker"] == stack.env["WORKER_METRICS_URL"].split("//")[1].split("/")[0]
    assert targets["taskplane-api"] == stack.env["API_URL"].split("//")[1]


def stack_tool(folder: Path) -> subprocess.CompletedProcess[str]:
    """What ``make celery ARGS="inspect ping"`` runs, from ``folder``."""
    command = (f". {shlex.quote(str(STACK_ENV_SCRIPT))} && "
               f"{shlex.quote(str(VENV_BIN / 'celery'))} --broker=\"$REDIS_URL\" inspect ping")
    return subprocess.run(["bash", "-c", command], cwd=folder, env={"PATH": os.environ["PATH"]},
                          capture_output=True, text=True, timeout=60)


def test_tools_reach_the_stack_of_their_folder(stacks: list[DevStack]) -> None:
    for stack in stacks:
        out = stack_tool(stack.folder)
        assert out.returncode == 0 and "pong" in out.stdout, out.stdout + out.stderr


def test_a_second_stack_in_the_same_folder_is_refused(stacks: list[DevStack]) -> None:
    """Same folder, same Redis data and ``.run/env``: the second says so and exits."""
    stack = stacks[0]
    again = Proc("dev-again", [str(VENV_BIN / "taskplane"), "dev"], dict(os.environ),
                 cwd=stack.folder)
    try:
        assert again.wait_exit(30) not in (None, 0)
        assert "a stack already runs from" in again.log()
    finally:
        again.stop()
    assert stack.env_path.exists()
    assert stack.sourced()["API_URL"] == stack.env["API_URL"]


def test_stopping_one_stack_leaves_the_other_and_nothing_behind(stacks: list[DevStack]) -> None:
    first, second = stacks
    first.stop()
    assert second.run_task()["state"] == "SUCCESS"
    out = stack_tool(first.folder)  # no stack there any more: a clear error, no stray Redis
    assert out.returncode == 1 and "no local stack runs here" in out.stderr, out.stderr
    second.stop()
