"""The Redis the lifecycle lives in, and the one function every script call goes through.

Each transition is a file in ``scripts/`` (``submit.lua``, ``start.lua``…) opening with
its contract. On Redis 7 and later they are loaded together as one function library
(:func:`library`: ``FUNCTION LOAD`` once, then ``FCALL``): the shared files
(``scripts/lib.lua``, ``scripts/workflow_lib.lua``) are defined once when the library
loads, not again in every call, and a call does not build ``KEYS``/``ARGV`` globals
(issue 29: a third of a transition's Redis CPU less). Before Redis 7, or where the
user may not load functions, :func:`source` reads a script with the shared files in
front and :meth:`Store.run` runs it with ``EVALSHA`` (loaded again on ``NOSCRIPT``). The
same ``.lua`` files serve both. Every state change passes through :meth:`Store.run`, so
what every accepted transition needs (the translation of a lost reply into
:class:`OutcomeUnknown`, a ``WAIT`` for replicas) is added in one place.

Modules of this package read with :attr:`Store.redis`; nothing outside the package
holds the client: it asks the lifecycle by name (``ping``, ``subscribe``…).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import redis
from redis.client import PubSub
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from ..redis_conn import WriteRefused
from .errors import OutcomeUnknown, never_sent

log = logging.getLogger("taskplane.lifecycle")

#: Transitions answered only once ``REDIS_MIN_REPLICAS_ACK`` replicas have the write: the
#: ones that accept work (a submission, a dead letter's retry, a schedule's fire moving its
#: tick), the start of a run (its STARTED record and run lease must survive a failover
#: before the body runs, or a second delivery would start it again: ``run_leases``) and
#: the ends of a run, whose loss in a failover would run the task again.
ACKNOWLEDGED = frozenset({"submit", "retry_dead", "schedule_advance", "start", "finish",
                          "fail"})


class NotReplicated(Exception):
    """``WAIT``: fewer replicas than asked confirmed the write within the timeout. The
    write is on the master, but a failover now could erase it: its outcome is unknown."""

    def __init__(self, wanted: int, confirmed: int, timeout_ms: int) -> None:
        super().__init__(f"{confirmed} of {wanted} replica(s) confirmed within {timeout_ms} ms")
        self.wanted, self.confirmed = wanted, confirmed

#: The files of Lua every script starts with, in order (``workflow_lib`` uses ``lib``).
LIBS = ("lib", "workflow_lib")


@functools.cache
def source(name: str) -> str:
    """The Lua of ``scripts/{name}.lua`` with the shared files (:data:`LIBS`) it needs in
    front: ``lib`` always, ``workflow_lib`` only for a script that calls one of its
    functions. Every call runs the definitions of what is in front (each ``local
    function`` is a closure made anew per call), so submit and start, which end no task,
    do not pay for the workflow functions."""
    folder = resources.files(__package__).joinpath("scripts")
    body = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    libs = []
    for lib in LIBS:
        text = folder.joinpath(f"{lib}.lua").read_text(encoding="utf-8")
        if lib == LIBS[0] or any(re.search(rf"\b{fn}\(", body) for fn in _functions(text)):
            libs.append(text)
    return "\n".join([*libs, f"-- ---- {name}.lua ----", body])


def _functions(lua: str) -> list[str]:
    """The names of the ``local function``s a Lua file defines."""
    return re.findall(r"^local function (\w+)", lua, flags=re.MULTILINE)


#: The name every Taskplane function library starts with (followed by its digest).
LIBRARY_PREFIX = "taskplane_"


@functools.cache
def library() -> tuple[str, str]:
    """The name and the code of the function library holding every script of ``scripts/``.

    The shared files come first, once, at the library's top level; each script becomes a
    function of ``(KEYS, ARGV)``, registered as ``{script}_{digest}``. The name carries a
    digest of the code, so two versions of Taskplane side by side (a rolling upgrade)
    each load and call their own library, never the other's. ``KEYS`` and ``ARGV`` are
    upvalues the shared functions read (``lib.lua`` ``keys_from``), set as each function
    starts: a function runs to its end before another starts."""
    folder = resources.files(__package__).joinpath("scripts")
    names = sorted(f.name[:-4] for f in folder.iterdir()
                   if f.name.endswith(".lua") and f.name[:-4] not in LIBS)
    parts = ["local KEYS, ARGV"]
    parts += [folder.joinpath(f"{lib}.lua").read_text(encoding="utf-8") for lib in LIBS]
    for name in names:
        body = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
        parts.append(f"-- ---- {name}.lua ----\nlocal function {name}_fn(keys, args)\n"
                     f"KEYS, ARGV = keys, args\n{body}\nend")
    code = "\n".join(parts)
    digest = hashlib.sha1(code.encode(), usedforsecurity=False).hexdigest()[:12]
    registrations = "\n".join(f"redis.register_function('{name}_{digest}', {name}_fn)"
                               for name in names)
    name = f"{LIBRARY_PREFIX}{digest}"
    return name, f"#!lua name={name}\n{code}\n{registrations}\n"


def function_name(script: str) -> str:
    """The library's function for ``scripts/{script}.lua``."""
    return f"{script}_{library()[0].removeprefix(LIBRARY_PREFIX)}"


