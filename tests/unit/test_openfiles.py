"""The API's open-files limit: what one process needs, and raising the soft limit to it."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from taskplane import openfiles
from taskplane.settings import Settings

INF = resource.RLIM_INFINITY


def test_a_process_needs_its_connections_its_followers_its_redis_pool_and_a_margin() -> None:
    s = Settings.from_env({"API_WORKER_CONNECTIONS": "5000", "API_REDIS_CONNECTIONS": "40",
                           "MAX_FOLLOWERS": "3000"})
    # under gevent, gunicorn's connections and the detached followers' sockets
    assert openfiles.needed(s) == 5000 + 3000 + 40 + openfiles.MARGIN
    threads = Settings.from_env({"API_WORKER_CONNECTIONS": "5000", "API_REDIS_CONNECTIONS": "40",
                                 "MAX_FOLLOWERS": "3000", "API_WORKER_CLASS": "gthread"})
    assert openfiles.needed(threads) == 5000 + 40 + openfiles.MARGIN
    # per process, not per pod: RLIMIT_NOFILE counts per process
    two = Settings.from_env({"API_WORKER_CONNECTIONS": "5000", "API_REDIS_CONNECTIONS": "40",
                             "MAX_FOLLOWERS": "3000", "API_WORKERS": "4"})
    assert openfiles.needed(two) == openfiles.needed(s)


@pytest.mark.parametrize(("need", "soft", "hard", "expected"), [
    (4306, 1024, 1048576, 4306),  # raised to the need
    (4306, 1024, 2000, 2000),     # up to the hard limit only
    (4306, 65536, 1048576, 65536),  # never lowered
    (4306, 1024, INF, 4306),
    (4306, INF, INF, INF),
])
def test_the_soft_limit_goes_to_the_need_within_the_hard_limit(
        need: int, soft: int, hard: int, expected: int) -> None:
    assert openfiles.plan(need, soft, hard) == expected


RAISE = """
import logging, resource, sys
from taskplane import openfiles
from taskplane.settings import Settings
logging.basicConfig(stream=sys.stdout, level="INFO", format="%(levelname)s %(message)s")
out = openfiles.raise_for(Settings.from_env({}))
print("soft", resource.getrlimit(resource.RLIMIT_NOFILE)[0], "short", out.short)
"""


def _run_with_limits(soft: int, hard: int) -> str:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    done = subprocess.run([sys.executable, "-c", RAISE], capture_output=True, text=True,
                          preexec_fn=limit, timeout=60, check=True)
    return done.stdout


def test_raise_for_sets_the_process_limit_and_warns_naming_the_setting_when_short() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = openfiles.needed(Settings.from_env({}))
    if hard != INF and hard < need + 1:
        pytest.skip(f"this machine's hard open-files limit ({hard}) is below {need}")
    roomy = _run_with_limits(256, need + 1)
    assert f"soft {need} short False" in roomy
    assert "WARNING" not in roomy
    short = _run_with_limits(256, 1000)
    assert "soft 1000 short True" in short
    assert "WARNING" in short and "API_WORKER_CONNECTIONS=4000" in short
