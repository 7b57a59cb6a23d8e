"""taskplane.pool: a terminate naming a signal the task's process ignores becomes SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys

from taskplane import pool
from tests.support.services import wait_for

IGNORES_TERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print(1, flush=True); time.sleep(60)")


def test_a_signal_the_process_ignores_is_sent_as_sigkill() -> None:
    child = subprocess.Popen([sys.executable, "-c", IGNORES_TERM], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"1"
        wait_for(lambda: signal.SIGTERM in (pool.ignored_signals(child.pid) or set()), 5,
                 "SIGTERM ignored")
        assert pool.effective_signal(child.pid, signal.SIGTERM) == signal.SIGKILL
        assert pool.effective_signal(child.pid, signal.SIGUSR1) == signal.SIGUSR1
    finally:
        child.kill()
        child.wait(5)
    assert pool.ignored_signals(child.pid) is None  # gone: the signal goes as asked
    assert pool.effective_signal(child.pid, signal.SIGTERM) == signal.SIGTERM


def test_signal_names_and_numbers() -> None:
    assert pool._signum(None) == signal.SIGTERM  # Celery's default
    assert pool._signum("TERM") == pool._signum("SIGTERM") == signal.SIGTERM
    assert pool._signum("sigkill") == pool._signum(9) == pool._signum("9") == signal.SIGKILL
