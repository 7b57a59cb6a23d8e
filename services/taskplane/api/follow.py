"""Following a task without polling: ``GET /v1/tasks/<id>?wait=`` and Server-Sent Events.

Every state write publishes the stored result on the channel named like its key (the
lifecycle's ``write_result`` runs ``PUBLISH`` in the same script, as Celery's backend
does). A follower joins that channel first (``dispatch.py``: one subscription per process,
shared by all its followers) and reads the task second, so no change can fall between the
two; then it sleeps until a change is published or its deadline passes, and reads the task
again. Nothing here polls on a timer.

Capacity and fairness are the process's (``followers.py``): a tenant over
``MAX_FOLLOWERS_PER_TENANT`` gets 429 with ``Retry-After``; when the process holds
``MAX_FOLLOWERS``, an event stream is a 429 too and a ``?wait`` answers at once with the
state then and ``Taskplane-Wait: refused`` (it says it did not wait). A client that leaves
frees its follower within about a second (``gone.py``). When Redis goes away, a ``?wait``
is a 503 naming the task, and a stream sends an ``error`` event with a retry hint and
ends; its ``retry:`` field and ``Last-Event-ID`` let an SSE client come back by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import request

from .. import lifecycle
from . import handoff, sse
from .auth import current_tenant
from .context import api_context
from .detached import MARK, Detached
from .dispatch import ClientGone, Follower, ServerClosing
from .errors import UNAVAILABLE, ApiError
from .followers import Followers, Refused, followers
from .status import TaskStatus, load, represent

#: A comment line this often keeps proxies from closing an idle stream.
KEEPALIVE = sse.KEEPALIVE
#: The ``Taskplane-Wait`` header of a ``?wait`` answer: it held the request until the task
#: ended or the wait ran out (``waited``), had no room to (``refused``), or was cut short
#: because the process is shutting down (``interrupted``).
WAIT_HEADER, WAITED, REFUSED, INTERRUPTED = "Taskplane-Wait", "waited", "refused", "interrupted"
#: Highest ``Last-Event-ID`` taken from a reconnecting client; larger ones start afresh.
MAX_EVENT_ID = 10**9


def _final(status: TaskStatus) -> bool:
    return status.state in lifecycle.FINAL_STATES


def unavailable(task_id: str) -> ApiError:
    return unavailable_error(task_id, api_context().settings.retry_after)


def unavailable_error(task_id: str, retry_after: int) -> ApiError:
    """A follower's answer when Redis is away: 503 naming the task, with ``Retry-After``."""
    return ApiError(503, "broker_unavailable",
                    "Redis is unreachable, so the task cannot be followed now; ask again",
                    {"id": task_id}, {"Retry-After": str(retry_after)})


def _refused(refused: Refused) -> ApiError:
    settings = api_context().settings
    if refused.reason == "tenant":
        message = (f"this tenant already follows {refused.limit} tasks in this API process; "
                   "close some or try again shortly")
        code = "too_many_tenant_followers"
    else:
        message = f"this API process already follows {refused.limit} tasks; try again shortly"
        code = "too_many_followers"
    return ApiError(429, code, message, {"limit": refused.limit, "scope": refused.reason},
                    {"Retry-After": str(settings.retry_after)})


def _socket() -> Any:
    """The client's connection (gunicorn puts it in the WSGI environ), or None."""
    return request.environ.get("gunicorn.socket")


class _Following:
    """One admitted follower: its slot, its channel subscription and its socket watch,
    all given back by :meth:`close` (idempotent). With ``detached`` (a
    :class:`~.detached.Detached` follower), the hub of detached followers watches the
    socket and calls :meth:`close` when it ends."""

    __slots__ = ("closed", "fd", "follower", "hub", "kind", "tenant")

    def __init__(self, hub: Followers, tenant: str, kind: str, task_id: str,
                 sock: Any, detached: Detached | None = None) -> None:
        hub.admit(tenant, kind)
        self.hub, self.tenant, self.kind = hub, tenant, kind
        self.follower: Follower | None = None
        self.fd: int | None = None
        self.closed = False
        if detached is not None:
            detached.following = self
        try:
            channel = api_context().runtime.lifecycle.result_key(task_id)
            self.follower = hub.dispatcher.join(channel, detached)
        except BaseException as exc:
            self.close()
            if isinstance(exc, UNAVAILABLE):
                hub.refused("unavailable")
            raise
        if sock is not None and detached is None:
            self.fd = hub.gone.watch(sock, self._gone)

    def _gone(self, seconds: float) -> None:
        follower = self.follower
        if follower is not None:
            follower.gone = True
            follower.wake()
        self.hub.gone_after(seconds)

    def next_change(self, timeout: float) -> bool:
        assert self.follower is not None
        return self.follower.next_change(timeout)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.hub.gone.forget(self.fd)
        if self.follower is not None:
            self.hub.dispatcher.leave(self.follower)
        self.hub.release(self.tenant, self.kind)


def _detached(hub: Followers, url: str) -> Detached | None:
    """A detached follower for this request, if its connection can be handed over."""
    if hub.detached is None or not handoff.detachable(request.environ):
        return None
    return Detached(hub.detached, url)


