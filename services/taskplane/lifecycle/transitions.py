"""The transitions of a task: one method per script in ``scripts/``, each one atomic step.

Every change of a task's state is one method here, backed by one Lua script that checks
the transition's precondition and writes everything the transition changes. Routes,
worker signals, the task base class and the result backend call these and hold no Redis
logic of their own; so a guarantee is checked in one place, whatever races it (two API
pods, a worker and the API, a client retrying after a timeout).

==================  ==========================  ==================================================
transition          from                        guarantee
==================  ==========================  ==================================================
``submit``          (nothing)                   rate token, idempotency key, tenant cap, record
                                                and message: all written or none; a replayed key
                                                returns the first task, never a second one
``start``           PENDING, RETRY, STARTED     a revoked or finished task never runs again; the
                    (redelivered)               run is counted (poison detection); STARTED stored;
                                                behind Sentinel, never while another run's lease
                                                is live (a failover's second delivery waits)
``write``           STARTED                     progress and RETRY never land on a finished task
``finish``          any but a final state       result, record and tenant slot change together;
                                                a final state is never overwritten
``fail``            any but a final state       FAILURE, dead letter and tenant slot together
``revoke``          PENDING, RETRY; STARTED     a task not yet started never runs; a running one
                    only with ``terminate``     is stopped only when asked
``retry_dead``      FAILURE with a dead letter  exactly one of concurrent retries wins
==================  ==========================  ==================================================

Optional keys are passed only when used (each script's contract names the argument that
says whether one is there), so no call carries a placeholder key.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from time import monotonic, sleep
from typing import Any

import redis

from .errors import OutcomeUnknown
from .keys import (
    dead_index_keys,
    dead_key,
    ended_index_keys,
    idempotency_key,
    listing_keys,
    open_key,
    rate_key,
    record_key,
)
from .records import ResultWrite, RunStart, Submission, TaskRecord, Transition
from .states import FAILURE, REVOKED
from .store import Store

#: First pause between two tries of a submission riding through a failover; it doubles
#: up to :data:`RIDE_PAUSE_MAX`.
RIDE_PAUSE, RIDE_PAUSE_MAX = 0.05, 0.5


class RideThrough:
    """Tries of one submission through a failover, for up to ``seconds``
    (``SUBMIT_RIDE_THROUGH``).

    Trying ``submit`` again is safe: the task's id is fixed before the first try, and the
    script answers ``replay`` for a record that exists, so a try whose reply was lost
    (:class:`OutcomeUnknown`) is found, never written twice. What ends the ride: an
    answer, or the time running out; then the error is raised, as :class:`OutcomeUnknown`
    if any try may have been applied (never "nothing was accepted" for a write that may
    have happened), else the last connection error (nothing was).
    """

    def __init__(self, seconds: float) -> None:
        self.deadline = monotonic() + seconds
        self.unknown: OutcomeUnknown | None = None  # the first try whose outcome is unknown

    def run(self, attempt: Callable[..., Any], *args: Any) -> Any:
        pause = RIDE_PAUSE
        while True:
            try:
                return attempt(*args)
            except (OutcomeUnknown, redis.ConnectionError, redis.TimeoutError) as exc:
                if isinstance(exc, OutcomeUnknown) and self.unknown is None:
                    self.unknown = exc
                left = self.deadline - monotonic()
                if left <= 0:
                    if self.unknown is not None and self.unknown is not exc:
                        raise self.unknown from exc
                    raise
            sleep(min(pause, left))  # pacing: a failover's next step cannot be polled
            pause = min(pause * 2, RIDE_PAUSE_MAX)


class Transitions:
    """The transitions part of :class:`~taskplane.lifecycle.Lifecycle`."""

    _store: Store
    record_ttl: int
    result_ttl: int
    idempotency_ttl: int
    dead_letter_ttl: int
    keep: int
    open_age: int
    keep_messages: bool
    run_lease: float
    result_key: Callable[[str], str]
    ride_through: float

    def submit(self, record: TaskRecord, push: tuple[str, str], *, cap: int = 0,
               rate: float = 0.0, burst: int = 1, idempotency: tuple[str, str] | None = None
               ) -> Submission:
        """Accept a task: take a rate token, honour its Idempotency-Key, check the tenant's
        cap, write the record and push ``push = (queue list, message)``, in one step.

        ``idempotency = (key, body fingerprint)``. A replay returns the first task's id.
        A timeout raises :class:`OutcomeUnknown`: call again with the same key and record
        id to learn whether it was accepted (the script never writes a record twice).
        """
        now = time.time()
        ttl = self.record_ttl + int(max(0.0, (record.eta or 0) - now))
        fixed = [record_key(record.id), open_key(record.tenant), push[0],
                 *listing_keys(record.tenant)]
        if rate > 0:
            fixed.append(rate_key(record.tenant))
        fp = ""
        if idempotency is not None:
            fixed.append(idempotency_key(record.tenant, idempotency[0]))
            fp = idempotency[1]

        def submit_once(held: str) -> Any:
            keys = [*fixed, record_key(held)] if held else fixed
            return self._store.run("submit", keys, [
                record.id, ttl, now, cap, rate, burst, fp, self.idempotency_ttl, held, push[1],
                self.keep, self.open_age, int(self.keep_messages), *record.fields()])

        held = ""  # the task the key names, as far as this call knows: learnt from 'stale'
        ride = RideThrough(self.ride_through)
        for _ in range(5):
            outcome, task_id, wait = ride.run(submit_once, held)
            outcome, task_id = outcome.decode(), task_id.decode()
            if ride.unknown is not None:
                if outcome == "replay" and task_id == record.id:
                    outcome = "created"  # an earlier try, whose reply was lost, wrote it
                elif outcome == "rate_limited":
                    # the script takes the token before it can see a task an earlier try
                    # wrote: refused now, that try may still have been accepted
                    raise ride.unknown
            if outcome != "stale":
                return Submission(outcome, task_id, float(wait))
            held = task_id
        raise RuntimeError("the Idempotency-Key kept changing under this request")

    def start(self, task_id: str, retries: int, started: ResultWrite | None = None,
              adopt: TaskRecord | None = None) -> RunStart:
        """A worker is about to run the task: refuse if it is revoked or finished, else
        mark it STARTED (storing the ``started`` result with it) and count the run.

        ``adopt``: the record to create if there is none, for a task sent around the API
        (a stock Celery client, ``celery call``): it then shows up for the operator, its
        failure is a dead letter, and nothing runs unaccounted for.

        ``run_lease`` > 0 (Redis HA): a task STARTED by a run whose worker renewed its
        lease (:class:`~taskplane.lifecycle.RunLeases`) less than ``run_lease`` seconds
        ago is not started again: verdict ``running``, ``wait`` the seconds until that
        lease lapses.
        """
        keys = [record_key(task_id)]
        # the token tells this start, repeated after a lost reply, from another's
        args: list[Any] = [time.time(), retries, "", 0, 0, self.keep, task_id,
                           repr(self.run_lease), uuid.uuid4().hex if self.run_lease > 0 else ""]
        if adopt is not None:
            keys += [open_key(adopt.tenant), *listing_keys(adopt.tenant)]
            args[4] = self.record_ttl
            args += adopt.fields()
        if started is not None:
            keys.append(started[0])
            args[2:4] = [started[1], started[2]]
        verdict, died = self._store.run("start", keys, args)
        if verdict == b"running":
            return RunStart("running", 0, float(died))
        return RunStart(verdict.decode(), int(died))

    def write(self, task_id: str, result: ResultWrite, record_fields: Sequence[str] = ()
              ) -> bool:
        """Store a result state that does not end the task (PROGRESS, RETRY, STARTED),
        unless the task already ended; ``record_fields`` are set on the record with it."""
        return bool(self._store.run("write", [result[0], record_key(task_id)],
                                    [result[1], result[2], *record_fields]))

    def finish(self, task_id: str, state: str, *, tenant: str = "", run_ended: bool = False,
               result: ResultWrite | None = None, adopt: TaskRecord | None = None
               ) -> Transition:
        """End the task in ``state`` (SUCCESS, REVOKED…) unless it already ended: record,
        result and tenant slot together. ``state`` '' only counts the
        run as ended. ``tenant`` is a hint that saves a round trip when right.

        ``adopt``: the record to create, ended, if there is none (a task sent around the
        API that a worker revoked before any worker started it; outcome ``adopted``)."""
        def call(tenant: str) -> Any:
            keys = [record_key(task_id)]
            if state:
                keys += [open_key(tenant), *ended_index_keys(tenant, state)]
            listed, fields = self._adoption(adopt if state else None)
            keys, value, ttl = self._with_result([*keys, *listed], result)
            return self._store.run("finish", keys, [
                task_id, time.time(), self.result_ttl, state, tenant,
                "1" if run_ended else "0", value, ttl, self.keep, len(listed), *fields],
                repeatable=bool(state))
        return self._with_tenant(call, tenant)

    def fail(self, task_id: str, letter: dict[str, Any], *, tenant: str = "",
             run_ended: bool = False, result: ResultWrite | None = None) -> Transition:
        """End the task as FAILURE (storing ``result`` with it) and file
        ``letter`` (:func:`dead_letter`) with the record's queue, priority and retries, in
        one step. A task without a record (sent around the API) gets its result only."""
        letter = {**letter, "id": task_id}
        try:
            payload = json.dumps(letter)
        except (TypeError, ValueError):
            letter = {**letter, "args": [], "kwargs": {},
                      "reason": letter.get("reason", "") + " (arguments not JSON-serialisable, "
                                                            "not kept)"}
            payload = json.dumps(letter)

        def call(tenant: str) -> Any:
            keys, value, ttl = self._with_result(
                [record_key(task_id), open_key(tenant), dead_key(task_id),
                 *dead_index_keys(tenant), *ended_index_keys(tenant, FAILURE)], result)
            return self._store.run("fail", keys, [
                task_id, time.time(), self.result_ttl, tenant, "1" if run_ended else "0",
                payload, self.dead_letter_ttl, value, ttl, self.keep], repeatable=True)
        return self._with_tenant(call, tenant)

    def revoke(self, task_id: str, tenant: str, *, terminate: bool,
               result: ResultWrite | None = None) -> Transition:
        """Revoke the task unless it has ended: a task not yet started never runs; a
        running one only with ``terminate`` (the caller then broadcasts the kill)."""
        keys, value, ttl = self._with_result(
            [record_key(task_id), open_key(tenant), *ended_index_keys(tenant, REVOKED)], result)
        outcome, previous = self._store.run("revoke", keys, [
            task_id, time.time(), self.result_ttl, tenant, "1" if terminate else "0", value,
            ttl, self.keep])
        return Transition(outcome.decode(), previous.decode())

    def retry_dead(self, record: TaskRecord, read: str, push: tuple[str, str], *, cap: int = 0
                   ) -> Transition:
        """Enqueue a dead letter again under its id; ``read`` is the dead letter as the
        caller read it. Of concurrent retries exactly one finds it and wins."""
        keys = [record_key(record.id), open_key(record.tenant), push[0], dead_key(record.id),
                *dead_index_keys(record.tenant), *ended_index_keys(record.tenant, FAILURE),
                *listing_keys(record.tenant)]
        keys.append(self.result_key(record.id))
        (outcome,) = self._store.run("retry_dead", keys, [
            record.id, self.record_ttl, time.time(), cap, read, push[1], self.keep,
            self.open_age, *record.fields()])
        return Transition(outcome.decode())

    @staticmethod
    def _adoption(adopt: TaskRecord | None) -> tuple[list[str], list[str]]:
        """The listing keys and the fields of a record to adopt (none: two empty lists)."""
        if adopt is None:
            return [], []
        return listing_keys(adopt.tenant), adopt.fields()

    def _with_result(self, keys: list[str], result: ResultWrite | None
                     ) -> tuple[list[str], str | bytes, int]:
        """``keys`` with the result's key appended, and the result's value and ttl, when
        there is a result to write; else ``keys`` and no value."""
        if result is None:
            return keys, "", 0
        return [*keys, result[0]], result[1], result[2]

    @staticmethod
    def _with_tenant(call: Callable[[str], Any], tenant: str) -> Transition:
        """Run ``call`` with the tenant hint, and once more with the record's real tenant
        if the hint was wrong (the script names it)."""
        for _ in range(2):
            outcome, detail = call(tenant)
            if outcome != b"tenant":
                return Transition(outcome.decode(), detail.decode())
            tenant = detail.decode()
        return Transition("missing")
