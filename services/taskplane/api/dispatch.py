"""One pub/sub connection per API process, fanned out to every follower in it.

Every state write publishes the stored result on the channel named like its result key
(the lifecycle's ``write_result`` runs ``PUBLISH`` in the same script). A follower used to
open a pub/sub connection of its own; now a process keeps one, and this dispatcher
``SUBSCRIBE``s a task's channel while at least one follower watches that task and
``UNSUBSCRIBE``s it when the last one leaves. One reader (a greenlet under gevent, a
thread under gthread) reads every message and wakes the followers of its channel.

Exactness: :meth:`Dispatcher.join` returns only once Redis has confirmed the channel's
subscription, so a follower that reads the task after joining cannot miss a change made
between its read and its first wait. Confirmations are counted per channel (a channel
left and joined again while its ``UNSUBSCRIBE`` is in flight owes two), so a late
confirmation of an earlier subscription never stands in for the current one.

Failure: the connection is the process's; if Redis goes away (the connection drops, or a
``PING`` sent after a quiet spell is not answered within ``REDIS_TIMEOUT``), every
follower is woken with the error, the channels are forgotten, and the next follower to
join connects afresh. Nothing is retried here: the followers end (a 503, an ``error``
event) and their clients come back.

This module talks to redis-py's ``Connection`` directly rather than through its
``PubSub``: ``PubSub`` keeps bookkeeping that is not safe to update from one greenlet while
another reads, and it silently reconnects and resubscribes, which would hide an outage
from followers that might have missed a change meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

log = logging.getLogger("taskplane.api.dispatch")

#: Seconds without any message after which the reader sends a ``PING`` (in subscribed mode
#: Redis answers ``["pong", ""]``): a link lost silently is noticed within this plus
#: ``REDIS_TIMEOUT``.
PING_AFTER = 10.0
#: How long one blocking read waits before the reader looks at its bookkeeping again.
READ_SLICE = 1.0
#: After a failed connect, followers are refused at once (503) for this long instead of
#: each waiting out a connect timeout in turn while Redis is unreachable.
RECONNECT_AFTER = 1.0


class Follower:
    """One waiting request's handle: cheap (an event and a few fields), no socket."""

    __slots__ = ("changes", "channel", "closing", "event", "failure", "gone")

    def __init__(self, channel: bytes) -> None:
        self.channel = channel
        self.event: threading.Event = threading.Event()
        self.changes = 0
        self.failure: BaseException | None = None
        self.gone = False
        self.closing = False

    def wake(self) -> None:
        self.event.set()

    def next_change(self, timeout: float) -> bool:
        """Sleep until the channel carries a change (True) or ``timeout`` passes (False).

        Raises the dispatcher's failure if Redis went away, :class:`ClientGone` if the
        client closed its connection meanwhile."""
        fired = self.event.wait(timeout) if timeout > 0 else self.event.is_set()
        self.event.clear()  # before the caller reads the task: a later change wakes again
        if self.failure is not None:
            raise self.failure
        if self.gone:
            raise ClientGone()
        if self.closing:
            raise ServerClosing()
        if fired and self.changes:
            self.changes = 0
            return True
        return False


class ClientGone(Exception):
    """The follower's client closed its connection; nobody is left to answer."""


class ServerClosing(Exception):
    """The process is shutting down: followers end now, so clients reconnect elsewhere."""


class _Channel:
    __slots__ = ("followers", "ready")

    def __init__(self) -> None:
        self.followers: set[Follower] = set()
        self.ready = threading.Event()


