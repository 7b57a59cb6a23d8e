"""Detached followers: a follower that holds its client's socket, not a greenlet.

Under gunicorn's ``gevent`` worker a request is a greenlet, and a greenlet held while it
waits costs some 24 KB (its C stack copied out, its 16 KiB data-stack chunk, gunicorn's and
Flask's per-request objects: BENCHMARKS.md section 7). So once a follower is admitted,
subscribed and its first answer is ready, the request ends and the connection is handed to
this process's :class:`Hub`:

1. The view (``follow.py``) admits and subscribes as before, reads the task, and marks the
   WSGI environ with a :class:`Detached` follower. Flask finishes the request as usual
   (``after_request`` headers, access log, request metrics: their line, status and
   duration are the hand-off's, a 200 in a few milliseconds, whatever the answer later).
2. :class:`Detaching`, a thin WSGI wrapper around the Flask app, sees the mark. For an
   event stream it writes the status line and headers and the first events; for a
   ``?wait`` it keeps the headers for the answer. It duplicates the socket's descriptor
   and tells gunicorn the request consumed the connection (``handoff.py``, the one place
   relying on gunicorn's internals). The greenlet ends.
3. The hub keeps each follower as a small object and a descriptor. The process's one
   subscription (``dispatch.py``) wakes it on a change; it reads each changed task once,
   however many follow it (a few reads at a time), and writes each follower's bytes to its
   socket without blocking. A client whose socket stays full for ``STALL_LIMIT`` seconds
   is dropped. One timer heap ends ``?wait``s at their deadline and sends the streams'
   keep-alive comments. ``gone.py`` watches the duplicated descriptors, so a client that
   leaves frees its slot within about a second.

Bodies are the greenlet-held path's, byte for byte (``sse.py``, ``status.represent``, the
error envelope). A stream is sent as gunicorn sent it, in HTTP/1.1 chunks (one per
write, ended by the last, empty chunk), so a client that reads chunk by chunk, as
requests' ``iter_lines`` and urllib3 do, gets each event as it comes, not once its read
buffer fills; then the connection closes (``Connection: close``). A ``?wait`` answers
once, whole (``Content-Length``, ``Connection: close``), with ``Taskplane-Wait: waited``
or ``interrupted``, or a 503 naming the task when Redis goes away; a stream ends with an
``error`` event then, and its body simply ends at its ``MAX_EVENT_STREAM`` end or when
the process stops. Slots, per-tenant shares and metrics
are the follower's ``_Following``'s (``follow.py``), given back when the hub closes it.

Only plain HTTP/1.1 ``GET``s on a plain socket under the ``gevent`` worker detach
(``handoff.detachable``); TLS, HTTP/2, HTTP/1.0, ``HEAD`` and ``gthread`` keep the
greenlet-held path. Everything here runs in one OS thread (gevent's): the hub's greenlet
owns its sets and heap; other greenlets only add to ``_dirty`` and set ``_signal``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from ..lifecycle import FINAL_STATES
from . import handoff, sse
from .dispatch import Follower
from .errors import UNAVAILABLE, ApiError
from .status import TaskStatus, load, not_found, represent

log = logging.getLogger("taskplane.api.detached")

#: The WSGI environ key by which a view hands its follower to :class:`Detaching`.
MARK = "taskplane.detached"
#: A client whose socket accepts nothing more for this long is dropped (its slot freed).
STALL_LIMIT = 10.0
#: Bytes held for a client that reads slowly; beyond it the client is dropped at once.
MAX_PENDING = 256 * 1024
#: How often unwritten bytes are tried again while some client is slow.
FLUSH_EVERY = 0.25
#: Task reads in flight at once when many followed tasks change together.
READERS = 16
#: The chunk that ends a stream's chunked body.
LAST_CHUNK = b"0\r\n\r\n"
#: Header names a detached answer sets itself (the rest of Flask's headers are kept).
_OWN_HEADERS = frozenset({"content-length", "content-type", "transfer-encoding", "connection",
                          "date", "taskplane-wait", "retry-after"})


def _final(status: TaskStatus) -> bool:
    return status.state in FINAL_STATES


class Detached(Follower):
    """One detached follower: its descriptor, what it has sent, when it ends.

    It is also the dispatcher's follower of its task's channel: :meth:`wake` queues it on
    the hub instead of setting an event (it has none)."""

    __slots__ = ("deadline", "due", "fd", "finished", "following", "head", "hub", "n",
                 "pending", "sent", "stalled", "url")

    def __init__(self, hub: Hub, url: str) -> None:
        self.channel = b""  # set by Dispatcher.join
        self.event = None  # type: ignore[assignment]  # woken through the hub instead
        self.changes = 0
        self.failure: BaseException | None = None
        self.gone = False
        self.closing = False
        self.hub = hub
        self.url = url
        self.following: Any = None  # follow._Following: its slot, given back at the end
        self.fd: int | None = None  # while attached
        self.deadline = 0.0
        self.due = 0.0
        self.n = 0  # the last event id sent (streams)
        self.sent = 0  # hash of the last state body sent (streams)
        self.head: bytes | None = None  # the answer's extra header lines (``?wait``)
        self.pending = b""
        self.stalled = 0.0
        self.finished = False

    @property
    def kind(self) -> str:
        return self.following.kind  # type: ignore[no-any-return]

    @property
    def task_id(self) -> str:
        return self.url.rsplit("/", 1)[1]

    def wake(self) -> None:
        self.hub.wake(self)

    def on_gone(self, seconds: float) -> None:
        self.gone = True
        self.hub.gone_after(seconds)
        self.hub.wake(self)

    def abandon(self) -> None:
        """Not detached after all (the request failed, or its client left meanwhile)."""
        if self.following is not None:
            self.following.close()


def _head(status: str, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines += [f"Date: {formatdate(usegmt=True)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk (nothing for no data: an empty chunk ends the body)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


def _extra(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() not in _OWN_HEADERS]


class Hub:
    """The detached followers of one process and the greenlet that serves them."""

    def __init__(self, celery: Any, retry_after: int, dumps: Callable[..., str],
                 gone: Any, gone_after: Callable[[float], None],
                 dropped: Callable[[], None] = lambda: None) -> None:
        self._celery = celery
        self._retry_after = retry_after
        self._dumps = dumps
        self._gone = gone
        self.gone_after = gone_after
        self._all: set[Detached] = set()
        self._dirty: set[Detached] = set()
        self._stalled: set[Detached] = set()
        self._timers: list[tuple[float, int, Detached]] = []
        self._seq = itertools.count()
        self._signal = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0  # clients too slow to read (``STALL_LIMIT``, ``MAX_PENDING``)
        self._count_dropped = dropped

    def __len__(self) -> int:
        return len(self._all)

    # --- from other greenlets -----------------------------------------------------------

    def wake(self, follower: Detached) -> None:
        if follower.fd is not None:  # before it is attached, its changes are counted only
            self._dirty.add(follower)
            self._signal.set()

    def hand_off(self, follower: Detached, environ: dict[str, Any], status: str,
                 headers: list[tuple[str, str]], body: bytes) -> None:
        """Take the request's connection for ``follower``: a stream's head and first
        events go out now (from the request's greenlet, which may wait for the socket); a
        wait keeps its headers for the answer."""
        if follower.kind == "events":
            kept = [(k, v) for k, v in headers if k.lower() not in (
                "content-length", "transfer-encoding", "connection", "date")]
            kept.append(("Transfer-Encoding", "chunked"))
            environ["gunicorn.socket"].sendall(_head(status, kept) + _chunk(body))
        else:
            # usually none (b"" is one shared object); kept per follower, never pooled, as
            # a header may differ per request
            follower.head = "".join(f"{k}: {v}\r\n" for k, v in _extra(headers)).encode(
                "latin-1")
        self.attach(follower, handoff.take(environ))

    def attach(self, follower: Detached, fd: int) -> None:
        now = time.monotonic()
        follower.fd = fd
        self._all.add(follower)
        self._gone.watch(fd, follower.on_gone)
        if follower.kind == "events":
            self._schedule(follower, min(now + sse.KEEPALIVE, follower.deadline))
        else:
            self._schedule(follower, follower.deadline)
        if follower.changes or follower.failure or follower.gone or follower.closing:
            self._dirty.add(follower)
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="taskplane-detached",
                                            daemon=True)
            self._thread.start()
        self._signal.set()

    def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` for every follower to end (after ``close_all``), then
        close what is left; how many were left."""
        deadline = time.monotonic() + timeout
        while self._all and time.monotonic() < deadline:
            time.sleep(0.05)
        left = list(self._all)
        for follower in left:
            self._close(follower)
        return len(left)

    # --- the hub's greenlet ---------------------------------------------------------------

    def _schedule(self, follower: Detached, when: float) -> None:
        follower.due = when
        heapq.heappush(self._timers, (when, next(self._seq), follower))

    def _run(self) -> None:
        while True:
            timeout: float | None = None
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            if self._stalled:
                timeout = FLUSH_EVERY if timeout is None else min(timeout, FLUSH_EVERY)
            self._signal.wait(timeout)
            self._signal.clear()
            try:
                self._turn()
            except Exception:  # the hub must outlive any one follower's surprise
                log.exception("detached followers: a turn failed")

    def _turn(self) -> None:
        now = time.monotonic()
        todo, self._dirty = self._dirty, set()
        due: set[Detached] = set()
        while self._timers and self._timers[0][0] <= now:
            when, _, follower = heapq.heappop(self._timers)
            if follower.fd is not None and follower.due == when:
                due.add(follower)
        reads: dict[str, list[tuple[Detached, str]]] = {}
        for f in todo | due:
            if f.fd is not None and not f.finished:
                self._guarded(self._look, f, f in due, now, reads)
        if reads:
            for task_id, result in self._read_all(list(reads)):
                for f, why in reads[task_id]:
                    if f.fd is not None and not f.finished:
                        self._guarded(self._deliver, f, why, result)
        self._flush(time.monotonic())

    def _guarded(self, step: Callable[..., None], f: Detached, *args: Any) -> None:
        """``step`` for one follower; a surprise ends that follower, not the others' turn."""
        try:
            step(f, *args)
        except Exception:
            log.exception("detached %s follower of %s ended by an error", f.kind, f.task_id)
            self._close(f)

    def _look(self, f: Detached, due: bool, now: float,
              reads: dict[str, list[tuple[Detached, str]]]) -> None:
        """What woke ``f`` (or its timer): end it, write to it, or read its task first."""
        if f.gone:
            self._close(f)
        elif f.failure is not None:
            self._unavailable(f)
        elif f.closing:
            if f.kind == "events":
                self._end(f)
            else:
                reads.setdefault(f.task_id, []).append((f, "closing"))
        else:
            if due and now >= f.deadline:
                if f.kind == "events":
                    self._end(f)
                    return
                reads.setdefault(f.task_id, []).append((f, "deadline"))
            elif due:  # a stream's keep-alive comment
                self._send(f, sse.KEEPALIVE_COMMENT, now)
                self._schedule(f, min(now + sse.KEEPALIVE, f.deadline))
            if f.changes:
                f.changes = 0
                reads.setdefault(f.task_id, []).append((f, "change"))

    def _read(self, task_id: str) -> tuple[str, TaskStatus | BaseException | None]:
        try:
            return task_id, load(self._celery, task_id)
        except Exception as exc:  # UNAVAILABLE answers 503; anything else ends them
            return task_id, exc

    def _read_all(self, task_ids: list[str]) -> Iterable[tuple[str, Any]]:
        """Each task read once, up to ``READERS`` at a time."""
        if len(task_ids) == 1:
            return [self._read(task_ids[0])]
        from gevent.pool import Pool  # type: ignore[import-untyped]  # gevent ships no stubs

        return list(Pool(READERS).imap_unordered(self._read, task_ids))

    def _deliver(self, f: Detached, why: str, result: Any) -> None:
        if isinstance(result, UNAVAILABLE):
            self._unavailable(f)
            return
        if isinstance(result, BaseException):
            raise result
        status: TaskStatus | None = result
        if f.kind == "events":
            if status is None:  # the record is gone: nothing new to say
                return
            body = sse.compact(represent(status, f.url))
            if hash(body) != f.sent:
                f.sent = hash(body)
                f.n += 1
                self._send(f, sse.state(f.n, body), time.monotonic())
            if _final(status):
                self._end(f)
            return
        if status is None:
            self._answer_error(f, not_found(f.task_id))
        elif why == "closing":
            self._answer(f, status, "interrupted")
        elif why == "deadline" or _final(status):
            self._answer(f, status, "waited")

    def _answer(self, f: Detached, status: TaskStatus, waited: str) -> None:
        headers = [("Taskplane-Wait", waited)]
        if waited == "interrupted":
            headers.append(("Retry-After", str(self._retry_after)))
        self._reply(f, 200, self._dumps(represent(status, f.url)), headers)

    def _answer_error(self, f: Detached, error: ApiError) -> None:
        from .errors import envelope

        self._reply(f, error.status, self._dumps(envelope(error.code, error.message,
                                                          error.details)),
                    list(error.headers.items()))

    def _reply(self, f: Detached, code: int, body: str, headers: list[tuple[str, str]]) -> None:
        data = (body + "\n").encode()
        lines = [f"HTTP/1.1 {code} {HTTPStatus(code).phrase}", "Content-Type: application/json",
                 f"Content-Length: {len(data)}"] + [f"{k}: {v}" for k, v in headers]
        head = ("\r\n".join(lines) + "\r\n").encode("latin-1") + (f.head or b"") + (
            f"Date: {formatdate(usegmt=True)}\r\nConnection: close\r\n\r\n").encode()
        self._send(f, head + data, time.monotonic())
        self._end(f)

    def _unavailable(self, f: Detached) -> None:
        """Redis went away: a stream's ``error`` event, a wait's 503 naming the task."""
        if f.kind == "events":
            self._send(f, sse.unavailable(f.task_id, self._retry_after), time.monotonic())
            self._end(f)
        else:
            from .follow import unavailable_error

            self._answer_error(f, unavailable_error(f.task_id, self._retry_after))

    # --- writing --------------------------------------------------------------------------

    def _send(self, f: Detached, data: bytes, now: float, framed: bool = False) -> None:
        """Write ``data`` to ``f``'s client without blocking (a stream's as one chunk,
        unless ``framed`` already); what the socket does not take waits in ``pending``."""
        if f.fd is None:
            return
        if f.kind == "events" and not framed:
            data = _chunk(data)
        if f.pending:
            f.pending += data
            if len(f.pending) > MAX_PENDING:
                self._drop(f)
            return
        try:
            written = os.write(f.fd, data)
        except BlockingIOError:
            written = 0
        except OSError:  # the client has gone (EPIPE, ECONNRESET)
            self._close(f)
            return
        if written < len(data):
            f.pending = data[written:]
            f.stalled = now
            self._stalled.add(f)

    def _end(self, f: Detached) -> None:
        """Close once everything written has left (at once if nothing waits); a stream's
        body is ended first with its last chunk."""
        if f.kind == "events" and f.fd is not None and not f.finished:
            self._send(f, LAST_CHUNK, time.monotonic(), framed=True)
            if f.fd is None:  # the write found the client gone
                return
        if f.pending:
            f.finished = True
        else:
            self._close(f)

    def _flush(self, now: float) -> None:
        for f in list(self._stalled):
            if f.fd is None:
                self._stalled.discard(f)
                continue
            try:
                written = os.write(f.fd, f.pending)
            except BlockingIOError:
                written = 0
            except OSError:
                self._close(f)
                continue
            if written:
                f.pending = f.pending[written:]
                f.stalled = now
            if not f.pending:
                self._stalled.discard(f)
                if f.finished:
                    self._close(f)
            elif now - f.stalled > STALL_LIMIT:
                self._drop(f)

    def _drop(self, f: Detached) -> None:
        self.dropped += 1
        self._count_dropped()
        log.info("dropped a %s follower whose client read nothing for %.0f s", f.kind,
                 STALL_LIMIT)
        self._close(f)

    def _close(self, f: Detached) -> None:
        fd, f.fd = f.fd, None
        if fd is None:
            return
        self._all.discard(f)
        self._dirty.discard(f)
        self._stalled.discard(f)
        f.pending = b""
        self._gone.forget(fd)
        try:
            os.close(fd)
        finally:
            f.following.close()  # its subscription and slot


class Detaching:
    """WSGI wrapper around the Flask app: a response whose request marked the environ with a
    :class:`Detached` follower is not given to gunicorn; the hub takes the connection."""

    def __init__(self, app: Callable[..., Iterable[bytes]], hub: Hub) -> None:
        self.app = app
        self.hub = hub

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        captured: list[Any] = []

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if MARK in environ:
                captured[:] = [status, headers, exc_info]
                return _no_write
            return start_response(status, headers, exc_info)

        body = self.app(environ, start)
        follower: Detached | None = environ.pop(MARK, None)
        if follower is None:
            return body
        if not captured or not captured[0].startswith("200"):  # an error after all
            follower.abandon()
            if captured:
                start_response(*captured)
            return body
        try:
            data = b"".join(body)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        try:
            self.hub.hand_off(follower, environ, captured[0], captured[1], data)
        except BaseException:
            follower.abandon()
            raise
        handoff.consumed()


def _no_write(data: bytes) -> None:
    raise RuntimeError("a detached response is written by the hub, not through write()")
