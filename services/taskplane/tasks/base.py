"""The Celery task base class every registered task runs under.

It exists for one check Celery cannot make by itself: a task revoked while no
worker was listening (revokes are broadcast, not stored) must still not run
when a worker later receives it. The task record in Redis is the lasting
source, so each run asks it first, in the same round trip that stamps
``started_at``.
"""

from __future__ import annotations

from typing import Any

from celery import Task, current_task
from celery.exceptions import Ignore

#: Custom state a running task reports through :func:`progress`.
PROGRESS = "PROGRESS"


class TaskplaneTask(Task):
    """Stamps the task record on start and skips tasks revoked in the record."""

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from ..celery_app import store_for  # the app binds the store; tasks never build one

        request = self.request
        if request.id and not request.called_directly:
            store = store_for(self.app)
            if store.start(request.id, retries=request.retries or 0):
                raise Ignore()  # revoked while queued: the API already stored REVOKED
        return super().__call__(*args, **kwargs)


def progress(percent: float, message: str = "") -> None:
    """Report progress of the running task (``state=PROGRESS``); a no-op outside a worker."""
    task = current_task
    if task is None or task.request.called_directly or not task.request.id:
        return
    task.update_state(
        state=PROGRESS,
        meta={"percent": max(0.0, min(100.0, float(percent))), "message": message},
    )
