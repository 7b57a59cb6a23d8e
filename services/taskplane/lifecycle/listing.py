"""Reads: a task's record and result, the task listing (``GET /v1/tasks``) and the dead
letters. Nothing here changes a task's state, so reads are plain commands, pipelined a
batch per round trip; they only drop index entries whose record or letter expired."""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .keys import (
    ABOVE_MARKS,
    dead_index_key,
    dead_key,
    ended_index_key,
    open_key,
    record_key,
    tasks_index_key,
    tasks_indexes_key,
)
from .records import TaskRecord
from .replies import fields, optional, scored, text
from .states import FINAL_STATES, PROGRESS, STARTED
from .store import Store


@dataclass(frozen=True)
class TaskQuery:
    """What ``GET /v1/tasks`` asks for: one tenant's tasks (``None``: every tenant's, for
    operators), optionally of one state, task type and queue, submitted in a window."""

    tenant: str | None
    state: str | None = None  # a lifecycle state; PROGRESS counts as STARTED
    task: str | None = None
    queue: str | None = None
    after: float | None = None  # submitted strictly after (epoch seconds)
    before: float | None = None  # submitted strictly before

    def matches(self, record: TaskRecord) -> bool:
        state = STARTED if self.state == PROGRESS else self.state
        return ((state is None or record.state == state)
                and (self.task is None or record.task == self.task)
                and (self.queue is None or record.queue == self.queue)
                and (self.tenant is None or record.tenant == self.tenant))


