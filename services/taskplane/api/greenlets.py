"""Two per-request costs that gevent adds to the API and that nothing needs: removed.

Measured with py-spy on a ``gevent`` API process under submissions (BENCHMARKS.md section 7,
"The API's worker class"): everything else gevent adds is its sockets' own (a ``send`` or
``recv`` through the hub) and goes with the worker class.

* **A greenlet's spawning tree.** gevent records, for every greenlet, its parent, a copy
  of its spawn-tree locals and the 10 innermost frames it was spawned from
  (``config.track_greenlet_tree``), for debugging tools only. gunicorn's gevent worker
  spawns a greenlet per connection, so every request paid for that walk and every
  follower held the frames (~0.8 KB). Off.
* **redis-py's readiness check.** Each checkout from the connection pool asks whether the
  connection holds unread data, with a zero-timeout ``select.poll()``. Monkey-patched,
  that poll is gevent's (a watcher per descriptor, started and stopped, a result object),
  for a call that never waits. For redis-py's parser module only, a poll with a zero
  timeout is the operating system's (which cannot block, so it is safe in a greenlet, as
  ``gone.py`` argues); one that may wait stays gevent's.

:func:`tune` runs in each gevent worker after gevent has patched the standard library and
before the worker accepts its first connection (``gunicorn_conf.post_worker_init``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("taskplane.api.greenlets")


class _Poll:
    """``select.poll()`` for redis-py's parser: the OS's for ``poll(0)``, gevent's otherwise."""

    __slots__ = ("_fds",)

    native: Callable[[], Any]
    green: Callable[[], Any]

    def __init__(self) -> None:
        self._fds: list[tuple[Any, int]] = []

    def register(self, fd: Any, eventmask: int) -> None:
        self._fds.append((fd, eventmask))

    def poll(self, timeout: float | None = None) -> list[tuple[int, int]]:
        poller = (_Poll.native if timeout == 0 else _Poll.green)()
        for fd, mask in self._fds:
            poller.register(fd, mask)
        return poller.poll(timeout)  # type: ignore[no-any-return]


class _Select:
    """The ``select`` module as redis-py's parser sees it: ``poll`` is :class:`_Poll`."""

    def __init__(self, patched: Any) -> None:
        self._patched = patched

    def __getattr__(self, name: str) -> Any:
        return getattr(self._patched, name)

    poll = _Poll


def tune() -> dict[str, bool]:
    """Apply both (in a gevent-patched process only); what was applied."""
    from gevent import config, monkey  # type: ignore[import-untyped]  # gevent ships no stubs

    done = {"greenlet_tree": False, "redis_poll": False}
    if not monkey.is_module_patched("select"):
        return done
    config.track_greenlet_tree = False
    done["greenlet_tree"] = True
    try:
        from redis._parsers import hiredis
    except ImportError:  # another redis-py layout: its checks stay gevent's
        return done
    import select

    if getattr(hiredis, "select", None) is select:
        _Poll.native = monkey.get_original("select", "poll")
        _Poll.green = select.poll
        hiredis.select = _Select(select)  # type: ignore[assignment]  # a stand-in for the module
        done["redis_poll"] = True
    else:
        log.info("redis-py's parser has no select module to tune; readiness checks stay "
                 "gevent's")
    return done
