"""The followers of one API process: who may follow, the shared subscription, gone clients.

A follower (a ``?wait`` request held open, or an event stream) costs a few small objects
and its client's socket: no thread, no greenlet and no Redis connection of its own
(``dispatch.py`` fans one subscription out to all of them, ``detached.py`` serves them
once their requests have ended, ``gone.py`` notices clients that leave). Where a
connection cannot be handed over (``gthread``, TLS, HTTP/2) a follower keeps its request's
greenlet or thread instead.

Admission is per API process, so it needs no Redis round trip and no shared state:

* ``MAX_FOLLOWERS`` bounds the process (under ``gthread`` also ``API_THREADS - 1``, as each
  follower then holds a thread). A pod holds ``API_WORKERS`` times it.
* ``MAX_FOLLOWERS_PER_TENANT`` bounds one tenant (the caller's, an operator's by name) in
  the process, so one tenant cannot take the process's followers from the others. A
  tenant over its share is refused whatever room is left; the others are unaffected.

gunicorn hands connections to its processes as they accept them, so with several
processes per pod a tenant's share per pod is about ``API_WORKERS`` times the per-process
figure, and the pod's ceiling exactly ``API_WORKERS x MAX_FOLLOWERS``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app

from .. import metrics
from ..settings import Settings
from . import handoff
from .detached import Detaching, Hub
from .dispatch import Dispatcher
from .gone import GoneWatch

log = logging.getLogger("taskplane.api.followers")

#: The two kinds of follower, as the ``kind`` label says.
KINDS = ("wait", "events")
_EXTENSION = "taskplane.followers"


class Refused(Exception):
    """No room to follow: ``reason`` is ``tenant`` (its share is taken) or ``process``."""

    def __init__(self, reason: str, limit: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.limit = limit


def capacity(settings: Settings) -> int:
    """Followers one API process holds at once."""
    if settings.api_worker_class == "gthread":  # each follower holds one of its threads
        return max(1, min(settings.max_followers, settings.api_threads - 1))
    return settings.max_followers


class Followers:
    """Admission, the shared subscription and the gone-client watch of one process."""

    def __init__(self, settings: Settings, connect: Callable[[], Any],
                 instruments: metrics.Instruments) -> None:
        self.capacity = capacity(settings)
        self.per_tenant = min(settings.max_followers_per_tenant, self.capacity)
        self.dispatcher = Dispatcher(connect, settings.redis_timeout)
        self.gone = GoneWatch()
        self.detached: Hub | None = None  # set by detach_followers (gevent workers)
        self._lock = threading.Lock()
        self._open = 0
        self._tenants: dict[str, int] = {}
        m = instruments
        self._gauges = {kind: m.followers_open.labels(kind) for kind in KINDS}
        self._refused = {reason: m.followers_refused.labels(reason)
                         for reason in metrics.FOLLOWER_REFUSALS}  # at zero from the start
        self._gone_seconds = m.follower_gone
        self.dropped = m.followers_dropped.inc  # detached clients too slow to read

    def admit(self, tenant: str, kind: str) -> None:
        """Take a follower slot for ``tenant`` or raise :class:`Refused`."""
        with self._lock:
            held = self._tenants.get(tenant, 0)
            # a share as large as the process is no share: the process bound answers
            if held >= self.per_tenant and self.per_tenant < self.capacity:
                refused = Refused("tenant", self.per_tenant)
            elif self._open >= self.capacity:
                refused = Refused("process", self.capacity)
            else:
                self._tenants[tenant] = held + 1
                self._open += 1
                self._gauges[kind].inc()
                return
        self.refused(refused.reason)
        raise refused

    def release(self, tenant: str, kind: str) -> None:
        with self._lock:
            held = self._tenants.get(tenant, 0) - 1
            if held > 0:
                self._tenants[tenant] = held
            else:
                self._tenants.pop(tenant, None)
            self._open -= 1
            self._gauges[kind].dec()

    def refused(self, reason: str) -> None:
        self._refused[reason].inc()

    def gone_after(self, seconds: float) -> None:
        self._gone_seconds.observe(seconds)

    def stats(self) -> dict[str, Any]:
        """Open followers (in all, by tenant), subscriptions and watched sockets."""
        with self._lock:
            out: dict[str, Any] = {"open": self._open, "tenants": dict(self._tenants),
                                   "capacity": self.capacity, "per_tenant": self.per_tenant}
        out.update(self.dispatcher.stats())
        out["watched_sockets"] = self.gone.watching()
        out["detached"] = len(self.detached) if self.detached is not None else 0
        return out


def end_on_shutdown(app: Flask, alive: Callable[[], bool], every: float = 0.25) -> None:
    """End every follower of ``app`` as soon as ``alive()`` turns false (gunicorn's worker on
    SIGTERM), instead of holding the process for its graceful timeout: event streams close
    (SSE clients reconnect by themselves, to another pod) and waits answer at once."""
    hub: Followers = app.extensions[_EXTENSION]

    def watch() -> None:
        while alive():
            time.sleep(every)
        ended = hub.dispatcher.close_all()
        log.info("shutting down: ended %d followers", ended)

    threading.Thread(target=watch, name="taskplane-followers-shutdown", daemon=True).start()


def detach_followers(app: Flask) -> bool:
    """Serve ``app``'s followers detached from their requests (``detached.py``): call once
    in a ``gevent`` worker, before it serves. False (and followers stay held by their
    greenlets) when the installed gunicorn is not one the hand-off was tested with."""
    if not handoff.supported():
        return False
    hub: Followers = app.extensions[_EXTENSION]
    settings = app.extensions["taskplane"].settings
    json = app.json
    hub.detached = Hub(app.extensions["taskplane"].celery, settings.retry_after,
                       lambda value: json.dumps(value, separators=(",", ":")),
                       hub.gone, hub.gone_after, hub.dropped)
    app.wsgi_app = Detaching(app.wsgi_app, hub.detached)  # type: ignore[method-assign]
    return True


def finish(app: Flask, timeout: float = 5.0) -> int:
    """End every follower of ``app`` now and wait (up to ``timeout``) for the detached ones
    to be answered: gunicorn's worker, stopping, does not wait for connections it no longer
    holds. How many had to be cut off."""
    hub: Followers = app.extensions[_EXTENSION]
    hub.dispatcher.close_all()
    return hub.detached.drain(timeout) if hub.detached is not None else 0


def init_app(app: Flask, settings: Settings, connect: Callable[[], Any],
             instruments: metrics.Instruments) -> None:
    app.extensions[_EXTENSION] = Followers(settings, connect, instruments)


def followers() -> Followers:
    """The current app's followers (one per app, so per process)."""
    return current_app.extensions[_EXTENSION]  # type: ignore[no-any-return]
