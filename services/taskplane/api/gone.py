"""Noticing, within a second, that a follower's client has closed its connection.

A follower only writes to its client when the task changes (or every ``KEEPALIVE``
seconds), so a write failing is a slow way to learn that nobody is listening any more:
slots used to come back 15-30 s after their clients left. Instead one watcher per
process asks the kernel, every ``CHECK_EVERY`` seconds, about every follower's socket at
once (a single non-blocking ``poll``): ``POLLRDHUP`` (the client's FIN), ``POLLHUP`` or
``POLLERR`` (a reset) marks its follower gone and wakes it, so the request ends and its
slot and subscription are freed at once.

HTTP clients never half-close a connection while they still read the answer, so a FIN
means the client has left. A client that pipelines a next request makes the socket
readable without ``POLLRDHUP``: that is not mistaken for leaving.

The ``poll`` is the operating system's own even under gevent's monkey-patching (gevent's
replacement reports readability only, not ``POLLRDHUP``); with a zero timeout it never
blocks, so it is safe in a greenlet.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable
from typing import Any

#: Seconds between two looks at every follower's socket: a gone client is noticed within
#: this (the issue asks for about one second).
CHECK_EVERY = 0.25
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)


def _native_poll() -> Any:
    """The operating system's ``poll`` object, also under gevent's monkey-patching."""
    try:
        from gevent import monkey  # type: ignore[import-untyped]  # gevent ships no stubs
    except ImportError:
        return select.poll()
    if monkey.is_module_patched("select"):
        return monkey.get_original("select", "poll")()
    return select.poll()


class _Watched:
    __slots__ = ("on_gone", "since")

    def __init__(self, on_gone: Callable[[float], None]) -> None:
        self.on_gone = on_gone
        self.since = time.monotonic()


class GoneWatch:
    """Watches followers' sockets; calls ``on_gone(seconds)`` once for a socket whose peer
    left, ``seconds`` being how long since it was last seen open (an upper bound of the
    detection delay)."""

    def __init__(self, every: float = CHECK_EVERY) -> None:
        self._every = every
        self._lock = threading.Lock()
        self._poll = _native_poll()
        self._watched: dict[int, _Watched] = {}
        self._thread: threading.Thread | None = None
        self._last_check = time.monotonic()

    def watch(self, sock: Any, on_gone: Callable[[float], None]) -> int | None:
        """Start watching ``sock`` (a descriptor, or anything with ``fileno()``); the key for
        :meth:`forget`, None if it cannot be watched (no socket: a test client)."""
        try:
            fd = sock if isinstance(sock, int) else sock.fileno()
        except (AttributeError, OSError):
            return None
        if not isinstance(fd, int) or fd < 0:
            return None
        with self._lock:
            self._watched[fd] = _Watched(on_gone)
            self._poll.register(fd, _GONE)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="taskplane-gone",
                                                daemon=True)
                self._thread.start()
        return fd

    def forget(self, fd: int | None) -> None:
        if fd is None:
            return
        with self._lock:
            if self._watched.pop(fd, None) is not None:
                try:
                    self._poll.unregister(fd)
                except (KeyError, ValueError, OSError):
                    pass

    def watching(self) -> int:
        with self._lock:
            return len(self._watched)

    def check(self) -> None:
        """One look at every watched socket."""
        gone: list[tuple[_Watched, float]] = []
        with self._lock:
            now = time.monotonic()
            ready = self._poll.poll(0) if self._watched else []
            for fd, events in ready:
                watched = self._watched.pop(fd, None)
                if watched is None or not events & _GONE:
                    if watched is not None:
                        self._watched[fd] = watched
                    continue
                gone.append((watched, now - max(watched.since, self._last_check)))
                try:
                    self._poll.unregister(fd)
                except (KeyError, ValueError, OSError):
                    pass
            self._last_check = now
        for watched, seconds in gone:
            watched.on_gone(seconds)

    def _run(self) -> None:
        while True:
            time.sleep(self._every)
            self.check()
