"""The real lifecycle scripts checked against the model (``model.py``) by Hypothesis.

A ``RuleBasedStateMachine`` plays several API clients (three tenants, idempotency keys,
countdowns, rate-limited requests, revokes, dead-letter retries from stale reads), workers
(runs that progress, retry, succeed, fail, die and are redelivered; tasks sent around the
API and adopted) and the passing of time (records expiring), interleaved in any order, on a
real redis-server. After every step the invariants compare what Redis holds with the model,
and check the module's guarantees on Redis itself, so that a wrong model cannot hide a
broken guarantee.

Everything that touches Redis or the lifecycle facade is in :class:`RealLifecycle`: when
the lifecycle's API changes, only that class does.

``make check`` runs a fixed, derandomised search of ``MODEL_EXAMPLES`` (default 50)
sequences of up to ``MODEL_STEPS`` (40) steps: a few seconds. ``make chaos`` searches
2000. A failing sequence is printed shrunk (``MODEL_SHRINK=0``: at once, unshrunk): keep
it as a plain test in ``test_model_regressions.py``.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from celery import states
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from taskplane import broker, lifecycle
from taskplane.lifecycle import TaskQuery, TaskRecord
from taskplane.runtime import TaskplaneCelery
from tests.lifecycle import model as m
from tests.lifecycle.conftest import make_app
from tests.support.services import RedisServer

TENANTS = ("acme", "globex", m.SYSTEM)
#: acme may hold 1 unfinished task (so a cap refuses often); the others are not capped.
CAPS = {"acme": 1}
TASKS = ("t.alpha", "t.beta")
QUEUES = ("q1", "q2")
PRIORITIES = (0, 5, 9)
IDEMPOTENCY_KEYS = ("k1", "k2")
BODIES = ("body-a", "body-b")
#: New tasks are submitted while fewer records than this live: a few tasks go through
#: many transitions (a dead letter retried, failed again, retried from a stale read).
LIVE = 5
#: The countdown (seconds) of the tasks submitted with one.
COUNTDOWN = 3600
#: Rate bucket: BURST tokens, refilled so slowly that no test sees a token come back.
BURST, RATE = 2, 1e-9
#: Tasks sent around the API (a stock Celery client), by id: only workers know them.
FOREIGN = {"foreign-1": ("t.alpha", "q1", 5), "foreign-2": ("t.beta", "q2", 0)}
EXAMPLES = int(os.environ.get("MODEL_EXAMPLES", "50"))
STEPS = int(os.environ.get("MODEL_STEPS", "40"))
#: MODEL_SHRINK=0 reports a failing sequence unshrunk (quick, when hunting a bug).
PHASES = [p for p in Phase if p is not Phase.shrink or os.environ.get("MODEL_SHRINK") != "0"]


@dataclass
class Observed:
    """What Redis holds, in the model's terms (:class:`model.Expected`), plus what only
    the guarantees check: each record's submission time and the listing scores."""

    expected: m.Expected
    submitted_at: dict[str, float]
    scores: dict[m.ListingKey, dict[str, float]]
    ttls: dict[str, int]  # seconds each record has left