@dataclass(frozen=True)
class Cursor:
    """Where a listing page ended: the last entry's score (submission time) and id."""

    score: float
    task_id: str

    def encode(self) -> str:
        raw = json.dumps([self.score, self.task_id], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Raises ValueError for anything :meth:`encode` did not make."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            score, task_id = json.loads(raw)
        except (binascii.Error, TypeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError("not a cursor") from exc
        if not isinstance(score, int | float) or not isinstance(task_id, str) or \
                isinstance(score, bool) or not math.isfinite(score):
            raise ValueError("not a cursor")
        return cls(float(score), task_id)


class Listing:
    """The reading part of :class:`~taskplane.lifecycle.Lifecycle`."""

    _store: Store
    result_key: Callable[[str], str]

    def read(self, task_id: str, with_result: bool) -> tuple[TaskRecord | None, bytes | None]:
        """The record and, when ``with_result``, the raw Celery result: one round trip."""
        if not with_result:
            raw = fields(self._store.redis.hgetall(record_key(task_id)))
            return (TaskRecord.from_hash(task_id, raw) if raw else None), None
        with self._store.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(record_key(task_id))
            pipe.get(self.result_key(task_id))
            raw, meta = pipe.execute()
        return (TaskRecord.from_hash(task_id, raw) if raw else None), meta

    def list_tasks(self, query: TaskQuery, limit: int, cursor: Cursor | None = None,
                   max_examined: int = 1000
                   ) -> tuple[list[tuple[TaskRecord, bytes | None]], Cursor | None]:
        """A page of tasks matching ``query``, newest submission first, with their raw
        results, and the cursor of the next page (None: the end).

        Walks the one index that holds every possible match (:meth:`_indexes_for`: the
        tenant's tasks that ended in a final state, the tenant's unfinished tasks, or all;
        for an operator, every tenant's tasks indexes merged), from ``cursor`` down,
        reading records a batch per round trip. Unfiltered or with a tenant's final state
        (and the time window) a page costs O(log n + page); a task type, a queue, an
        unfinished state or (every tenant's) a final state is checked on the records (no
        index per task type, queue or every tenant's final state: each cost every task
        more sorted-set writes in Redis, issue 29), reading at most ``max_examined``
        entries per page, so a page may hold fewer than ``limit``
        tasks, and ``next`` says where to go on. Entries whose record has expired are
        dropped from the index as they are met.
        """
        indexes = self._indexes_for(query)
        low = ABOVE_MARKS if query.after is None else f"({query.after!r}"
        high = "+inf" if query.before is None else f"({query.before!r}"
        skip_ties: Cursor | None = None
        if cursor is not None:
            high = repr(cursor.score) if query.before is None or cursor.score < query.before \
                else high
            skip_ties = cursor
        found: list[tuple[TaskRecord, bytes | None]] = []
        examined, last = 0, cursor
        batch = max(limit, 50)
        while len(found) < limit and examined < max_examined:
            entries = self._newest(indexes, high, low, batch, skip_ties)
            if not entries:
                return found, None
            with self._store.redis.pipeline(transaction=False) as pipe:
                for member, _ in entries:
                    pipe.hgetall(record_key(member.decode()))
                    pipe.get(self.result_key(member.decode()))
                replies = pipe.execute()
            gone = []
            for n, (member, score) in enumerate(entries):
                task_id = member.decode()
                raw, meta = replies[2 * n], replies[2 * n + 1]
                examined += 1
                last = Cursor(score, task_id)
                if not raw:
                    gone.append(member)
                else:
                    record = TaskRecord.from_hash(task_id, raw)
                    if query.matches(record):
                        found.append((record, meta))
                if len(found) >= limit or examined >= max_examined:
                    break
            if gone:
                with self._store.redis.pipeline(transaction=False) as pipe:
                    for index in indexes:
                        pipe.zrem(index, *gone)
                    pipe.execute()
            if last is not None:
                high, skip_ties = repr(last.score), last
        return found, last

    def _newest(self, indexes: list[str], high: str, low: str, batch: int,
                skip_ties: Cursor | None) -> list[tuple[bytes, float]]:
        """Up to ``batch`` entries of ``indexes`` with scores from ``high`` down to ``low``,
        newest first (ties: the greater id first, as ZREVRANGEBYSCORE orders them), past
        ``skip_ties``' entries at its score; merged across the indexes (one round trip),
        each id once."""
        with self._store.redis.pipeline(transaction=False) as pipe:
            for index in indexes:
                pipe.zrevrangebyscore(index, high, low, start=0, num=batch, withscores=True)
            replies = pipe.execute()
        merged: dict[bytes, float] = {}
        for reply in replies:
            for member, score in scored(reply):
                if skip_ties is not None and score == skip_ties.score and \
                        member.decode() >= skip_ties.task_id:
                    continue  # at the cursor's score, not yet passed
                merged[member] = score
        return sorted(merged.items(), key=lambda e: (e[1], e[0]), reverse=True)[:batch]

    def _indexes_for(self, query: TaskQuery) -> list[str]:
        """The smallest index that holds every task ``query`` can match; for an operator's
        listing (every tenant), every tenant's tasks index merged: the registered ones
        (``lib.lua`` list_task), and the index of every tenant's tasks earlier versions
        wrote, while it lives. A registered name whose index expired is dropped."""
        if query.tenant is None:
            registry = tasks_indexes_key()
            with self._store.redis.pipeline(transaction=False) as pipe:
                pipe.smembers(registry)
                pipe.exists(tasks_index_key(None))
                names, legacy = pipe.execute()
            indexes = sorted(text(n) for n in names)
            if indexes:
                with self._store.redis.pipeline(transaction=False) as pipe:
                    for index in indexes:
                        pipe.exists(index)
                    alive = pipe.execute()
                gone = [i for i, live in zip(indexes, alive, strict=True) if not live]
                if gone:
                    self._store.redis.srem(registry, *gone)
                indexes = [i for i, live in zip(indexes, alive, strict=True) if live]
            return [*indexes, tasks_index_key(None)] if legacy else indexes
        if query.state in FINAL_STATES:
            return [ended_index_key(query.tenant, query.state)]
        if query.state is not None:
            return [open_key(query.tenant)]  # unfinished tasks only, by submission time
        return [tasks_index_key(query.tenant)]  # a task type or queue: its records say

    def runs_over(self, task_ids: Sequence[str]) -> bool:
        """Whether none of these tasks is running any more (each ended, is waiting for a
        retry, or has no record): one round trip."""
        if not task_ids:
            return True
        with self._store.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hget(record_key(task_id), "state")
            states = pipe.execute()
        return all(state != STARTED.encode() for state in states)

    # --- dead letters -------------------------------------------------------------------

    def dead_letter(self, tenant: str | None, task_id: str) -> dict[str, Any] | None:
        """The dead letter, decoded, if it is ``tenant``'s (``None``: whoever's)."""
        found = self.dead_letter_raw(tenant, task_id)
        return found[1] if found is not None else None

    def dead_letter_raw(self, tenant: str | None, task_id: str
                        ) -> tuple[str, dict[str, Any]] | None:
        """The dead letter as stored (for ``retry_dead``) and decoded, if it is ``tenant``'s
        (``None``: whoever's, for operators)."""
        raw = optional(self._store.redis.get(dead_key(task_id)))
        if raw is None:
            return None
        entry: dict[str, Any] = json.loads(raw)
        return (raw.decode(), entry) if tenant in (None, entry.get("tenant")) else None

    def dead_letters(self, tenant: str | None, limit: int, offset: int
                     ) -> tuple[int, list[dict[str, Any]]]:
        """A tenant's dead letters, newest first, or every tenant's (``tenant`` None)."""
        index = dead_index_key(tenant)
        with self._store.redis.pipeline(transaction=False) as pipe:
            pipe.zrevrange(index, offset, offset + limit - 1)
            pipe.zcard(index)
            raw_ids, total = pipe.execute()
        ids = [i.decode() for i in raw_ids]
        if not ids:
            return total, []
        raws = self._store.redis.mget([dead_key(i) for i in ids])
        entries, gone = [], []
        for task_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                gone.append(task_id)
            else:
                entries.append(json.loads(raw))
        if gone:  # expired entries: drop them from the index too
            self._store.redis.zrem(index, *gone)
            if tenant is not None:
                self._store.redis.zrem(dead_index_key(None), *gone)
        return total - len(gone), entries
