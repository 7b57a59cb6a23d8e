"""The task state machine in plain Python: the executable specification of ``lifecycle``.

Each method is one transition of the real module (``Lifecycle.submit``, ``start``,
``write``, ``finish``, ``fail``, ``revoke``, ``retry_dead``) plus the passing of time that
the tests stand in for (a record expiring). It checks the transition's precondition,
returns the outcome the real script must return, and changes the model as the script must
change Redis. Nothing here talks to Redis (only the states' names come from the
module): ``test_model.py`` drives the real scripts with
the same calls and compares what Redis holds with :meth:`Model.expected`.

Why a model and not more example tests: the guarantees in ``lifecycle``'s docstring are
about every interleaving (a revoke racing a start, a dead-letter retry racing the end of
the failed run, a replayed key after its task expired). A model states them once, and
Hypothesis searches the sequences for one where the real scripts disagree.

What is modelled exactly, as sets: every index the scripts write (open sets, listing
indexes, ended-by-state indexes, dead-letter indexes), the records' states and run
counts, the Celery results' states, the idempotency keys and the queued messages. Index
entries are never pruned here: pruning is by age (days), and no test runs that long, so an
expired record's entries stay, exactly as they do in Redis until they age out or are read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TypeVar

# The names of states and of the system tenant are the module's (plain constants).
from taskplane.lifecycle.states import (
    FAILURE,
    PENDING,
    PROGRESS,
    RETRY,
    REVOKED,
    STARTED,
    SUCCESS,
)
from taskplane.lifecycle.states import FINAL_STATES as FINAL
from taskplane.lifecycle.states import SYSTEM_TENANT as SYSTEM

__all__ = ["FAILURE", "FINAL", "PENDING", "PROGRESS", "RETRY", "REVOKED", "STARTED",
           "SUCCESS", "SYSTEM", "Model"]

K = TypeVar("K")
#: A listing index: (tenant or None for every tenant's, field '' / 'task' / 'queue', value).
ListingKey = tuple[str | None, str, str]


def listing_keys(tenant: str, task: str, queue: str) -> list[ListingKey]:
    """The listing indexes a task is entered in (``lifecycle.listing_keys``): its tenant's
    only; none per task type or queue (those filters read the records), nor of every
    tenant's (an operator's listing merges the tenants' indexes)."""
    del task, queue
    return [(tenant, "", "")]


@dataclass
class Record:
    """What the model knows of one task record (``taskplane:task:{id}``)."""

    tenant: str
    task: str
    queue: str
    priority: int
    state: str = PENDING
    runs_started: int = 0
    runs_ended: int = 0
    retries: int = 0
    countdown: bool = False


@dataclass(frozen=True)
class DeadLetter:
    """A filed dead letter: whose it is and which filing (``version`` tells filings apart,
    as the real JSON does by its error and time)."""

    tenant: str
    task: str
    queue: str
    priority: int
    version: int


@dataclass
class Expected:
    """What Redis must hold, in the terms :class:`tests.lifecycle.test_model.RealLifecycle`
    reads it back in."""

    records: dict[str, Record]
    results: dict[str, str]
    open: dict[str, set[str]]
    listings: dict[ListingKey, set[str]]
    ended: dict[tuple[str | None, str], set[str]]
    dead: dict[str, str]  # id -> tenant
    dead_index: dict[str | None, set[str]]
    idempotency: dict[tuple[str, str], str]  # (tenant, key) -> id
    queued: dict[str, list[str]]  # queue -> ids of the messages pushed, oldest first


