"""The Celery task base class every registered task runs under.

It exists for two checks Celery cannot make by itself, both answered by the task
record in the same round trip that stamps ``started_at`` and stores the STARTED state
(in place of Celery's ``task_track_started``, which would cost a round trip more):

* a task revoked while no worker was listening (revokes are broadcast, not stored)
  must still not run when a worker later receives it, and a redelivered task that
  already ended (its worker died before acknowledging) must not run again;
* behind Sentinel, a second delivery of a task another live worker runs (a failover
  handed it out again: ``lifecycle/run_leases.py``) must not run beside it: it is sent
  again for when that run's lease lapses, where it is dropped if the run ended and runs
  if its worker died;
* a task whose process died under it ``MAX_DELIVERIES`` times (it segfaults, it is
  OOM-killed, it kills itself) must not be handed to yet another process: it fails
  as poisoned and goes to the dead-letter list.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from celery import Task, current_task
from celery.app.task import get_actual_ignore_result  # type: ignore[attr-defined]  # Celery's own helper, absent from celery-types
from celery.exceptions import Ignore, Reject

from ..lifecycle import PoisonedTask, TaskRecord
from ..results import ResultBackend, stock_record
from ..runtime import runtime_of

if TYPE_CHECKING:
    from datetime import datetime

log = logging.getLogger("taskplane.worker")

#: Custom state a running task reports through :func:`progress`.
PROGRESS = "PROGRESS"


#: Shortest delay before a retry runs. With full jitter Celery may pick 0 s, and the new
#: run could then start before the old one has stored its RETRY state (which can no
#: longer hide an ending, but would show RETRY on a task that is running again).
MIN_RETRY_DELAY = 1.0


class TaskplaneTask(Task[Any, Any]):
    """Stamps the task record on start; skips revoked tasks, quarantines poisoned ones."""

    abstract = True

    def retry(self, args: tuple[Any, ...] | None = None, kwargs: dict[str, Any] | None = None,
              exc: Exception | None = None, throw: bool = True, eta: datetime | None = None,
              countdown: float | None = None, max_retries: int | None = None,
              **options: Any) -> Any:
        if eta is None:
            countdown = max(MIN_RETRY_DELAY, countdown or 0.0)
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.id and not request.called_directly:
            runtime = runtime_of(self.app)
            backend = self.backend
            tracked = backend if isinstance(backend, ResultBackend) and not (
                get_actual_ignore_result(self, request)) else None
            started = tracked.started_state(request, os.getpid()) if tracked else None
            run = runtime.lifecycle.start(request.id, retries=request.retries or 0,
                                          started=started, adopt=self._adopted(request))
            if run.verdict == "running":
                self._postpone(request, run.wait)
            if not run.runs:
                # Revoked while queued (the revoke stored REVOKED), or a redelivery of a
                # task that already ended: it does not run again.
                request.taskplane_skipped = True  # type: ignore[attr-defined]  # our flag on Celery's request, read by worker.py
                raise Ignore()
            limit = runtime.settings.max_deliveries
            if run.died >= limit:
                raise PoisonedTask(
                    f"the worker process died during {run.died} runs of this task "
                    f"(MAX_DELIVERIES={limit}); not running it again")
        return super().__call__(*args, **kwargs)


    def _postpone(self, request: Any, wait: float) -> None:
        """Another live worker runs this task: send this delivery again, due when that
        run's lease lapses (``wait`` seconds, plus a lease interval's margin), and skip it
        now (acknowledged). Due, it finds the task ended (dropped), still leased (sent
        again), or abandoned by a dead worker (run, as a redelivery)."""
        margin = runtime_of(self.app).settings.lease_interval
        request.taskplane_skipped = True  # no run started here: none ends (worker.py)
        try:
            self.signature_from_request(request, countdown=wait + margin,
                                        retries=request.retries or 0).apply_async()
        except Exception as exc:
            # Not sent: never let it fail the task (the live run's record would end
            # FAILURE); hand this delivery back to its queue to be tried again.
            log.warning("task %s[%s] runs on a live worker; sending its delivery again "
                        "failed (%s): handed back", self.name, request.id,
                        type(exc).__name__)
            raise Reject(exc, requeue=True) from exc
        log.warning("task %s[%s] is running on a live worker: delivery postponed %.1fs",
                    self.name, request.id, wait + margin)
        request.taskplane_postponed = True
        raise Ignore()

    def _adopted(self, request: Any) -> TaskRecord | None:
        """The record of a task sent around the API (no tenant header), should it have
        none (:func:`~taskplane.results.stock_record`)."""
        return stock_record(request.id, request, self.name,
                            runtime_of(self.app).settings.default_queue)


def progress(percent: float, message: str = "") -> None:
    """Report progress of the running task (``state=PROGRESS``); a no-op outside a worker."""
    task = current_task  # a proxy: false when no task runs (a plain call of the function)
    if not task or task.request.called_directly or not task.request.id:
        return
    task.update_state(
        state=PROGRESS,
        meta={"percent": max(0.0, min(100.0, float(percent))), "message": message},
    )
