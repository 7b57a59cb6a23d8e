"""Worker-side hooks: keep each task's record and the dead-letter list true to what happened.

Celery signals fire in the pool process for outcomes it traces (success, failure,
retry) and in the main process for outcomes it only observes (hard time limit,
revoke, a pool process that died), so every handler here is safe in either.

``celery -A taskplane.worker worker`` works too: the app is built lazily on first
access, so importing this module starts nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from celery import Celery, signals, states
from celery.exceptions import Retry

from .celery_app import create_celery, runtime_for
from .settings import Settings

log = logging.getLogger("taskplane.worker")
_connected = False


def _store(sender: Any) -> Any:
    return runtime_for(sender.app).store


def _on_postrun(sender: Any = None, task_id: str | None = None, state: str | None = None,
                **_: Any) -> None:
    if task_id and state in states.READY_STATES:
        _store(sender).finish(task_id)


def _on_retry(sender: Any = None, request: Any = None, **_: Any) -> None:
    if request is not None and request.id:
        _store(sender).set_retries(request.id, (request.retries or 0) + 1)


def _on_failure(sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
                args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None,
                **_: Any) -> None:
    if not task_id or isinstance(exception, Retry):
        return
    store = _store(sender)
    error = {"type": type(exception).__name__, "message": str(exception)[:2000]}
    retried = bool(getattr(sender, "autoretry_for", ()))
    reason = "retries exhausted" if retried and _declared(sender, exception) else "failed"
    store.dead_letter(task_id, sender.name, args, kwargs, error, reason)
    store.finish(task_id)
    log.info("task %s[%s] dead-lettered: %s", sender.name, task_id, error["type"])


def _declared(task: Any, exception: BaseException | None) -> bool:
    return exception is not None and isinstance(exception, tuple(task.autoretry_for))


def _on_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    if request is not None and request.id:
        store = _store(sender)
        store.mark_revoked(request.id)
        store.finish(request.id)


def connect_signals() -> None:
    """Wire the handlers once per process (weak=False: they are module functions)."""
    global _connected
    if _connected:
        return
    signals.task_postrun.connect(_on_postrun, weak=False)
    signals.task_retry.connect(_on_retry, weak=False)
    signals.task_failure.connect(_on_failure, weak=False)
    signals.task_revoked.connect(_on_revoked, weak=False)
    _connected = True


def create_worker_app(settings: Settings) -> Celery:
    app = create_celery(settings)
    connect_signals()
    return app


def worker_argv(settings: Settings, extra: Sequence[str] = ()) -> list[str]:
    """The ``celery worker`` command line the settings describe; ``extra`` wins."""
    queues = settings.worker_queues or tuple(runtime_queues(settings))
    return [
        "worker",
        f"--loglevel={settings.log_level}",
        f"--queues={','.join(queues)}",
        f"--concurrency={settings.worker_concurrency}",
        "--pool=prefork",
        "--without-mingle",  # pool start-up does not wait on other workers' replies
        "--without-gossip",
        *extra,
    ]


def runtime_queues(settings: Settings) -> list[str]:
    return runtime_for(_app(settings)).known_queues()


_APP: Celery | None = None


def _app(settings: Settings | None = None) -> Celery:
    global _APP
    if _APP is None:
        _APP = create_worker_app(settings or Settings.from_env())
    return _APP


def run(settings: Settings, extra: Sequence[str] = ()) -> None:
    """Start a worker in this process (the container's and the CLI's entry point)."""
    # SIGTERM means "soft shutdown": finish running tasks for WORKER_SOFT_SHUTDOWN_TIMEOUT,
    # then hand the rest back. billiard reads this at import, so it must be set first.
    os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")
    app = _app(settings)
    app.worker_main(worker_argv(settings, extra))


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        return _app()
    raise AttributeError(name)
