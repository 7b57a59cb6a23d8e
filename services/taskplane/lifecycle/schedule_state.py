"""What the scheduler keeps in Redis: the schedules stored over the API, each schedule's
fire state, and the scan lease.

A fire is a plain ``submit`` under the Idempotency-Key ``schedule {name} {tick}``: the
submit script claims the tick with the record and the message. What this module keeps
does not decide whether a tick fires twice; it says where each schedule stands, and which
replica scans (to save work). A stored definition and its fire state come and go
together: ``schedule_delete`` removes both, and ``schedule_advance`` never brings back
the state of a schedule that is gone.
"""

from __future__ import annotations

from collections.abc import Sequence

from .keys import schedule_state_key, scheduler_lease_key, schedules_key
from .replies import data, optional, text_fields
from .store import Store


class ScheduleState:
    """The scheduler's part of :class:`~taskplane.lifecycle.Lifecycle`."""

    _store: Store

    # --- stored definitions ---------------------------------------------------------------

    def schedule_create(self, ident: str, definition: str, tenant: str, cap: int = 0) -> str:
        """Store a new schedule (``ident`` = ``tenant/name``, ``definition`` its JSON) unless
        the tenant has one of that name or ``cap`` (0: none) already: created | exists |
        cap_reached."""
        reply = self._store.run("schedule_create", [schedules_key()],
                                [ident, definition, tenant, cap])
        return str(reply.decode() if isinstance(reply, bytes) else reply)

    def schedule_replace(self, ident: str, definition: str) -> bool:
        """Store a changed definition of a stored schedule; False (nothing written) if it
        was deleted meanwhile."""
        return bool(self._store.run("schedule_replace", [schedules_key()], [ident, definition]))

    def schedule_definition(self, ident: str) -> bytes | None:
        """A stored schedule's JSON, or None."""
        return optional(self._store.redis.hget(schedules_key(), ident))

    def schedule_definitions(self) -> list[bytes]:
        """Every stored schedule's JSON (the scheduler reads them all each loop)."""
        return [data(raw) for raw in self._store.redis.hgetall(schedules_key()).values()]

    def schedule_delete(self, ident: str) -> bool:
        """Remove a stored schedule and its fire state in one step; False if there was none."""
        return bool(self._store.run("schedule_delete",
                                    [schedules_key(), schedule_state_key(ident)], [ident]))

    # --- fire state -------------------------------------------------------------------------

    def schedule_state(self, ident: str) -> dict[str, str]:
        """A schedule's fire state (``schedule_state_key``), decoded; {} before its first."""
        return text_fields(self._store.redis.hgetall(schedule_state_key(ident)))

    def schedule_states(self, idents: Sequence[str]) -> list[dict[str, str]]:
        """The fire states of several schedules: one round trip."""
        with self._store.redis.pipeline(transaction=False) as pipe:
            for ident in idents:
                pipe.hgetall(schedule_state_key(ident))
            replies = pipe.execute()
        return [text_fields(raw) for raw in replies]

    def schedule_advance(self, ident: str, read: str, tick: float, *, task_id: str = "",
                         fired_at: float | None = None, fires: int = 0, skipped: int = 0,
                         missed: int = 0, stored: bool = False) -> bool:
        """Move the schedule's ``last_tick`` from ``read`` (as the caller read it) to
        ``tick``, counting what was done; False if another replica moved it first, or
        (``stored``: a schedule stored over the API, not declared in code) if the
        schedule was deleted meanwhile."""
        keys = [schedule_state_key(ident)]
        if stored:
            keys.append(schedules_key())
        return bool(self._store.run("schedule_advance", keys, [
            read, repr(tick), task_id, "" if fired_at is None else repr(fired_at), fires,
            skipped, missed, ident if stored else ""]))

    # --- the scan lease ---------------------------------------------------------------------

    def scheduler_lease(self, holder: str, ttl: float) -> bool:
        """Take or renew the scan lease for ``ttl`` seconds; True if ``holder`` has it."""
        return bool(self._store.run("scheduler_lease", [scheduler_lease_key()],
                                    [holder, int(ttl * 1000)]))

    def scheduler_release(self, holder: str) -> None:
        """Give the scan lease up, if ``holder`` has it."""
        self._store.run("scheduler_release", [scheduler_lease_key()], [holder])