def wait(status: TaskStatus, seconds: float, url: str) -> tuple[TaskStatus, str]:
    """``status`` once final, or after ``seconds`` the task's state then; with whether it
    waited (``WAITED``) or found no room to (``REFUSED``). ``url`` is the task's own.

    Under the ``gevent`` worker the wait is detached (``detached.py``): this returns the
    task as it is now, and the hub answers in place of the response built from it."""
    if _final(status) or seconds <= 0:
        return status, WAITED
    task_id = status.record.id
    celery = api_context().celery
    hub = followers()
    detached = _detached(hub, url)
    try:
        following = _Following(hub, current_tenant(), "wait", task_id, _socket(), detached)
    except Refused as refused:
        if refused.reason == "tenant":
            raise _refused(refused) from None
        return status, REFUSED
    except UNAVAILABLE:
        raise unavailable(task_id) from None
    if detached is not None:
        try:
            current = load(celery, task_id) or status
        except UNAVAILABLE:
            following.close()
            raise unavailable(task_id) from None
        if _final(current):
            following.close()
        else:
            detached.deadline = time.monotonic() + seconds
            request.environ[MARK] = detached
        return current, WAITED
    try:
        deadline = time.monotonic() + seconds
        current = load(celery, task_id) or status
        while not _final(current) and (left := deadline - time.monotonic()) > 0:
            if following.next_change(left):
                current = load(celery, task_id) or current
        return current, WAITED
    except ClientGone:
        return status, WAITED  # nobody is left to read it
    except ServerClosing:
        return current, INTERRUPTED
    except UNAVAILABLE:
        raise unavailable(task_id) from None
    finally:
        following.close()


def events(status: TaskStatus, url: str) -> Iterable[bytes]:
    """Server-Sent Events of the task's state and progress, until it ends (or after
    ``MAX_EVENT_STREAM`` seconds). ``represent(status, url)`` is the body of each ``state``
    event.

    Admission and the subscription happen now, so a refusal or an outage is an ordinary
    error answer. Under the ``gevent`` worker the stream is detached (``detached.py``):
    this returns its first events, and the hub writes the rest. Otherwise the stream runs
    after the request context is gone, in the request's greenlet or thread. It yields
    bytes, so the response passes it to gunicorn as it is (``direct_passthrough``): no
    werkzeug encoding generator and closing wrapper around it, two levels less of the C
    stack a waiting greenlet keeps copied out (BENCHMARKS.md section 7)."""
    ctx = api_context()
    task_id = status.record.id
    hub = followers()
    detached = _detached(hub, url)
    try:
        following = _Following(hub, current_tenant(), "events", task_id, _socket(), detached)
    except Refused as refused:
        raise _refused(refused) from None
    except UNAVAILABLE:
        raise unavailable(task_id) from None
    settings = ctx.settings
    if detached is not None:
        try:
            current = load(ctx.celery, task_id) or status
        except UNAVAILABLE:
            following.close()
            raise unavailable(task_id) from None
        body = sse.compact(represent(current, url))
        detached.n = _last_event_id() + 1
        first = sse.retry(settings.retry_after) + sse.state(detached.n, body)
        if _final(current):
            following.close()
        else:
            detached.sent = hash(body)
            detached.deadline = time.monotonic() + settings.max_event_stream
            request.environ[MARK] = detached
        return [first]
    return _Stream(following, _stream(following, ctx.celery, status,
                                      lambda current: represent(current, url),
                                      settings.max_event_stream, settings.retry_after,
                                      _last_event_id()))


def _last_event_id() -> int:
    """Where a reconnecting client's event ids left off (its ``Last-Event-ID``), so ids keep
    growing across reconnections; anything unparsable starts at 0."""
    raw = request.headers.get("Last-Event-ID", "")
    if raw.isascii() and raw.isdigit() and len(raw) <= 10 and int(raw) <= MAX_EVENT_ID:
        return int(raw)
    return 0


def _stream(following: _Following, celery: Any, status: TaskStatus,
            represent: Callable[[TaskStatus], Any], lasts: float, retry_after: int,
            last_id: int) -> Iterator[bytes]:
    task_id = status.record.id
    try:
        yield sse.retry(retry_after)
        deadline = time.monotonic() + lasts
        current = load(celery, task_id) or status
        del status  # a stream may stay open for hours: hold one copy of the task, not two
        sent, n = None, last_id
        while True:
            body = sse.compact(represent(current))
            if body != sent:
                n += 1
                yield sse.state(n, body)
                sent = body
            left = deadline - time.monotonic()
            if _final(current) or left <= 0:
                return
            if following.next_change(min(KEEPALIVE, left)):
                current = load(celery, task_id) or current
            else:
                yield sse.KEEPALIVE_COMMENT
    except (ClientGone, ServerClosing):  # gone; or closing: the client reconnects elsewhere
        return
    except UNAVAILABLE:
        yield sse.unavailable(task_id, retry_after)
    finally:
        following.close()


class _Stream:
    """The event stream as gunicorn iterates it. ``close()`` gives the follower back even
    if the stream never started (a generator not yet started skips its ``finally``)."""

    def __init__(self, following: _Following, body: Iterator[bytes]) -> None:
        self._following = following
        self._body = body

    def __iter__(self) -> Iterator[bytes]:
        return self._body

    def close(self) -> None:
        self._body.close()  # type: ignore[attr-defined]
        self._following.close()