@dataclass
class Model:
    """Every tenant's tasks, as the scripts must keep them.

    ``caps``: each tenant's ``MAX_OPEN_TASKS_PER_TENANT`` (0: none). ``burst``: the rate
    bucket's size; tokens never refill in a test (the refill rate is negligible), so the
    ``burst``-th rate-limited request of a tenant is the last one granted.
    """

    caps: dict[str, int]
    burst: int
    records: dict[str, Record] = field(default_factory=dict)
    results: dict[str, str] = field(default_factory=dict)
    open: dict[str, set[str]] = field(default_factory=dict)
    listings: dict[ListingKey, set[str]] = field(default_factory=dict)
    ended: dict[tuple[str | None, str], set[str]] = field(default_factory=dict)
    dead: dict[str, DeadLetter] = field(default_factory=dict)
    dead_index: dict[str | None, set[str]] = field(default_factory=dict)
    idempotency: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    queued: dict[str, list[str]] = field(default_factory=dict)
    #: The tasks created under an idempotency key (tenant, key) -> ids, oldest first,
    #: until their record expires.
    created_under: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    filings: int = 0
    #: Ids of tasks whose record ``start`` adopted (sent around the API), in this life.
    adopted: set[str] = field(default_factory=set)
    #: Ids whose record expired at least once (their index entries may outlive it).
    expired: set[str] = field(default_factory=set)

    # --- transitions --------------------------------------------------------------------

    def submit(self, task_id: str, tenant: str, task: str, queue: str, priority: int, *,
               countdown: bool = False, rate_limited: bool = False,
               idempotency: tuple[str, str] | None = None) -> tuple[str, str]:
        """``submit``: (outcome, task id). A rate token is spent by every request that gets
        past the idempotency read (the limit counts requests, not tasks); a key held with
        another body conflicts; a key whose task still exists replays it; an id that
        exists replays it (a client retrying after an unknown outcome)."""
        held = self.idempotency.get((tenant, idempotency[0])) if idempotency else None
        if rate_limited:
            left = self.tokens.get(tenant, self.burst)
            if left < 1:
                return "rate_limited", ""
            self.tokens[tenant] = left - 1
        if idempotency is not None and held is not None:
            fp, first = held
            if fp != idempotency[1]:
                return "conflict", first
            if first in self.records:
                return "replay", first
        if task_id in self.records:
            return "replay", task_id
        cap = self.caps.get(tenant, 0)
        if cap and len(self.open.get(tenant, set())) >= cap:
            return "cap_reached", ""
        self.records[task_id] = Record(tenant, task, queue, priority, countdown=countdown)
        self.open.setdefault(tenant, set()).add(task_id)
        self._list(task_id, tenant, task, queue)
        self.queued.setdefault(queue, []).append(task_id)
        if idempotency is not None:
            self.idempotency[(tenant, idempotency[0])] = (idempotency[1], task_id)
            under = self.created_under.setdefault((tenant, idempotency[0]), [])
            if task_id not in under:  # an id re-created after its record expired
                under.append(task_id)
        return "created", task_id

    def start(self, task_id: str, retries: int, adopt: tuple[str, str, int] | None = None
              ) -> tuple[str, int]:
        """``start``: (verdict, runs that died). A final task never runs again; a task
        without a record runs ('unknown'), adopted under :data:`SYSTEM` when it came
        around the API (``adopt`` = its task, queue, priority)."""
        rec = self.records.get(task_id)
        if rec is None:
            if adopt is not None:
                task, queue, priority = adopt
                self.records[task_id] = Record(SYSTEM, task, queue, priority, state=STARTED,
                                               runs_started=1, retries=retries)
                self.adopted.add(task_id)
                self._adopt_open(task_id)
                self._list(task_id, SYSTEM, task, queue)
            self._write_result(task_id, STARTED)
            return "unknown", 0
        if rec.state in FINAL:
            return rec.state, 0
        rec.state, rec.retries = STARTED, retries
        rec.runs_started += 1
        self._write_result(task_id, STARTED)
        return "run", rec.runs_started - 1 - rec.runs_ended

    def _adopt_open(self, task_id: str) -> None:
        """Where an adopted task's open-set entry goes. The module's table says the open set
        holds "the tenant's unfinished task ids"; the start script does not enter an
        adopted record there (see test_model_regressions)."""
        if ADOPTED_TASKS_ARE_OPEN:
            self.open.setdefault(SYSTEM, set()).add(task_id)

    def write(self, task_id: str, status: str, retries: int | None = None) -> bool:
        """``write``: a result state that does not end the task (PROGRESS, RETRY): refused
        once the record or the result is final; a RETRY also moves the record."""
        rec = self.records.get(task_id)
        if rec is not None and rec.state in FINAL:
            return False
        if not self._write_result(task_id, status):
            return False
        if rec is not None and retries is not None:
            rec.state, rec.retries = RETRY, retries
        return True

    def finish(self, task_id: str, state: str, *, run_ended: bool = False,
               adopt: tuple[str, str, int] | None = None) -> tuple[str, str]:
        """``finish``: (outcome, previous state). '' as ``state`` counts the run only.
        ``adopt`` (task, queue, priority): a task sent around the API that a worker ended
        (revoked) before any worker started it gets its record, already ended, under
        :data:`SYSTEM`."""
        if adopt is not None and state and task_id not in self.records:
            task, queue, priority = adopt
            self.records[task_id] = Record(SYSTEM, task, queue, priority, state=state)
            self._list(task_id, SYSTEM, task, queue)
            self.ended.setdefault((SYSTEM, state), set()).add(task_id)
            self._write_result(task_id, state)
            return "adopted", ""
        refused = self._may_end(task_id, state, run_ended)
        if refused is not None:
            return refused
        rec = self.records[task_id]
        previous = rec.state
        if state:
            self._close(task_id, state)
            self._write_result(task_id, state)
        return "done", previous

    def fail(self, task_id: str, *, run_ended: bool = False) -> tuple[str, str]:
        """``fail``: FAILURE, a dead letter (a new filing) and the freed slot together."""
        refused = self._may_end(task_id, FAILURE, run_ended)
        if refused is not None:
            return refused
        rec = self.records[task_id]
        previous = rec.state
        self._close(task_id, FAILURE)
        self.filings += 1
        self.dead[task_id] = DeadLetter(rec.tenant, rec.task, rec.queue, rec.priority,
                                        self.filings)
        for scope in (rec.tenant, None):
            self.dead_index.setdefault(scope, set()).add(task_id)
        self._write_result(task_id, FAILURE)
        return "done", previous

    def revoke(self, task_id: str, tenant: str, terminate: bool) -> tuple[str, str]:
        """``revoke``: only the task's own tenant; a STARTED task only with ``terminate``;
        RETRY is waiting, not running. No result is written for a task without record."""
        rec = self.records.get(task_id)
        if rec is None:
            return "missing", ""
        if rec.tenant != tenant:
            return "tenant", rec.tenant
        if rec.state in FINAL:
            return "final", rec.state
        if rec.state == STARTED and not terminate:
            return "running", STARTED
        previous = rec.state
        self._close(task_id, REVOKED)
        self._write_result(task_id, REVOKED)
        return "revoked", previous

    def retry_dead(self, task_id: str, read: DeadLetter) -> str:
        """``retry_dead`` with the dead letter as a client read it: the one call that finds
        it unchanged enqueues the task afresh, PENDING, under the same id."""
        letter = self.dead.get(task_id)
        if letter is None:
            return "gone"
        if letter != read:
            return "changed"
        tenant = letter.tenant
        cap = self.caps.get(tenant, 0)
        if cap and len(self.open.get(tenant, set())) >= cap:
            return "cap_reached"
        del self.dead[task_id]
        self.adopted.discard(task_id)
        for scope in (tenant, None):
            self.dead_index.get(scope, set()).discard(task_id)
            self.ended.get((scope, FAILURE), set()).discard(task_id)
        self.records[task_id] = Record(tenant, letter.task, letter.queue, letter.priority)
        self.open.setdefault(tenant, set()).add(task_id)
        self._list(task_id, tenant, letter.task, letter.queue)
        self.results.pop(task_id, None)
        self.queued.setdefault(letter.queue, []).append(task_id)
        return "queued"

    def expire(self, task_id: str) -> None:
        """The record's TTL ran out (a final record's result expires with it). Index
        entries stay: they are pruned by age, or when a listing meets them."""
        rec = self.records.pop(task_id, None)
        self.expired.add(task_id)
        for created in self.created_under.values():  # its key may start afresh now
            if task_id in created:
                created.remove(task_id)
        self.adopted.discard(task_id)
        if rec is not None and rec.state in FINAL:
            self.results.pop(task_id, None)

    # --- the shared steps of the scripts ----------------------------------------------

    def _may_end(self, task_id: str, state: str, run_ended: bool) -> tuple[str, str] | None:
        """``may_end``: a missing record gets the result only; a run's end is counted
        even on a final record, but never beyond the runs started (a run of the life
        before ``retry_dead`` may end on the new record); a final state is never
        overwritten."""
        rec = self.records.get(task_id)
        if rec is None:
            if state:
                self._write_result(task_id, state)
            return "missing", ""
        if run_ended and rec.runs_ended < rec.runs_started:
            rec.runs_ended += 1
        if rec.state in FINAL:
            return "final", rec.state
        return None

    def _close(self, task_id: str, state: str) -> None:
        rec = self.records[task_id]
        rec.state = state
        self.open.get(rec.tenant, set()).discard(task_id)
        self.ended.setdefault((rec.tenant, state), set()).add(task_id)

    def _write_result(self, task_id: str, status: str) -> bool:
        """``write_result``: Celery's result, never over a final one."""
        if self.results.get(task_id) in FINAL:
            return False
        self.results[task_id] = status
        return True

    def _list(self, task_id: str, tenant: str, task: str, queue: str) -> None:
        for key in listing_keys(tenant, task, queue):
            self.listings.setdefault(key, set()).add(task_id)

    def list_tasks(self, tenant: str | None, state: str | None, task: str | None,
                   queue: str | None) -> set[str]:
        """``list_tasks``: the tasks of the one index that holds every possible match
        whose record matches; entries whose record is gone leave that index as met."""
        found: set[str] = set()
        for index in self._indexes_for(tenant, state, task, queue):
            index -= {i for i in index if i not in self.records}
            found |= {i for i in index if matches(self.records[i], tenant, state, task, queue)}
        return found

    def _indexes_for(self, tenant: str | None, state: str | None, task: str | None,
                     queue: str | None) -> list[set[str]]:
        """The smallest index that holds every task the query can match: the tasks ended
        in a final state, the tenant's unfinished tasks, or all (a task type or a queue
        is checked on the records); an operator's (no tenant): every tenant's tasks."""
        if tenant is None:
            return [entries for (t, f, _), entries in self.listings.items() if t and not f]
        if state in FINAL:
            return [self.ended.setdefault((tenant, state), set())]
        if state is not None:
            return [self.open.setdefault(tenant, set())]
        return [self.listings.setdefault((tenant, "", ""), set())]

    # --- views --------------------------------------------------------------------------

    def unfinished(self, tenant: str) -> set[str]:
        return {i for i, r in self.records.items() if r.tenant == tenant and r.state not in FINAL}

    def live_under_key(self) -> Iterator[tuple[tuple[str, str], list[str]]]:
        """Per idempotency key, the tasks created under it whose record still exists
        (a dead-letter retry may bring back an expired one: not the key's doing)."""
        for key, ids in self.created_under.items():
            yield key, [i for i in ids if i in self.records]

    def expected(self) -> Expected:
        return Expected(
            records={i: replace(r) for i, r in self.records.items()},
            results=dict(self.results),
            open=nonempty(self.open),
            listings=nonempty(self.listings),
            ended=nonempty(self.ended),
            dead={i: d.tenant for i, d in self.dead.items()},
            dead_index=nonempty(self.dead_index),
            idempotency={k: v[1] for k, v in self.idempotency.items()},
            queued={q: list(ids) for q, ids in self.queued.items() if ids},
        )


def matches(rec: Record, tenant: str | None, state: str | None, task: str | None,
            queue: str | None) -> bool:
    """Whether a listing query matches the record (PROGRESS is a STARTED record)."""
    state = STARTED if state == PROGRESS else state
    return ((tenant is None or rec.tenant == tenant) and (state is None or rec.state == state)
            and (task is None or rec.task == task) and (queue is None or rec.queue == queue))


def nonempty(sets: dict[K, set[str]]) -> dict[K, set[str]]:
    """Copies of the non-empty sets: Redis keeps no empty sorted set."""
    return {k: set(v) for k, v in sets.items() if v}


#: Whether ``start`` enters an adopted task in its tenant's open set, as the key table
#: promises (found missing by this model; start.lua now does).
ADOPTED_TASKS_ARE_OPEN = True