class RealLifecycle:
    """The real lifecycle, as the state machine calls it: every facade call and every direct
    read of Redis in the test goes through here."""

    def __init__(self, app: TaskplaneCelery, client: redis.Redis) -> None:
        self.life = app.runtime.lifecycle
        self.backend = app.backend
        self.client = client  # a plain client of the same Redis, to read what scripts wrote

    def flush(self) -> None:
        self.client.flushdb()

    # --- transitions --------------------------------------------------------------------

    def submit(self, task_id: str, tenant: str, task: str, queue: str, priority: int, *,
               countdown: float, rate_limited: bool,
               idempotency: tuple[str, str] | None) -> tuple[str, str]:
        now = time.time()
        record = TaskRecord(id=task_id, tenant=tenant, task=task, queue=queue,
                            priority=priority, submitted_at=now,
                            eta=now + countdown if countdown else None)
        done = self.life.submit(record, self._push(task_id, queue, priority),
                                cap=CAPS.get(tenant, 0), rate=RATE if rate_limited else 0.0,
                                burst=BURST, idempotency=idempotency)
        return done.outcome, done.task_id

    def start(self, task_id: str, retries: int, adopt: tuple[str, str, int] | None
              ) -> tuple[str, int]:
        started = self.backend.encode_state(task_id, {"pid": 1, "hostname": "w"},
                                            states.STARTED)
        run = self.life.start(task_id, retries, started=started,
                              adopt=self._adopted(task_id, adopt))
        return run.verdict, run.died

    @staticmethod
    def _adopted(task_id: str, adopt: tuple[str, str, int] | None) -> TaskRecord | None:
        """The record a worker offers for a task sent around the API (``base._adopted``)."""
        if adopt is None:
            return None
        return TaskRecord(id=task_id, tenant=m.SYSTEM, task=adopt[0], queue=adopt[1],
                          priority=adopt[2], submitted_at=time.time())

    def progress(self, task_id: str) -> bool:
        return self.life.write(task_id, self.backend.encode_state(task_id, {"percent": 50},
                                                                  m.PROGRESS))

    def retry(self, task_id: str, retries: int) -> bool:
        write = self.backend.encode_state(task_id, None, states.RETRY)
        return self.life.write(task_id, write, ["state", m.RETRY, "retries", str(retries)])

    def finish(self, task_id: str, state: str, hint: str, run_ended: bool,
               adopt: tuple[str, str, int] | None = None) -> tuple[str, str]:
        result = self.backend.encode_state(task_id, "done", state) if state else None
        done = self.life.finish(task_id, state, tenant=hint, run_ended=run_ended, result=result,
                                adopt=self._adopted(task_id, adopt))
        return done.outcome, done.previous

    def fail(self, task_id: str, task: str, hint: str, run_ended: bool, filing: int
             ) -> tuple[str, str]:
        letter = {"task": task, "args": [], "kwargs": {}, "reason": "failed",
                  "error": {"type": "ValueError", "message": f"filing {filing}"},
                  "failed_at": time.time()}
        result = self.backend.encode_state(
            task_id, {"exc_type": "ValueError", "exc_message": [f"filing {filing}"]},
            states.FAILURE)
        done = self.life.fail(task_id, letter, tenant=hint, run_ended=run_ended, result=result)
        return done.outcome, done.previous

    def revoke(self, task_id: str, tenant: str, terminate: bool) -> tuple[str, str]:
        result = self.backend.encode_state(task_id, None, states.REVOKED)
        done = self.life.revoke(task_id, tenant, terminate=terminate, result=result)
        return done.outcome, done.previous

    def list_tasks(self, tenant: str | None, state: str | None, task: str | None,
                   queue: str | None) -> set[str]:
        """The ids ``GET /v1/tasks`` lists for the query, on one page."""
        query = TaskQuery(tenant=tenant, state=state, task=task, queue=queue)
        rows, cursor = self.life.list_tasks(query, 500)
        assert cursor is None, "one page holds them all"
        ids = [record.id for record, _ in rows]
        assert len(ids) == len(set(ids)), f"listed twice: {ids}"
        return set(ids)

    def dead_letters(self, tenant: str | None) -> tuple[int, set[str]]:
        """``GET /v1/dead-letters``: the count and the ids, on one page."""
        total, entries = self.life.dead_letters(tenant, 500, 0)
        return total, {entry["id"] for entry in entries}

    @property
    def ttls(self) -> tuple[int, int]:
        """How long a record lives unfinished, and once final."""
        return self.life.record_ttl, self.life.result_ttl

    def read_dead(self, task_id: str) -> str | None:
        found = self.life.dead_letter_raw(None, task_id)
        return found[0] if found is not None else None

    def retry_dead(self, task_id: str, read: str) -> str:
        """As ``retry_dead_letter_task`` calls it: the record from the letter read."""
        entry = json.loads(read)
        now = time.time()
        record = TaskRecord(id=task_id, tenant=entry["tenant"], task=entry["task"],
                            queue=entry["queue"], priority=int(entry["priority"]),
                            submitted_at=now)
        return self.life.retry_dead(record, read, self._push(task_id, record.queue,
                                                             record.priority),
                                    cap=CAPS.get(record.tenant, 0)).outcome

    def expire(self, task_id: str) -> None:
        """What the record's TTL does (and a final task's result's, which ends with it)."""
        state = self.client.hget(lifecycle.record_key(task_id), "state")
        self.client.delete(lifecycle.record_key(task_id))
        if state is not None and state.decode() in m.FINAL:
            self.client.delete(self.life.result_key(task_id))

    @staticmethod
    def _push(task_id: str, queue: str, priority: int) -> tuple[str, str]:
        """A stand-in message: the scripts treat it as opaque, and the id tells which."""
        return (broker.queue_key(queue, broker.transport_priority(priority)),
                json.dumps({"id": task_id}))

    # --- reading it all back ------------------------------------------------------------

    def observe(self, ids: set[str]) -> Observed:
        """Every key the model knows of, in one round trip."""
        scopes: list[str | None] = [*TENANTS, None]
        order = sorted(ids)
        listing = [(t, "", "") for t in TENANTS]
        ended = [(t, s) for t in TENANTS for s in m.FINAL]
        idem = [(t, k) for t in TENANTS for k in IDEMPOTENCY_KEYS]
        lists = [(q, key) for q in QUEUES for key in broker.queue_keys(q)]
        with self.client.pipeline(transaction=False) as pipe:
            for i in order:
                pipe.hgetall(lifecycle.record_key(i))
                pipe.ttl(lifecycle.record_key(i))
                pipe.get(self.life.result_key(i))
                pipe.get(lifecycle.dead_key(i))
            for t in TENANTS:
                pipe.zrangebyscore(lifecycle.open_key(t), lifecycle.ABOVE_MARKS, "+inf")
            for t in scopes:
                pipe.zrange(lifecycle.dead_index_key(t), 0, -1)
            for t, _f, _v in listing:
                pipe.zrangebyscore(lifecycle.tasks_index_key(t), lifecycle.ABOVE_MARKS, "+inf",
                                      withscores=True)
            for t, s in ended:
                pipe.zrangebyscore(lifecycle.ended_index_key(t, s), lifecycle.ABOVE_MARKS, "+inf")
            for t, k in idem:
                pipe.hget(lifecycle.idempotency_key(t, k), "id")
            for _, key in lists:
                pipe.lrange(key, 0, -1)
            replies: Iterator[Any] = iter(pipe.execute())
        records, results, dead, submitted, ttls = {}, {}, {}, {}, {}
        for i in order:
            raw, ttl, meta, letter = next(replies), next(replies), next(replies), next(replies)
            if raw:
                h = {k.decode(): v.decode() for k, v in raw.items()}
                records[i] = m.Record(
                    tenant=h["tenant"], task=h["task"], queue=h["queue"],
                    priority=int(h["priority"]), state=h["state"],
                    runs_started=int(h.get("runs_started", 0)),
                    runs_ended=int(h.get("runs_ended", 0)),
                    retries=int(h.get("retries", 0)), countdown="eta" in h)
                submitted[i] = float(h["submitted_at"])
                ttls[i] = int(ttl)
            if meta:
                results[i] = json.loads(meta)["status"]
            if letter:
                dead[i] = json.loads(letter)["tenant"]

        def members(raw: list[bytes]) -> set[str]:
            return {x.decode() for x in raw}

        open_sets = {t: members(next(replies)) for t in TENANTS}
        dead_index = {t: members(next(replies)) for t in scopes}
        scores = {key: {x.decode(): s for x, s in next(replies)} for key in listing}
        ended_sets = {key: members(next(replies)) for key in ended}
        idempotency = {key: next(replies) for key in idem}
        queued: dict[str, list[str]] = {}
        for q, _ in lists:  # LPUSH: the newest message first; one list per priority step
            queued.setdefault(q, []).extend(json.loads(x)["id"] for x in next(replies))
        expected = m.Expected(
            records=records, results=results,
            open={k: v for k, v in open_sets.items() if v},
            listings={k: set(v) for k, v in scores.items() if v},
            ended={k: v for k, v in ended_sets.items() if v},
            dead=dead, dead_index={k: v for k, v in dead_index.items() if v},
            idempotency={k: v.decode() for k, v in idempotency.items() if v is not None},
            queued={q: ids for q, ids in queued.items() if ids})
        return Observed(expected, submitted, scores, ttls)


