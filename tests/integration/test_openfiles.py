"""``taskplane api`` raises its open-files limit at start: gunicorn's workers inherit it."""

from __future__ import annotations

import shutil

import pytest

from taskplane import openfiles
from taskplane.settings import Settings
from tests.support.procs import free_port, http_ok
from tests.support.services import VENV_BIN, Process, RedisServer, base_env

pytestmark = pytest.mark.integration


def _soft_nofile(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as fh:
        line = next(line for line in fh if line.startswith("Max open files"))
    return int(line.split()[3])


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux's prlimit")
def test_gunicorn_workers_run_with_the_raised_limit(isolated_redis: RedisServer) -> None:
    port = free_port()
    env = base_env(isolated_redis.url, API_PORT=str(port), API_WORKERS="1")
    need = openfiles.needed(Settings.from_env(env))
    # started with the common container default (soft 1024) and a hard limit above the need
    args = [str(shutil.which("prlimit")), f"--nofile=1024:{need + 100}", "--",
            str(VENV_BIN / "taskplane"), "api"]
    api = Process("api-openfiles", args, env, port=port, probe="/healthz")
    try:
        api.started_or_stopped(lambda: http_ok(api.base + "/healthz"), 30, "gunicorn /healthz")
        api.wait_children(1)
        assert [_soft_nofile(pid) for pid in (api.pid, *api.children())] == [need, need]
        assert "open-files limit raised from 1024" in api.log()
    finally:
        api.stop()
