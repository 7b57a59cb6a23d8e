"""The reconciler's part of the lifecycle: accepted tasks whose message a failover lost.

A submit is acknowledged by a replica, so a failover keeps the record; but kombu moves a
message between its queue list and its ``unacked`` hash in two steps, and a master lost
between them can leave the message nowhere (``scripts/reconcile.lua`` says how). The
record then says PENDING for ever and no worker runs the task. The scheduler (which one
replica runs, under its lease) walks the old unfinished tasks now and then and has
``reconcile.lua`` push back any message it sees missing twice, ``after`` seconds apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from .keys import ABOVE_MARKS, PREFIX, record_key
from .replies import text
from .states import PENDING
from .store import Store


class Reconcile:
    """The reconciler's part of :class:`~taskplane.lifecycle.Lifecycle`."""

    _store: Store

    def reconcile_candidates(self, older_than: float, limit: int) -> list[str]:
        """Up to ``limit`` unfinished tasks submitted before ``older_than`` (epoch s), from
        every tenant's open set: the only places a PENDING record is listed by age."""
        out: list[str] = []
        for key in self._store.redis.scan_iter(match=f"{PREFIX}open:*", count=100):
            room = limit - len(out)
            if room <= 0:
                break
            out += [text(cast(bytes, m)) for m in self._store.redis.zrangebyscore(
                key, ABOVE_MARKS, older_than, start=0, num=room)]
        return out

    def reconcile(self, task_id: str, now: float, after: float, unacked: str,
                  lists_of: Callable[[str], list[str]]) -> str:
        """Check one task (``reconcile.lua``): live | queued | held | suspect | requeued |
        moved. ``lists_of(queue)``: every list holding ``queue``'s waiting messages."""
        record = record_key(task_id)
        state, queue, target = self._store.redis.hmget(record, "state", "queue", "list")
        if state is None or text(state) != PENDING or target is None or queue is None:
            return "live"
        lists = lists_of(text(queue))
        return text(self._store.run("reconcile", [record, unacked, text(target), *lists],
                                    [task_id, repr(now), repr(after)]))