#: Outcomes the search reached, over every sequence it ran.
REACHED: Counter[str] = Counter()
#: Outcomes even the short search of ``make check`` must reach, or it does not test
#: what it claims to: each transition, allowed and refused.
MUST_REACH = {
    "submit: created", "submit: replay", "start: run", "start: run after a death",
    "start: unknown", "progress written: True", "retry written: True",
    "finish: done", "fail: done", "revoke: revoked", "revoke: tenant", "revoke: final",
    "retry_dead: queued",
}
#: What the long search (``make chaos``) must reach besides: every outcome there is.
MUST_REACH_LONG = {
    "submit: conflict", "submit: rate_limited", "submit: cap_reached", "start: SUCCESS",
    "start: FAILURE",
    "start: REVOKED", "finish: adopted", "progress written: False", "retry written: False", "finish: final",
    "finish: missing", "fail: final", "fail: missing", "revoke: running", "revoke: missing",
    "retry_dead: gone", "retry_dead: changed", "retry_dead: cap_reached",
}


@dataclass
class Run:
    """A worker's run of a task: between its start and the end it counts."""

    task_id: str
    retries: int
    ending: bool = False  # its outcome is stored; task_postrun has still to count its end


class LifecycleMachine(RuleBasedStateMachine):
    """Clients, workers and time against one real Redis, checked against the model."""

    real: RealLifecycle  # set by the test below, before the machine runs

    def __init__(self) -> None:
        super().__init__()
        self.model = m.Model(caps=dict(CAPS), burst=BURST)
        self.ids: set[str] = set()
        self.submits: list[tuple[str, str, str, str, int, int, tuple[str, str] | None]] = []
        self.runs: list[Run] = []
        self.reads: list[tuple[str, str, m.DeadLetter]] = []
        self.restarted: set[str] = set()  # ids a step may legitimately start afresh
        self.last: Observed | None = None
        self.serial = 0

    @initialize()
    def clean(self) -> None:
        self.real.flush()

    # --- clients ------------------------------------------------------------------------

    @precondition(lambda self: len(self.model.records) < LIVE)
    @rule(tenant=st.sampled_from(TENANTS), task=st.sampled_from(TASKS),
          queue=st.sampled_from(QUEUES), priority=st.sampled_from(PRIORITIES),
          countdown=st.sampled_from((0, 0, COUNTDOWN)), rate_limited=st.booleans(),
          key=st.none() | st.tuples(st.sampled_from(IDEMPOTENCY_KEYS), st.sampled_from(BODIES)))
    def submit(self, tenant: str, task: str, queue: str, priority: int, countdown: int,
               rate_limited: bool, key: tuple[str, str] | None) -> None:
        self.serial += 1
        task_id = f"task-{self.serial}"
        self._submit(task_id, tenant, task, queue, priority, countdown, rate_limited, key)

    @precondition(lambda self: any(s[0] not in self.model.expired for s in self.submits))
    @rule(data=st.data())
    def submit_again_after_unknown_outcome(self, data: st.DataObject) -> None:
        """A client whose submit timed out sends it again: the same id, key and body,
        seconds later (not after the record's days-long TTL ran out)."""
        task_id, tenant, task, queue, priority, countdown, key = data.draw(
            st.sampled_from([s for s in self.submits if s[0] not in self.model.expired]))
        self._submit(task_id, tenant, task, queue, priority, countdown, False, key)

    def _submit(self, task_id: str, tenant: str, task: str, queue: str, priority: int,
                countdown: int, rate_limited: bool, key: tuple[str, str] | None) -> None:
        self.ids.add(task_id)
        self.submits.append((task_id, tenant, task, queue, priority, countdown, key))
        got = self.real.submit(task_id, tenant, task, queue, priority, countdown=countdown,
                               rate_limited=rate_limited, idempotency=key)
        want = self.model.submit(task_id, tenant, task, queue, priority,
                                 countdown=bool(countdown), rate_limited=rate_limited,
                                 idempotency=key)
        self._restart_if_new(want, task_id)
        self._saw(f"submit: {want[0]}")
        assert got == want, f"submit {task_id}: real {got}, model {want}"

    @precondition(lambda self: bool(self.ids))
    @rule(data=st.data(), terminate=st.booleans(), own=st.booleans())
    def revoke(self, data: st.DataObject, terminate: bool, own: bool) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.ids)))
        rec = self.model.records.get(task_id)
        tenant = rec.tenant if rec is not None and own else data.draw(st.sampled_from(TENANTS))
        got = self.real.revoke(task_id, tenant, terminate)
        want = self.model.revoke(task_id, tenant, terminate)
        self._saw(f"revoke: {want[0]}")
        assert got == want, f"revoke {task_id} as {tenant}: real {got}, model {want}"

    @precondition(lambda self: bool(self.model.dead))
    @rule(data=st.data())
    def read_dead_letter(self, data: st.DataObject) -> None:
        """A client reads a dead letter (``GET /v1/dead-letters/{id}``): it may retry it
        much later, when the letter was retried and filed again meanwhile."""
        self._read_dead(data.draw(st.sampled_from(sorted(self.model.dead))))

    def _read_dead(self, task_id: str) -> None:
        raw = self.real.read_dead(task_id)
        letter = self.model.dead[task_id]
        assert raw is not None, f"dead letter {task_id} missing"
        assert json.loads(raw)["error"]["message"] == f"filing {letter.version}"
        self.reads.append((task_id, raw, letter))

    @precondition(lambda self: bool(self.reads))
    @rule(data=st.data())
    def retry_dead_letter(self, data: st.DataObject) -> None:
        task_id, raw, letter = data.draw(st.sampled_from(self.reads))
        got = self.real.retry_dead(task_id, raw)
        want = self.model.retry_dead(task_id, letter)
        if want == "queued":
            self.restarted.add(task_id)
        self._saw(f"retry_dead: {want}")
        assert got == want, f"retry_dead {task_id}: real {got}, model {want}"

    @rule(tenant=st.sampled_from((*TENANTS, None)),
          state=st.none() | st.sampled_from(lifecycle.STATES),
          task=st.none() | st.sampled_from(TASKS), queue=st.none() | st.sampled_from(QUEUES))
    def list_tasks(self, tenant: str | None, state: str | None, task: str | None,
                   queue: str | None) -> None:
        """A client (or an operator: no tenant) lists tasks: every live record that
        matches, whichever index the query walks."""
        got = self.real.list_tasks(tenant, state, task, queue)
        want = self.model.list_tasks(tenant, state, task, queue)
        assert got == want, f"listing {tenant, state, task, queue}: real {got}, model {want}"
        every = {i for i, r in self.model.records.items()
                 if m.matches(r, tenant, state, task, queue)}
        if not m.ADOPTED_TASKS_ARE_OPEN and tenant is not None and state not in (
                None, *m.FINAL):
            every -= self.model.adopted  # (the open set misses them: test_model_regressions)
        assert got == every, f"listing {tenant, state, task, queue} misses {every - got}"

    @rule(tenant=st.sampled_from((*TENANTS, None)))
    def list_dead_letters(self, tenant: str | None) -> None:
        """A client (or an operator) lists dead letters: each of its failed tasks not yet
        retried, the operator every tenant's."""
        total, ids = self.real.dead_letters(tenant)
        want = {i for i, d in self.model.dead.items() if tenant in (None, d.tenant)}
        assert (total, ids) == (len(want), want), f"dead letters of {tenant}: {ids}, {want}"

    # --- workers ------------------------------------------------------------------------

    @precondition(lambda self: bool(self.model.records))
    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        """A worker takes a message of a submitted task: first delivery or redelivery
        (twins included: a redelivery while a run goes on). An expired record's message
        is long gone: a PENDING one expired because its message was lost."""
        task_id = data.draw(st.sampled_from(sorted(self.model.records)))
        self._start(task_id, None)

    @precondition(lambda self: any(i not in self.model.expired for i in FOREIGN))
    @rule(data=st.data())
    def start_foreign(self, data: st.DataObject) -> None:
        """A worker takes a task sent around the API: no tenant header, adopted if new."""
        task_id = data.draw(st.sampled_from([i for i in FOREIGN if i not in self.model.expired]))
        self.ids.add(task_id)
        self._start(task_id, FOREIGN[task_id])

    @precondition(lambda self: any(i not in self.model.expired for i in FOREIGN))
    @rule(data=st.data())
    def revoke_foreign(self, data: st.DataObject) -> None:
        """A worker holding a task sent around the API is told to revoke it (``celery
        control revoke``): it stores REVOKED, creating the record if none started it."""
        task_id = data.draw(st.sampled_from([i for i in FOREIGN if i not in self.model.expired]))
        self.ids.add(task_id)
        created = task_id not in self.model.records
        got = self.real.finish(task_id, m.REVOKED, m.SYSTEM, False, FOREIGN[task_id])
        want = self.model.finish(task_id, m.REVOKED, adopt=FOREIGN[task_id])
        if created:
            self.restarted.add(task_id)
        self._saw(f"finish: {want[0]}")
        assert got == want, f"revoke foreign {task_id}: real {got}, model {want}"

    def _start(self, task_id: str, adopt: tuple[str, str, int] | None) -> None:
        rec = self.model.records.get(task_id)
        retries = rec.retries if rec is not None else 0
        created = rec is None and adopt is not None
        got = self.real.start(task_id, retries, adopt)
        want = self.model.start(task_id, retries, adopt)
        if created:
            self.restarted.add(task_id)
        self._saw(f"start: {want[0]}{' after a death' if want[1] else ''}")
        assert got == want, f"start {task_id}: real {got}, model {want}"
        if got[0] in ("run", "unknown"):
            self.runs.append(Run(task_id, retries))

    def _run(self, data: st.DataObject, ending: bool = False) -> Run:
        return data.draw(st.sampled_from([r for r in self.runs if r.ending == ending]))

    def _hint(self, data: st.DataObject, task_id: str) -> str:
        """The tenant header of the message: right, or (a stock message) wrong."""
        rec = self.model.records.get(task_id)
        right = rec.tenant if rec is not None else m.SYSTEM
        return data.draw(st.sampled_from((right, right, *TENANTS)))

    @precondition(lambda self: any(not r.ending for r in self.runs))
    @rule(data=st.data())
    def progress(self, data: st.DataObject) -> None:
        run = self._run(data)
        got = self.real.progress(run.task_id)
        want = self.model.write(run.task_id, m.PROGRESS)
        self._saw(f"progress written: {want}")
        assert got == want, f"progress {run.task_id}: real {got}, model {want}"

    @precondition(lambda self: any(not r.ending for r in self.runs))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """The run raises Retry: RETRY stored (task_postrun counts the run's end after)."""
        run = self._run(data)
        got = self.real.retry(run.task_id, run.retries + 1)
        want = self.model.write(run.task_id, m.RETRY, retries=run.retries + 1)
        run.ending = True
        self._saw(f"retry written: {want}")
        assert got == want, f"retry {run.task_id}: real {got}, model {want}"

    @precondition(lambda self: any(not r.ending for r in self.runs))
    @rule(data=st.data(), state=st.sampled_from((m.SUCCESS, m.SUCCESS, m.REVOKED, m.FAILURE)))
    def finish(self, data: st.DataObject, state: str) -> None:
        """The run ends: SUCCESS stored by the run, counting its end in the same step (as
        ``results._ends_run``); REVOKED or a FAILURE without dead letter (Celery's own
        paths) leave the count to task_postrun."""
        run = self._run(data)
        counted = state == m.SUCCESS
        hint = self._hint(data, run.task_id)
        got = self.real.finish(run.task_id, state, hint, counted)
        want = self.model.finish(run.task_id, state, run_ended=counted)
        self._end_run(run, counted)
        self._saw(f"finish: {want[0]}")
        assert got == want, f"finish {run.task_id} {state}: real {got}, model {want}"

    @precondition(lambda self: any(not r.ending for r in self.runs))
    @rule(data=st.data(), in_run=st.booleans())
    def fail(self, data: st.DataObject, in_run: bool) -> None:
        """The task fails for good: in the run's process (``in_run``; task_postrun then
        counts its end) or in the worker's main process (a hard time limit, a lost
        process: the run's process is gone and never counts its end)."""
        run = self._run(data)
        hint = self._hint(data, run.task_id)
        rec = self.model.records.get(run.task_id)
        got = self.real.fail(run.task_id, rec.task if rec is not None else "", hint, False,
                             self.model.filings + 1)
        want = self.model.fail(run.task_id, run_ended=False)
        if in_run:
            run.ending = True
        else:
            self.runs.remove(run)
        self._saw(f"fail: {want[0]}")
        assert got == want, f"fail {run.task_id}: real {got}, model {want}"
        if want[0] == "done":  # an operator watching the dead letters reads it at once
            self._read_dead(run.task_id)

    @precondition(lambda self: any(r.ending for r in self.runs))
    @rule(data=st.data())
    def postrun(self, data: st.DataObject) -> None:
        """task_postrun: the run's end is counted (``finish`` with no state)."""
        run = self._run(data, ending=True)
        self.runs.remove(run)
        hint = self._hint(data, run.task_id)
        got = self.real.finish(run.task_id, "", hint, True)
        want = self.model.finish(run.task_id, "", run_ended=True)
        assert got == want, f"postrun {run.task_id}: real {got}, model {want}"

    def _end_run(self, run: Run, counted: bool) -> None:
        if counted:
            self.runs.remove(run)
        else:
            run.ending = True

    @precondition(lambda self: bool(self.runs))
    @rule(data=st.data())
    def die(self, data: st.DataObject) -> None:
        """The run's process dies (SIGKILL, OOM): nothing is counted; the message comes
        back, and the next ``start`` reports one more death."""
        self.runs.remove(data.draw(st.sampled_from(self.runs)))

    # --- time ---------------------------------------------------------------------------

    @precondition(lambda self: any(r.state in (m.PENDING, *m.FINAL)
                                   for r in self.model.records.values()))
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        """A record's TTL runs out: a final one's (with its result), or a PENDING one's
        whose message was lost. (A running task's record outlives any run.)"""
        task_id = data.draw(st.sampled_from(sorted(
            i for i, r in self.model.records.items() if r.state in (m.PENDING, *m.FINAL))))
        self.real.expire(task_id)
        self.model.expire(task_id)
        self.restarted.add(task_id)

    def _saw(self, outcome: str) -> None:
        """Count an outcome the search reached (Hypothesis' statistics list them too)."""
        event(outcome)
        REACHED[outcome] += 1

    def _restart_if_new(self, want: tuple[str, str], task_id: str) -> None:
        if want[0] == "created":
            self.restarted.add(task_id)

    # --- invariants ---------------------------------------------------------------------

    @invariant()
    def redis_matches_the_model(self) -> None:
        seen = self.real.observe(self.ids)
        want = self.model.expected()
        got = seen.expected
        for name in ("records", "results", "open", "listings", "ended", "dead", "dead_index",
                     "idempotency"):
            assert getattr(got, name) == getattr(want, name), (
                f"{name}: real {getattr(got, name)}\nmodel {getattr(want, name)}")
        assert {q: sorted(v) for q, v in got.queued.items()} == {
            q: sorted(v) for q, v in want.queued.items()}, "queued messages"
        self._guarantees(seen)
        self.last, self.restarted = seen, set()

    def _guarantees(self, seen: Observed) -> None:
        """The module's promises, checked on what Redis holds (not on the model)."""
        got = seen.expected
        records = got.records
        # no final state overwritten, one identity per record
        if self.last is not None:
            for i, before in self.last.expected.records.items():
                now = records.get(i)
                if now is None or i in self.restarted:
                    continue
                assert (now.tenant, now.task, now.queue) == (
                    before.tenant, before.task, before.queue), f"{i} changed identity"
                if before.state in m.FINAL:
                    assert now.state == before.state, f"{i}: {before.state} -> {now.state}"
        record_ttl, result_ttl = self.real.ttls
        for i, rec in records.items():
            assert rec.runs_started >= rec.runs_ended, f"{i}: runs {rec}"
            # a record outlives its countdown; a final one lives as long as its result
            ttl = seen.ttls[i]
            if rec.state in m.FINAL:
                assert 0 < ttl <= result_ttl, f"{i}: ttl {ttl} once {rec.state}"
            elif rec.countdown:
                assert record_ttl < ttl <= record_ttl + COUNTDOWN, f"{i}: ttl {ttl}, countdown"
            else:
                assert 0 < ttl <= record_ttl, f"{i}: ttl {ttl}"
            # the listing indexes hold each record, scored by its submission
            for key in m.listing_keys(rec.tenant, rec.task, rec.queue):
                assert seen.scores[key].get(i) == pytest.approx(seen.submitted_at[i], abs=1), (i, key)
            for state in m.FINAL:  # (an earlier life's entry lingers, as an expired one's)
                listed = i in got.ended.get((rec.tenant, state), set())
                assert listed == (rec.state == state) or (
                    listed and i in self.model.expired), f"{i} {rec.state} in ended {state}"
            if rec.state in m.FINAL:  # the result ends with the record, in the same step
                assert got.results.get(i) == rec.state, f"{i}: result {got.results.get(i)}"
        # a listing entry whose record exists is the record's
        for (tenant, field, value), entries in seen.scores.items():
            for i in entries:
                rec = records.get(i)
                if rec is not None and i not in self.model.expired:  # (or an earlier life's)
                    assert tenant in (None, rec.tenant) and (
                        not field or getattr(rec, field) == value), (i, tenant, field, value)
        # a tenant's open set: its unfinished records (entries of expired ones linger)
        for tenant in TENANTS:
            members = got.open.get(tenant, set())
            unfinished = {i for i, r in records.items()
                          if r.tenant == tenant and r.state not in m.FINAL
                          and (m.ADOPTED_TASKS_ARE_OPEN or i not in self.model.adopted)}
            assert {i for i in members if i in records} == unfinished, (
                f"open set of {tenant}: {members}, unfinished {unfinished}")
        # the dead-letter indexes: every dead letter, its tenant's; a letter's live record
        # is its FAILURE
        assert got.dead_index.get(None, set()) == set(got.dead), "operators' dead letters"
        for tenant in TENANTS:
            assert got.dead_index.get(tenant, set()) == {
                i for i, t in got.dead.items() if t == tenant}, f"dead letters of {tenant}"
        for i, tenant in got.dead.items():
            rec = records.get(i)
            assert rec is None or (rec.state, rec.tenant) == (m.FAILURE, tenant) or (
                i in self.model.expired), (i, rec)  # (or the letter of an earlier life)
        # an idempotency key names one task, of its tenant, and at most one lives
        for (tenant, _), task_id in got.idempotency.items():
            rec = records.get(task_id)
            assert rec is None or rec.tenant == tenant
        for key, live in self.model.live_under_key():
            assert len(live) <= 1, f"{key} created {live}"


@pytest.fixture(scope="module")
def real() -> Iterator[RealLifecycle]:
    server = RedisServer().start()
    app = make_app(server)
    yield RealLifecycle(app, server.client())
    app.close()
    server.close()


@pytest.mark.timeout(max(300, EXAMPLES // 2))
def test_lifecycle_against_the_model(real: RealLifecycle) -> None:
    LifecycleMachine.real = real
    run_state_machine_as_test(LifecycleMachine, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, derandomize=True, database=None,
        deadline=None, suppress_health_check=[HealthCheck.too_slow],
        report_multiple_bugs=False, phases=PHASES))
    missed = (MUST_REACH | (MUST_REACH_LONG if EXAMPLES >= 1000 else set())) - set(REACHED)
    assert not missed, f"the search never reached {sorted(missed)}; reached {dict(REACHED)}"
