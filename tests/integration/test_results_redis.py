"""One result store: results live in REDIS_URL's Redis with the records, so a process
told to keep them in another Redis refuses to start, and says why."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.services import VENV_BIN, RedisServer, base_env

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("command", ["worker", "api", "scheduler"])
def test_results_in_another_redis_stop_the_process_at_start(isolated_redis: RedisServer,
                                                            command: str) -> None:
    results = RedisServer().start()
    try:
        env = base_env(isolated_redis.url, RESULT_BACKEND_URL=results.url)
        run = subprocess.run([str(VENV_BIN / "taskplane"), command], env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode != 0
        last = run.stderr.strip().splitlines()[-1]
        assert "RESULT_BACKEND_URL names another Redis than REDIS_URL" in last, run.stderr[-2000:]
        assert "README" in last
        assert results.client().dbsize() == 0  # nothing was written there
    finally:
        results.close()
