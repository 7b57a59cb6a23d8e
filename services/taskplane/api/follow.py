"""Following a task without polling: ``GET /v1/tasks/<id>?wait=`` and Server-Sent Events.

Every state write publishes the stored result on the channel named like its key (the
lifecycle's ``write_result`` runs ``PUBLISH`` in the same script, as Celery's backend
does). A follower subscribes to that channel first and reads the task second, so no
change can fall between the two; then it sleeps in Redis until a change is published or
its deadline passes, and reads the task again. Nothing here polls on a timer.

Capacity: a follower holds a gunicorn thread and one Redis connection for as long as it
follows. So that following can never starve submissions, a process lets at most
``API_THREADS - 1`` requests follow at once and keeps a thread for everything else: an API
pod holds ``API_WORKERS x (API_THREADS - 1)`` followers (14 with the defaults). A wait
beyond that answers at once with the current state (the client simply asks again); an
event stream beyond it is a 429 with ``Retry-After``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from .. import lifecycle
from .context import api_context
from .errors import ApiError
from .status import TaskStatus, load

#: A comment line this often keeps proxies from closing an idle stream.
KEEPALIVE = 15.0

_slots: threading.BoundedSemaphore | None = None
_slots_lock = threading.Lock()


def capacity(api_threads: int) -> int:
    """Followers one API process holds at once: all its threads but one."""
    return max(1, api_threads - 1)


def _followers() -> threading.BoundedSemaphore:
    global _slots
    with _slots_lock:
        if _slots is None:
            _slots = threading.BoundedSemaphore(capacity(api_context().settings.api_threads))
        return _slots


@contextmanager
def _slot() -> Iterator[bool]:
    """A follower slot if one is free (True), without waiting for one."""
    slots = _followers()
    taken = slots.acquire(blocking=False)
    try:
        yield taken
    finally:
        if taken:
            slots.release()


def _final(status: TaskStatus) -> bool:
    return status.state in lifecycle.FINAL_STATES


class _Subscription:
    """The task's result channel, subscribed before the first read."""

    def __init__(self, task_id: str) -> None:
        self.pubsub = api_context().runtime.lifecycle.subscribe(task_id)

    def next_change(self, timeout: float) -> bool:
        """Sleep in Redis until a change is published (True) or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.pubsub.get_message(timeout=left)
            if message is not None and message.get("type") == "message":
                return True
        return False

    def close(self) -> None:
        try:
            self.pubsub.close()
        except redis.RedisError:
            pass  # the connection is going away either way


def wait(status: TaskStatus, seconds: float) -> TaskStatus:
    """``status`` once final, or after ``seconds`` the task's state then."""
    if _final(status) or seconds <= 0:
        return status
    task_id = status.record.id
    with _slot() as following:
        if not following:
            return status
        subscription = _Subscription(task_id)
        try:
            deadline = time.monotonic() + seconds
            current = load(api_context().celery, task_id) or status
            while not _final(current) and (left := deadline - time.monotonic()) > 0:
                if subscription.next_change(left):
                    current = load(api_context().celery, task_id) or current
            return current
        finally:
            subscription.close()


def events(status: TaskStatus, represent: Any) -> Iterator[str]:
    """Server-Sent Events of the task's state and progress, until it ends (or after
    ``MAX_EVENT_STREAM`` seconds). ``represent(status)`` is the body of each ``state`` event."""
    slots = _followers()
    if not slots.acquire(blocking=False):
        settings = api_context().settings
        raise ApiError(429, "too_many_followers",
                       f"this API process already follows {capacity(settings.api_threads)} "
                       "tasks; try again shortly", None,
                       {"Retry-After": str(settings.retry_after)})
    celery = api_context().celery  # the generator runs after the request context is gone
    task_id = status.record.id
    try:
        subscription = _Subscription(task_id)
    except BaseException:
        slots.release()
        raise

    lasts = api_context().settings.max_event_stream

    def stream() -> Iterator[str]:
        try:
            deadline = time.monotonic() + lasts
            current = load(celery, task_id) or status
            sent, n = None, 0
            while True:
                body = json.dumps(represent(current), separators=(",", ":"))
                if body != sent:
                    n += 1
                    yield f"id: {n}\nevent: state\ndata: {body}\n\n"
                    sent = body
                left = deadline - time.monotonic()
                if _final(current) or left <= 0:
                    return
                if subscription.next_change(min(KEEPALIVE, left)):
                    current = load(celery, task_id) or current
                else:
                    yield ": keep-alive\n\n"
        finally:
            subscription.close()
            slots.release()

    return stream()