def _function_missing(exc: redis.ResponseError) -> bool:
    """Redis has not got the library (restarted without it, or never loaded)."""
    return str(exc).startswith("Function not found")


def _functions_refused(exc: redis.ResponseError) -> bool:
    """Redis cannot or may not run functions: before 7.0 (an unknown command), or an ACL
    without them (NOPERM)."""
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return True
    text = str(exc).upper()
    return "UNKNOWN COMMAND" in text and ("FCALL" in text or "FUNCTION" in text)


class _Caller:
    """How one script is called on one Redis: ``FCALL`` of the library's function, or
    ``EVALSHA`` of the script. Both are sent as one command; an error reply that means
    Redis has not got the library or the script, or runs no functions, is mended by
    :meth:`reload` and the command sent again (by :meth:`__call__`, and by the store's
    path that sends ``WAIT`` after it)."""

    #: Sends of one call: functions refused (EVALSHA from then on), then NOSCRIPT, then run.
    ATTEMPTS = 3

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name
        self.function = function_name(name)
        self.script: Script | None = None

    def _script(self) -> Script:
        if self.script is None:
            self.script = self.store.redis.register_script(source(self.name))
        return self.script

    def command(self, keys: list[str], args: list[Any]) -> tuple[Any, ...]:
        if self.store.functions:
            return ("FCALL", self.function, len(keys), *keys, *args)
        return ("EVALSHA", self._script().sha, len(keys), *keys, *args)

    def __call__(self, keys: list[str], args: list[Any]) -> Any:
        for attempt in range(1, self.ATTEMPTS + 1):
            try:
                return self.store.redis.execute_command(*self.command(keys, args))
            except redis.ResponseError as exc:
                if attempt < self.ATTEMPTS and self.reload(exc):
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _fall_back(self, exc: redis.ResponseError) -> bool:
        log.warning("Redis runs no functions (%s): the lifecycle uses EVALSHA", exc)
        self.store.functions = False
        return True

    def reload(self, exc: redis.ResponseError, conn: Any = None) -> bool:
        """After an error reply that may mean the library or script is not there: make it
        so and return True (call again), or False (the error stands). ``conn``: the
        connection to load on (else the store's client)."""
        if isinstance(exc, NoScriptError) and not self.store.functions:
            command: tuple[Any, ...] = ("SCRIPT", "LOAD", self._script().script)
        elif self.store.functions and _function_missing(exc):
            command = ("FUNCTION", "LOAD", library()[1])
        elif self.store.functions and _functions_refused(exc):
            return self._fall_back(exc)
        else:
            return False
        try:
            if conn is None:
                self.store.redis.execute_command(*command)
            else:
                conn.send_command(*command)
                conn.read_response()
        except redis.ResponseError as load_error:
            if _functions_refused(load_error):
                return self._fall_back(load_error)
            if "already exists" not in str(load_error):  # another process loaded it first
                raise
        return True