class Dispatcher:
    """The process's one subscription, shared by every follower in the process."""

    def __init__(self, connect: Callable[[], redis.connection.AbstractConnection],
                 ready_timeout: float) -> None:
        self._connect = connect
        self._ready_timeout = ready_timeout
        self._lock = threading.Lock()
        self._conn: Any = None
        self._channels: dict[bytes, _Channel] = {}
        self._owed: dict[bytes, int] = {}  # SUBSCRIBEs sent whose confirmation is unread
        self._reader: threading.Thread | None = None
        self._connected = threading.Event()
        self._ping_sent: float | None = None
        self._last_read = time.monotonic()
        self._retry_at = 0.0

    # --- followers ------------------------------------------------------------------

    def join(self, channel: bytes | str, follower: Follower | None = None) -> Follower:
        """A follower of ``channel`` (``follower`` if given: a detached follower,
        ``detached.py``, whose :meth:`Follower.wake` reaches the hub instead of an event),
        returned once Redis confirms the subscription.

        Raises a redis ``ConnectionError``/``TimeoutError`` when Redis cannot be reached."""
        channel = _bytes(channel)
        if follower is None:
            follower = Follower(channel)
        else:
            follower.channel = channel
        with self._lock:
            conn = self._connection()
            entry = self._channels.get(channel)
            if entry is None:
                entry = self._channels[channel] = _Channel()
                self._send(conn, "SUBSCRIBE", channel)
                self._owed[channel] = self._owed.get(channel, 0) + 1
            entry.followers.add(follower)
        if not entry.ready.wait(self._ready_timeout):
            self.leave(follower)
            raise redis.TimeoutError("pub/sub subscription not confirmed in time")
        if follower.failure is not None:
            self.leave(follower)
            raise follower.failure
        return follower

    def leave(self, follower: Follower) -> None:
        """Forget ``follower``; the channel's last follower unsubscribes it."""
        with self._lock:
            entry = self._channels.get(follower.channel)
            if entry is None or follower not in entry.followers:
                return
            entry.followers.discard(follower)
            if entry.followers:
                return
            del self._channels[follower.channel]
            if self._conn is not None:
                try:
                    self._send(self._conn, "UNSUBSCRIBE", follower.channel)
                except (redis.RedisError, OSError) as exc:
                    self._fail_locked(self._conn, exc)

    def close_all(self) -> int:
        """Wake every follower to end (the process is shutting down); how many there were."""
        with self._lock:
            followers = [f for e in self._channels.values() for f in e.followers]
        for follower in followers:
            follower.closing = True
            follower.wake()
        return len(followers)

    def stats(self) -> dict[str, int]:
        """Channels subscribed and followers waiting, for tests and the benchmark."""
        with self._lock:
            return {"channels": len(self._channels),
                    "followers": sum(len(e.followers) for e in self._channels.values()),
                    "connected": int(self._conn is not None)}

    # --- the connection -------------------------------------------------------------

    def _connection(self) -> Any:
        """The live connection (connecting if there is none); caller holds the lock."""
        if self._conn is None:
            if time.monotonic() < self._retry_at:  # failed just now: fail fast, don't queue
                raise redis.ConnectionError("pub/sub connection unavailable; retrying shortly")
            conn = self._connect()
            try:
                conn.connect()
            except Exception:
                self._retry_at = time.monotonic() + RECONNECT_AFTER
                raise
            self._conn = conn
            self._ping_sent = None
            self._last_read = time.monotonic()
            self._connected.set()
            if self._reader is None or not self._reader.is_alive():
                self._reader = threading.Thread(target=self._read_forever,
                                                name="taskplane-dispatch", daemon=True)
                self._reader.start()
        return self._conn

    @staticmethod
    def _send(conn: Any, *args: Any) -> None:
        conn.send_command(*args, check_health=False)

    def _read_forever(self) -> None:
        while True:
            self._connected.wait()
            with self._lock:
                conn = self._conn
            if conn is None:
                self._connected.clear()
                continue
            try:
                if conn.can_read(timeout=READ_SLICE):
                    reply = conn.read_response(disconnect_on_error=False, push_request=True)
                    self._handle(reply)
                else:
                    self._keep_alive(conn)
            except Exception as exc:  # any failure ends this connection
                with self._lock:
                    self._fail_locked(conn, exc)

    def _keep_alive(self, conn: Any) -> None:
        """A ``PING`` after a quiet spell; no answer within the timeout is an outage."""
        now = time.monotonic()
        with self._lock:
            if self._ping_sent is None:
                if now - self._last_read >= PING_AFTER:
                    self._send(conn, "PING")
                    self._ping_sent = now
            elif now - self._ping_sent > self._ready_timeout:
                raise redis.TimeoutError("Redis did not answer the pub/sub PING")

    def _handle(self, reply: Any) -> None:
        self._last_read = time.monotonic()
        if not isinstance(reply, list) or not reply:
            if reply in (b"PONG", "PONG"):  # a PING answered while nothing was subscribed
                self._ping_sent = None
            return
        kind = _bytes(reply[0])
        with self._lock:
            if kind == b"message":
                entry = self._channels.get(_bytes(reply[1]))
                for follower in entry.followers if entry is not None else ():
                    follower.changes += 1
                    follower.wake()
            elif kind == b"subscribe":
                channel = _bytes(reply[1])
                owed = self._owed.get(channel, 0) - 1
                if owed > 0:
                    self._owed[channel] = owed
                    return
                self._owed.pop(channel, None)
                entry = self._channels.get(channel)
                if entry is not None:
                    entry.ready.set()
            elif kind == b"pong":
                self._ping_sent = None

    def _fail_locked(self, conn: Any, exc: BaseException) -> None:
        """Wake every follower with the failure and drop the connection; lock held."""
        if self._conn is not conn:
            return
        if not isinstance(exc, redis.RedisError):
            exc = redis.ConnectionError(f"pub/sub connection lost: {type(exc).__name__}")
        log.warning("pub/sub connection lost: %s", type(exc).__name__)
        self._conn = None
        self._connected.clear()
        channels, self._channels, self._owed = self._channels, {}, {}
        for entry in channels.values():
            for follower in entry.followers:
                follower.failure = exc
                follower.wake()
            entry.ready.set()
        with contextlib.suppress(Exception):  # it is gone either way
            conn.disconnect()


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
