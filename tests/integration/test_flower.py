"""Flower from PyPI as the operator console, against a running Taskplane stack.

Started exactly as the README says (the stock ``celery`` command, the broker URL, Taskplane's
Flower configuration, basic auth), it lists the worker and its registered tasks, the
``default`` queue's length across every priority list, and the tasks submitted through
Taskplane's API with their data redacted; and its dashboard loads in a real headless
Chromium (Debian's ``chromium``, installed by ``scripts/browser-tools.sh`` when missing).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests

from taskplane import flowerconfig
from tests.support.sentinel import SentinelSet
from tests.support.services import (
    ROOT,
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

USER, PASSWORD = "ops", "flower-test-password"
SECRET = "flower-must-not-show-this"


class Flower:
    def __init__(self, redis_url: str, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.auth = (USER, PASSWORD)
        self.process = Process("flower", [
            # as `make flower` and the chart: the same file is Celery's configuration
            str(VENV_BIN / "celery"), f"--broker={redis_url}", "--config=taskplane.flowerconfig",
            "flower",
            "--address=127.0.0.1", f"--port={self.port}", f"--conf={flowerconfig.__file__}",
            f"--basic-auth={USER}:{PASSWORD}",
        ], base_env(redis_url, **env))
        try:
            wait_for(self._up, 60, "flower answering")
        except BaseException:
            self.process.stop()  # a failed start leaves no Flower behind
            raise

    def _up(self) -> bool:
        if not self.process.alive():
            raise RuntimeError(f"flower died:\n{self.process.log()[-3000:]}")
        return requests.get(self.base + "/healthcheck", timeout=2).status_code == 200

    def api(self, path: str, **params: Any) -> Any:
        r = requests.get(self.base + path, auth=self.auth, params=params, timeout=30)
        r.raise_for_status()
        return r.json()

    def close(self) -> None:
        self.process.stop()


class Stack:
    def __init__(self) -> None:
        self._cleanup = ExitStack()  # whatever started is stopped, even if a later start fails
        with self._cleanup:
            self.redis = RedisServer().start()
            self._cleanup.callback(self.redis.close)
            # one pool process: while it runs a slow task, what follows waits in the queue
            self.worker: Process = start_worker(self.redis.url, name="flower", concurrency=1)
            self._cleanup.callback(self.worker.stop)
            self.api = Api(self.redis.url, workers=1)
            self._cleanup.callback(self.api.close)
            self.flower = Flower(self.redis.url)
            self._cleanup.callback(self.flower.close)
            self._cleanup = self._cleanup.pop_all()  # started: close() stops them

    def close(self) -> None:
        self._cleanup.close()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    s = Stack()
    yield s
    s.close()


def test_flower_finds_the_master_through_sentinel() -> None:
    """A Sentinel ``REDIS_URL``: Flower's app and its broker page reach the master by the
    master set's name (``REDIS_SENTINEL_MASTER`` into ``broker_transport_options``)."""
    servers = SentinelSet().start()
    try:
        with ExitStack() as running:
            worker = start_worker(servers.url, name="flower", concurrency=1, **servers.env())
            running.callback(worker.stop)
            api = Api(servers.url, workers=1, QUEUES="default", **servers.env())
            running.callback(api.close)
            flower = Flower(servers.url, **servers.env())
            running.callback(flower.close)
            wait_for(lambda: any(n.startswith("flower@") and w.get("registered")
                                 for n, w in flower.api("/api/workers", refresh=1).items()),
                     60, "flower listing the worker through Sentinel")
            worker.stop()  # nothing drains the queue: Flower must count what waits
            for value in range(2):
                api.submit("test.echo", kwargs={"value": value})
            lengths = wait_for(lambda: {q["name"]: q["messages"] for q in
                                        flower.api("/api/queues/length")["active_queues"]},
                               30, "queue lengths from the master")
            assert lengths["default"] == 2, lengths
    finally:
        servers.close()


def test_flower_needs_its_credentials(stack: Stack) -> None:
    for path in ("/", "/api/workers", "/api/tasks"):
        assert requests.get(stack.flower.base + path, timeout=10).status_code == 401, path
        assert requests.get(stack.flower.base + path, auth=(USER, "wrong"),
                            timeout=10).status_code == 401, path


