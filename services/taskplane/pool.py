"""The worker's prefork pool: Celery's own, except that "terminate" always terminates.

Every entry point that stops a running task ends in the pool's ``terminate_job(pid,
signal)``: Taskplane's ``DELETE /v1/tasks/<id>?terminate=true``, Flower's *Terminate*
button and ``celery control terminate <signal> <id>``. Flower's button and the CLI's usual
invocation send SIGTERM. While SIGTERM means "soft shutdown" (``REMAP_SIGTERM=SIGQUIT``),
billiard makes pool processes ignore it, so such a terminate would answer success and the
task would run on. So a signal the task's process ignores is delivered as SIGKILL, the
only signal that stops it whatever it ignores; any other signal is delivered as asked.
Celery then reports the run as terminated and the task ends REVOKED, as for the API.

Selected with Celery's public ``worker_pool`` setting (``create_worker_app``), so
``taskplane worker`` and ``celery -A taskplane.worker worker`` both use it.
"""

from __future__ import annotations

import functools
import logging
import signal as signals
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery.concurrency.prefork import TaskPool as PreforkPool

log = logging.getLogger("taskplane.worker")

#: The ``worker_pool`` setting naming this pool.
POOL = "taskplane.pool:TaskPool"


def ignored_signals(pid: int) -> set[int] | None:
    """The signals process ``pid`` ignores (Linux ``/proc/<pid>/status``, ``SigIgn``);
    None where that cannot be read (another OS, the process gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("SigIgn:"):
            mask = int(line.split(":", 1)[1].strip(), 16)
            return {bit + 1 for bit in range(64) if mask >> bit & 1}
    return None


def effective_signal(pid: int, requested: int) -> int:
    """The signal that makes ``terminate`` do what it says for process ``pid``."""
    ignored = ignored_signals(pid)
    if ignored is not None and requested in ignored:
        return int(signals.SIGKILL)
    return requested


def _signum(signal: Any) -> int:
    """A signal number from what Celery passes: a number, a name (``TERM``/``SIGTERM``), or
    None (its default, SIGTERM)."""
    if signal is None:
        return int(signals.SIGTERM)
    if isinstance(signal, str) and not signal.isdigit():
        name = signal.upper()
        return int(signals.Signals[name if name.startswith("SIG") else f"SIG{name}"])
    return int(signal)


class TaskPool(PreforkPool):
    """Celery's prefork pool whose ``terminate_job`` never sends a signal that is ignored."""

    def on_start(self) -> None:
        super().on_start()
        # Celery's on_start binds ``terminate_job`` to its process pool's method on the
        # instance; wrap whatever it bound rather than reaching into the pool behind it.
        # (an instance attribute shadowing the method, as Celery's own on_start sets it)
        self.terminate_job = functools.partial(  # type: ignore[method-assign]  # as Celery does
            _terminate, self.terminate_job)


def _terminate(terminate_job: Callable[[int, int], Any], pid: int, signal: Any = None) -> Any:
    requested = _signum(signal)
    sent = effective_signal(pid, requested)
    if sent != requested:
        log.info("terminate: pool process %d ignores %s; sending SIGKILL", pid,
                 signals.Signals(requested).name)
    return terminate_job(pid, sent)
