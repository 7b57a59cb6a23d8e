"""One shutdown model by default: a bare ``taskplane worker``, the worker image and the
chart all stop warm (``taskplane.worker.SHUTDOWN_MODEL``): running tasks finish."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import yaml

from taskplane.worker import SHUTDOWN_MODEL
from tests.support.services import VENV_BIN, Api, Process, RedisServer, base_env

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_is_warm_in_the_image_and_the_chart() -> None:
    assert SHUTDOWN_MODEL == "warm"
    dockerfile = (ROOT / "Dockerfile.worker").read_text()
    remap = re.findall(r"^\s*REMAP_SIGTERM=(\S*?)\s*\\?$", dockerfile, re.MULTILINE)
    assert remap == ['""'], remap  # set once, empty: Celery's SIGTERM, the warm shutdown
    values = yaml.safe_load((ROOT / "charts/taskplane/values.yaml").read_text())
    assert values["workers"]["defaults"]["shutdown"] == SHUTDOWN_MODEL


@pytest.mark.integration
def test_a_bare_worker_finishes_a_task_longer_than_the_soft_timeout(
        isolated_redis: RedisServer) -> None:
    """No REMAP_SIGTERM in the environment: SIGTERM lets the running task end SUCCESS
    (a soft shutdown would hand it back after WORKER_SOFT_SHUTDOWN_TIMEOUT, 1 s here)."""
    api = Api(isolated_redis.url, workers=1)
    env = base_env(isolated_redis.url, WORKER_CONCURRENCY="1", WORKER_METRICS_PORT="0",
                   WORKER_SOFT_SHUTDOWN_TIMEOUT="1")
    env.pop("REMAP_SIGTERM")
    worker = Process("worker-bare", [str(VENV_BIN / "taskplane"), "worker",
                                     "--hostname=bare@%h"], env)
    try:
        worker.started_or_stopped(lambda: " ready." in worker.log(), 60, "worker bare ready")
        task = api.submit("test.slow", kwargs={"seconds": 3, "key": "bare-warm"})
        api.wait_state(task["id"], ("STARTED", "PROGRESS"))
        worker.send(signal.SIGTERM)  # to the main process only, as the kubelet sends it
        assert worker.wait_exit(30) == 0, worker.log()[-2000:]
        assert api.get(f"/v1/tasks/{task['id']}").json()["state"] == "SUCCESS"
        assert int(isolated_redis.client().get("test:count:bare-warm") or 0) == 1
    finally:
        worker.stop(signal.SIGKILL)
        api.close()