class Store:
    """One Redis client and the scripts registered on it.

    ``acks`` (``REDIS_MIN_REPLICAS_ACK``): the transitions in :data:`ACKNOWLEDGED` send
    ``WAIT acks timeout`` right after their script, on the same connection, and answer only
    once that many replicas have the write. ``WAIT`` inside Lua does not block, so it cannot
    be part of the script. ``strict``: a shortfall raises :class:`OutcomeUnknown` (the API:
    ``503 outcome_unknown``, never a 202 a failover can erase); otherwise (a worker ending a
    run it has finished) it is logged and counted, and the run goes on to its ack.
    ``on_ack(confirmed)`` is told every outcome (metrics).

    ``patience`` (non-strict stores: workers): a ``repeatable`` transition (one that ends
    a task: a second call finds it ended and changes nothing) that no replica confirmed is
    run again, with its ``WAIT``, until one does or ``patience`` seconds pass. A worker acks
    its message right after, so an ending only the master had, lost with it, would leave
    the promoted replica holding the task as STARTED with its message still unacked: it
    would run again though no worker died. Run again, the ending reaches the replicas, or
    (after a failover) the new master.
    """

    def __init__(self, client: redis.Redis, *, acks: int = 0, ack_timeout: float = 1.0,
                 strict: bool = True, on_ack: Callable[[bool], None] | None = None,
                 patience: float = 0.0, functions: bool = True) -> None:
        self.redis = client
        #: Whether scripts run as the function library (``FCALL``); turned off for good
        #: by a Redis that has no functions or may not load them (``EVALSHA`` then).
        self.functions = functions
        self._callers: dict[str, _Caller] = {}
        self.acks = acks
        self.ack_timeout_ms = max(1, int(ack_timeout * 1000))
        self.strict = strict
        self.on_ack = on_ack
        self.patience = patience

    def run(self, name: str, keys: list[str], args: list[Any], *,
            repeatable: bool = False) -> Any:
        """Run the script ``name`` (``scripts/{name}.lua``): its reply, or
        :class:`OutcomeUnknown` when the call may have reached Redis but no reply came (or,
        for an acknowledged transition, no replica confirmed it in time).

        A write refused by a demoted or replica-less master (``WriteRefused``: nothing was
        applied) is tried once more: its connection was dropped, so the second attempt goes
        to the master the sentinels name now. Refused again, it propagates as the connection
        error it is: nothing was accepted."""
        script = self._callers.get(name)
        if script is None:
            script = self._callers[name] = _Caller(self, name)
        acknowledged = self.acks > 0 and name in ACKNOWLEDGED
        for attempt in (1, 2):
            try:
                if acknowledged and repeatable and not self.strict and self.patience > 0:
                    return self._run_until_confirmed(script, keys, args)
                if acknowledged:
                    return self._run_acknowledged(script, keys, args)
                return script(keys, args)
            except WriteRefused:
                if attempt == 2:
                    raise
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if never_sent(exc):
                    raise
                raise OutcomeUnknown(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _run_acknowledged(self, script: _Caller, keys: list[str], args: list[Any]) -> Any:
        """The script and its ``WAIT``; a shortfall raises (``strict``) or is logged."""
        reply, confirmed = self._acknowledge(script, keys, args)
        if confirmed < self.acks:
            shortfall = NotReplicated(self.acks, confirmed, self.ack_timeout_ms)
            if self.strict:
                raise OutcomeUnknown(shortfall)
            log.warning("write not confirmed by replicas: %s", shortfall)
        return reply

    def _acknowledge(self, script: _Caller, keys: list[str], args: list[Any]
                     ) -> tuple[Any, int]:
        """The script (``FCALL`` or ``EVALSHA``) then ``WAIT`` in one round trip on one
        connection (the offset ``WAIT`` waits for is its connection's last write): the
        reply, and how many replicas confirmed it (``on_ack`` is told whether enough did)."""
        pool = self.redis.connection_pool
        conn = pool.get_connection()
        try:
            reply, confirmed = conn.retry.call_with_retry(
                lambda: self._call_and_wait(conn, script, keys, args),
                lambda error: conn.disconnect())
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        if self.on_ack is not None:
            self.on_ack(confirmed >= self.acks)
        return reply, confirmed

    def _run_until_confirmed(self, script: _Caller, keys: list[str], args: list[Any]) -> Any:
        """:meth:`_run_acknowledged` again (``patience``) until a replica confirms; the
        first reply, which did the work (later ones find the task ended)."""
        deadline = time.monotonic() + self.patience
        first: Any = None
        while True:
            reply, confirmed = self._acknowledge(script, keys, args)
            first = reply if first is None else first
            if confirmed >= self.acks:
                return first
            if time.monotonic() >= deadline:
                log.warning("ending not confirmed by replicas after %.1fs: acked anyway",
                            self.patience)
                return first
            time.sleep(0.1)  # pacing: each attempt already waited ack_timeout for a replica

    def _call_and_wait(self, conn: Any, script: _Caller, keys: list[str],
                       args: list[Any]) -> tuple[Any, int]:
        wait = ("WAIT", self.acks, self.ack_timeout_ms)
        for attempt in range(1, script.ATTEMPTS + 1):
            conn.send_packed_command(conn.pack_commands([script.command(keys, args), wait]))
            try:
                reply = conn.read_response()
            except redis.ResponseError as exc:
                conn.read_response()  # WAIT's reply: the connection stays in step
                # a promoted replica's empty script cache (functions are replicated, but a
                # restarted Redis without persistence has none): load, send both again
                if attempt < script.ATTEMPTS and script.reload(exc, conn):
                    continue
                raise
            return reply, int(conn.read_response())
        raise AssertionError("unreachable")  # pragma: no cover

    def ping(self) -> bool:
        return bool(self.redis.ping())

    def connection(self) -> Any:
        """A new connection of its own (not from the pool), for a process's one shared
        subscription: the API's follower dispatcher (``api/dispatch.py``)."""
        return self.redis.connection_pool.make_connection()

    def subscribe(self, *channels: str) -> PubSub:
        """A pub/sub connection subscribed to ``channels`` (a result key is the channel its
        writes are published on: ``lib.lua`` ``write_result``)."""
        pubsub: PubSub = self.redis.pubsub(ignore_subscribe_messages=True)
        if channels:
            pubsub.subscribe(*channels)
        return pubsub
