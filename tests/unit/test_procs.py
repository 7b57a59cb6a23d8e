"""The process harness itself: fail-fast waits, group stops, the /proc readers."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from tests.support.procs import (
    Proc,
    ProcessExited,
    children,
    descendants,
    group_alive,
    process_groups,
    rss_kib,
    stop_all,
    wait_for,
)

#: Forks a grandchild that ignores SIGTERM, prints both pids, then waits.
TREE = """
import os, signal, sys, time
pid = os.fork()
if pid == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(600)
    os._exit(0)
print(os.getpid(), pid, flush=True)
time.sleep(600)
"""


def python(code: str, name: str = "py") -> Proc:
    return Proc(name, [sys.executable, "-c", code], os.environ)


def test_a_wait_fails_fast_with_the_log_when_the_process_exits() -> None:
    proc = python("import sys; print('cannot bind port 8000'); sys.exit(3)", "dies")
    started = time.monotonic()
    with pytest.raises(ProcessExited, match="cannot bind port 8000") as info:
        proc.wait_until(lambda: False, 30, "never ready")
    assert time.monotonic() - started < 10  # not the 30 s timeout
    assert "dies exited (3)" in str(info.value)
    proc.stop()


def test_a_failed_start_leaves_nothing_behind() -> None:
    proc = python("import time; time.sleep(600)", "slow")
    with pytest.raises(TimeoutError, match="slow: ready"):
        proc.started_or_stopped(lambda: False, 0.3, "ready")
    assert not proc.alive()


def test_stop_takes_the_whole_group_even_what_ignores_sigterm() -> None:
    proc = python(TREE, "tree")
    parent, grandchild = (int(x) for x in
                          proc.wait_until(lambda: proc.log().split() or None, 10, "pids"))
    assert parent == proc.pid and children(proc.pid) == [grandchild]
    assert descendants(proc.pid) == [grandchild]
    assert process_groups([proc.pid, grandchild]) == {proc.pid}
    assert rss_kib(grandchild) is not None
    proc.stop(timeout=1)
    wait_for(lambda: not group_alive(proc.pid), 10, "the group gone")
    assert rss_kib(grandchild) is None


def test_stop_all_signals_every_group_before_waiting() -> None:
    procs = [python("import time; time.sleep(600)", f"p{i}") for i in range(3)]
    started = time.monotonic()
    stop_all(procs, signal.SIGTERM, timeout=10)
    assert time.monotonic() - started < 5 and not any(p.alive() for p in procs)


def test_wait_for_names_what_it_waited_for_and_the_last_error() -> None:
    def boom() -> bool:
        raise ValueError("connection refused")

    with pytest.raises(TimeoutError, match=r"the API.*connection refused"):
        wait_for(boom, 0.2, "the API")
