"""The Redis the lifecycle lives in, and the one function every script call goes through.

Each transition is a file in ``scripts/`` (``submit.lua``, ``start.lua``…) opening with
its contract. :func:`source` reads it with ``scripts/lib.lua`` (the shared functions) in
front, and :meth:`Store.run` registers each script once per client (``EVALSHA``, loaded
again when Redis answers ``NOSCRIPT``) and runs it. Every state change passes through
:meth:`Store.run`, so what every accepted transition needs (the translation of a lost
reply into :class:`OutcomeUnknown`, later a ``WAIT`` for replicas) is added in one place.

Modules of this package read with :attr:`Store.redis`; nothing outside the package
holds the client: it asks the lifecycle by name (``ping``, ``subscribe``…).
"""

from __future__ import annotations

import functools
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
                 patience: float = 0.0) -> None:
        self.redis = client
        self._scripts: dict[str, Script] = {}
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
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.redis.register_script(source(name))
        acknowledged = self.acks > 0 and name in ACKNOWLEDGED
        for attempt in (1, 2):
            try:
                if acknowledged and repeatable and not self.strict and self.patience > 0:
                    return self._run_until_confirmed(script, keys, args)
                if acknowledged:
                    return self._run_acknowledged(script, keys, args)
                return script(keys=keys, args=args)
            except WriteRefused:
                if attempt == 2:
                    raise
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if never_sent(exc):
                    raise
                raise OutcomeUnknown(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _run_acknowledged(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """The script and its ``WAIT``; a shortfall raises (``strict``) or is logged."""
        reply, confirmed = self._acknowledge(script, keys, args)
        if confirmed < self.acks:
            shortfall = NotReplicated(self.acks, confirmed, self.ack_timeout_ms)
            if self.strict:
                raise OutcomeUnknown(shortfall)
            log.warning("write not confirmed by replicas: %s", shortfall)
        return reply

    def _acknowledge(self, script: Script, keys: list[str], args: list[Any]
                     ) -> tuple[Any, int]:
        """``EVALSHA`` then ``WAIT`` in one round trip on one connection (the offset
        ``WAIT`` waits for is its connection's last write): the reply, and how many
        replicas confirmed it (``on_ack`` is told whether enough did)."""
        pool = self.redis.connection_pool
        conn = pool.get_connection()
        try:
            reply, confirmed = conn.retry.call_with_retry(
                lambda: self._evalsha_wait(conn, script, keys, args),
                lambda error: conn.disconnect())
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        if self.on_ack is not None:
            self.on_ack(confirmed >= self.acks)
        return reply, confirmed

    def _run_until_confirmed(self, script: Script, keys: list[str], args: list[Any]) -> Any:
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

    def _evalsha_wait(self, conn: Any, script: Script, keys: list[str],
                      args: list[Any]) -> tuple[Any, int]:
        wait = ("WAIT", self.acks, self.ack_timeout_ms)
        for attempt in (1, 2):
            conn.send_packed_command(conn.pack_commands(
                [("EVALSHA", script.sha, len(keys), *keys, *args), wait]))
            try:
                reply = conn.read_response()
            except redis.ResponseError as exc:
                conn.read_response()  # WAIT's reply: the connection stays in step
                if isinstance(exc, NoScriptError) and attempt == 1:
                    # a promoted replica's empty script cache: load it, send both again
                    conn.send_command("SCRIPT", "LOAD", script.script)
                    conn.read_response()
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