def test_flower_shows_the_worker_the_queue_and_the_api_tasks(stack: Stack) -> None:
    flower, api = stack.flower, stack.api
    workers = wait_for(lambda: {n: w for n, w in flower.api("/api/workers", refresh=1).items()
                                if n.startswith("flower@") and w.get("registered")},
                       60, "flower listing the worker")
    ((node, info),) = workers.items()
    assert {"test.echo", "test.slow", "long_running_task"} <= set(info["registered"])
    assert "default" in {q["name"] for q in info["active_queues"]}

    # The worker busy with one task, three more wait in three different priority lists.
    slow = api.submit("test.slow", kwargs={"seconds": 6})
    api.wait_state(slow["id"], ("STARTED", "PROGRESS"))
    waiting = [api.submit("test.echo", kwargs={"value": SECRET}, priority=p) for p in (9, 5, 0)]
    lengths = wait_for(lambda: {q["name"]: q["messages"]
                                for q in flower.api("/api/queues/length")["active_queues"]},
                       30, "queue lengths")
    assert lengths["default"] == 3
    ours = {q["name"]: q["waiting"] for q in api.get("/v1/queues").json()["items"]}
    assert ours["default"] == 3

    # Flower switched events on: the API's tasks appear as they run, data redacted.
    ids = {slow["id"], *(t["id"] for t in waiting)}

    def listed() -> dict[str, Any] | None:
        tasks = flower.api("/api/tasks")
        done = {i: t for i, t in tasks.items() if i in ids and t["state"] == "SUCCESS"}
        return done if len(done) == len(waiting) + 1 else None

    tasks = wait_for(listed, 60, "flower listing the API's tasks")
    for task in tasks.values():
        assert task["worker"] == node
        assert SECRET not in str(task), task
    assert {tasks[t["id"]]["kwargs"] for t in waiting} == {"<1 redacted>"}
    # the task page (format_task) shows no contents either
    page = requests.get(f"{flower.base}/task/{waiting[0]['id']}", auth=flower.auth, timeout=10)
    assert page.status_code == 200 and SECRET not in page.text


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        subprocess.run([str(ROOT / "scripts" / "browser-tools.sh")], check=True, timeout=900)
        found = shutil.which("chromium")
    assert found, "chromium is not installed: run scripts/browser-tools.sh"
    return found


def test_the_dashboard_loads_in_headless_chromium(stack: Stack, tmp_path: Path) -> None:
    from PIL import Image

    browser = chromium()
    flower = stack.flower
    wait_for(lambda: any(n.startswith("flower@") for n in flower.api("/api/workers")), 60,
             "the worker known to flower")
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{flower.port}/workers"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--user-data-dir=" + str(tmp_path / "profile"), "--virtual-time-budget=5000"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Flower" in dom.stdout and "flower@" in dom.stdout, dom.stdout[:2000]
    shot = tmp_path / "flower-dashboard.png"
    run = subprocess.run([*common, f"--screenshot={shot}", "--window-size=1400,900", url],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 900)
    colours = image.getcolors(maxcolors=1_000_000) or []
    assert len(colours) > 20, "the screenshot is blank"


def _seen_by_flower(stack: Stack) -> dict[str, Any]:
    """A task that returns the secret, submitted through the API and finished as Flower
    saw it. Flower switches events on in the workers it finds, a moment after it finds
    them: a task run before that never reaches it, so submit until one does."""
    flower, api = stack.flower, stack.api

    def one() -> dict[str, Any] | None:
        task = api.submit("test.echo", kwargs={"value": SECRET})
        api.wait_state(task["id"], "SUCCESS")
        try:
            return wait_for(lambda: (t := flower.api("/api/tasks").get(task["id"])) and
                            t["state"] == "SUCCESS" and {**t, "id": task["id"]}, 5,
                            "flower seeing the task end")
        except TimeoutError:
            return None

    return wait_for(one, 90, "a task flower saw end")


def test_a_finished_tasks_result_shows_the_redaction_marker(stack: Stack, tmp_path: Path) -> None:
    """Flower's task page and its API show ``<redacted>`` for the result: never the value,
    never a cut repr such as ``", ..."`` (what a zero ``resultrepr_maxsize`` renders)."""
    flower = stack.flower
    seen = _seen_by_flower(stack)
    assert seen["result"] == flowerconfig.REDACTED == "<redacted>", seen
    assert seen["kwargs"] == "<1 redacted>"

    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{flower.port}/task/{seen['id']}"
    common = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--user-data-dir=" + str(tmp_path / "profile"), "--virtual-time-budget=3000"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert seen["id"] in dom.stdout and SECRET not in dom.stdout
    # the rendered page: the Result row holds the marker, nothing else
    result = re.search(r"<dt>Result</dt>\s*<dd><pre[^>]*><code>(.*?)</code>", dom.stdout, re.S)
    assert result is not None, dom.stdout[:3000]
    assert html.unescape(result.group(1)) == "<redacted>"
    assert ", ..." not in dom.stdout
    shot = tmp_path / "flower-task.png"
    run = subprocess.run([*common, f"--screenshot={shot}", "--window-size=1400,900", url],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    if keep := os.environ.get("FLOWER_SCREENSHOT"):  # to look at it: FLOWER_SCREENSHOT=file.png
        shutil.copy(shot, keep)
