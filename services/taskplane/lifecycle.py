"""The task state machine: states, transitions, Redis keys and the scripts that move a task.

Every change of a task's state is one function here, backed by one Lua script that
checks the transition's precondition and writes everything the transition changes, in
one atomic Redis step. Routes, worker signals, the task base class and the result
backend call these functions and hold no Redis logic of their own; so a guarantee is
checked in one place, whatever races it (two API pods, a worker and the API, a client
retrying after a timeout).

States (``record.state``; Celery's result key mirrors them for Celery clients)::

    submit ──> PENDING ──start──> STARTED ──finish──> SUCCESS
                 │  ▲               │ │ └──progress (stays STARTED; result shows PROGRESS)
                 │  │               │ ├──retry────> RETRY ──start──> STARTED
                 │  │               │ └──fail─────> FAILURE (a dead letter)
                 │  └──retry_dead_letter───────────── FAILURE
                 └──revoke──> REVOKED <──revoke(terminate)── STARTED / RETRY

==================  ==========================  ==================================================
transition          from                        guarantee
==================  ==========================  ==================================================
``submit``          (nothing)                   rate token, idempotency key, tenant cap, record
                                                and message: all written or none; a replayed key
                                                returns the first task, never a second one
``start``           PENDING, RETRY, STARTED     a revoked or finished task never runs again; the
                    (redelivered)               run is counted (poison detection); STARTED stored
``progress``        STARTED                     never lands on a finished task
``retry``           STARTED                     RETRY stored unless the task already ended
``finish``          any but a final state       result, record and tenant slot change together;
                                                a final state is never overwritten
``fail``            any but a final state       FAILURE, dead letter and tenant slot together
``revoke``          PENDING, RETRY; STARTED     a task not yet started never runs; a running one
                    only with ``terminate``     is stopped only when asked
``retry_dead``      FAILURE with a dead letter  exactly one of concurrent retries wins
==================  ==========================  ==================================================

Keys (all passed to the scripts in ``KEYS``; ``{tenant}`` is immutable per task):

============================================  ======  ==============================================
key                                           type    holds
============================================  ======  ==============================================
``taskplane:task:{id}``                       hash    the record: tenant, task, queue, priority,
                                                      state, submitted_at, eta, started_at,
                                                      finished_at, retries, runs_started,
                                                      runs_ended. Its existence makes an id
                                                      "submitted" (else 404). TTL
                                                      ``TASK_RECORD_TTL`` (plus any countdown),
                                                      then ``RESULT_EXPIRES`` once final.
``taskplane:idem:{tenant}:{sha256(key)}``     hash    ``fp`` (body hash) and ``id`` of the task an
                                                      Idempotency-Key created; TTL
                                                      ``IDEMPOTENCY_TTL``.
``taskplane:open:{tenant}``                   zset    the tenant's unfinished task ids by
                                                      submission time (the per-tenant cap).
``taskplane:rate:{tenant}``                   hash    token bucket of the tenant's request rate.
``taskplane:tasks:{tenant}``                  zset    the tenant's task ids by submission time
                                                      (``GET /v1/tasks``); ``taskplane:tasks``
                                                      holds every tenant's. The same with
                                                      ``:task:{name}`` or ``:queue:{name}``
                                                      appended: one task type's, one queue's.
``taskplane:ended:{tenant}:{state}``          zset    ids of the tenant's tasks that ended in
                                                      ``state`` (SUCCESS, FAILURE, REVOKED) by
                                                      submission time; ``taskplane:ended:{state}``
                                                      for every tenant. Entries of expired
                                                      records are pruned when read and by age.
``taskplane:dead:{id}``                       string  JSON dead letter (arguments, error, reason);
                                                      TTL ``DEAD_LETTER_TTL``.
``taskplane:dead-letters:{tenant}``           zset    dead-letter ids by time of death.
``taskplane:dead-letters``                    zset    every tenant's dead-letter ids (operators).
``celery-task-meta-{id}``                     string  Celery's result (written here when results
                                                      live in this Redis, else by ``results.py``).
queue list (``broker.py``)                    list    the task message, pushed by ``submit`` and
                                                      ``retry_dead``.
``taskplane:schedules``                        hash    periodic schedules stored over the API:
                                                      ``tenant/name`` -> JSON (``schedules.py``).
``taskplane:schedule-state:{tenant}/{name}``  hash    a schedule's fire state: ``last_tick`` (the
                                                      newest tick handled), ``last_fired_at``,
                                                      ``last_task_id``, ``fires``, ``skipped``,
                                                      ``missed``; moved only by ``schedule_advance``.
``taskplane:scheduler-lease``                 string  the scheduler replica that scans (saves work
                                                      only: a fire's exactly-once rests on its
                                                      Idempotency-Key ``schedule {name} {tick}``).
============================================  ======  ==============================================
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import redis

PREFIX = "taskplane:"
#: The tenant of tasks sent around the API (a stock Celery client, ``celery call``), whose
#: records the worker creates when they start; only operators see them.
SYSTEM_TENANT = "system"
#: Message header naming the task's tenant: the worker finds the tenant's keys (open set,
#: dead letters) without reading the record first. Retries carry it along.
TENANT_HEADER = "taskplane_tenant"

PENDING, STARTED, PROGRESS, RETRY = "PENDING", "STARTED", "PROGRESS", "RETRY"
SUCCESS, FAILURE, REVOKED = "SUCCESS", "FAILURE", "REVOKED"
#: States a task never leaves (but for ``retry_dead``, which starts a FAILURE afresh).
FINAL_STATES = (SUCCESS, FAILURE, REVOKED)
#: Every state a client can see, in lifecycle order.
STATES = (PENDING, STARTED, PROGRESS, RETRY, *FINAL_STATES)
RUNNING_STATES = (STARTED, PROGRESS)


# --- keys ------------------------------------------------------------------------------

def record_key(task_id: str) -> str:
    return f"{PREFIX}task:{task_id}"


def idempotency_key(tenant: str, key: str) -> str:
    return f"{PREFIX}idem:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"


def open_key(tenant: str) -> str:
    return f"{PREFIX}open:{tenant}"


def rate_key(tenant: str) -> str:
    return f"{PREFIX}rate:{tenant}"


def dead_key(task_id: str) -> str:
    return f"{PREFIX}dead:{task_id}"


def dead_index_key(tenant: str | None) -> str:
    """A tenant's dead-letter index, or (``None``) the index of every tenant's."""
    return f"{PREFIX}dead-letters:{tenant}" if tenant is not None else f"{PREFIX}dead-letters"


def tasks_index_key(tenant: str | None, field: str = "", value: str = "") -> str:
    """The tasks of a tenant (``None``: of every tenant) by submission time: all of them,
    or (``field`` "task" or "queue") those of one task type or queue."""
    base = f"{PREFIX}tasks:{tenant}" if tenant is not None else f"{PREFIX}tasks"
    return f"{base}:{field}:{value}" if field else base


def listing_keys(tenant: str, task: str, queue: str) -> list[str]:
    """The six listing indexes a task is entered in when submitted (or adopted): all, by
    task type, by queue; each for its tenant and for every tenant."""
    return [tasks_index_key(t, f, v) for f, v in (("", ""), ("task", task), ("queue", queue))
            for t in (tenant, None)]


def ended_index_key(tenant: str | None, state: str) -> str:
    """The tasks of a tenant (``None``: of every tenant) that ended in ``state``, by
    submission time."""
    return (f"{PREFIX}ended:{tenant}:{state}" if tenant is not None
            else f"{PREFIX}ended:{state}")


# --- scripts ---------------------------------------------------------------------------

#: Lua helpers every script starts with. ``is_final(s)``; ``result_is_final(key)``: the
#: stored Celery result holds a final state; ``write_result(key, value, ttl)`` stores and
#: publishes ``value`` unless the stored result is final (0 ttl: no expiry), 1 if written.
_LUA_LIB = """
local FINAL = {SUCCESS = true, FAILURE = true, REVOKED = true}
local function is_final(s) return s ~= nil and s ~= false and FINAL[s] == true end
local function result_is_final(key)
  local current = redis.call('GET', key)
  if not current then return false end
  local ok, meta = pcall(cjson.decode, current)
  return ok and type(meta) == 'table' and is_final(meta['status'])
end
local function write_result(key, value, ttl)
  if result_is_final(key) then return 0 end
  if tonumber(ttl) > 0 then redis.call('SET', key, value, 'EX', ttl)
  else redis.call('SET', key, value) end
  redis.call('PUBLISH', key, value)
  return 1
end
-- The precondition every ending shares: the record exists (else only the result, if
-- given, is written), belongs to ``tenant`` and has not ended; the run is counted as
-- ended first when ``run_ended`` is '1'. Returns a refusal reply, or nil and the state.
local function may_end(record, result, value, ttl, tenant, run_ended)
  if redis.call('EXISTS', record) == 0 then
    if result and value ~= '' then write_result(result, value, ttl) end
    return {'missing', ''}
  end
  local real = redis.call('HGET', record, 'tenant') or ''
  if real ~= tenant then return {'tenant', real} end
  if run_ended == '1' then redis.call('HINCRBY', record, 'runs_ended', 1) end
  local current = redis.call('HGET', record, 'state')
  if is_final(current) then return {'final', current} end
  return nil, current
end
-- Add ``id`` to a listing index scored by ``score`` (its submission time); entries older
-- than ``keep`` seconds (no record lives that long) go, and the index lives ``keep``.
local function index(key, id, score, now, keep)
  redis.call('ZADD', key, score, id)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', tonumber(now) - tonumber(keep))
  redis.call('EXPIRE', key, keep)
end
-- Mark the record final: stamp it, keep it for the result TTL, free the tenant's slot,
-- list it among the tasks that ended in ``state`` (``ended``: the tenant's index and
-- every tenant's).
local function close(record, open, ended, id, state, now, ttl, keep)
  redis.call('HSET', record, 'state', state, 'finished_at', now)
  redis.call('EXPIRE', record, ttl)
  redis.call('ZREM', open, id)
  local submitted = redis.call('HGET', record, 'submitted_at') or now
  for _, key in ipairs(ended) do index(key, id, submitted, now, keep) end
end
"""

# A tenant's token bucket (the key in ``bucket``): ``rate`` tokens a second up to
# ``burst``, on Redis' clock; sets ``granted`` and ``tokens``.
_RATE_BUCKET = """
local t = redis.call('TIME')
local clock = tonumber(t[1]) + tonumber(t[2]) / 1e6
local b = redis.call('HMGET', bucket, 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or clock
tokens = math.min(burst, tokens + math.max(0, clock - at) * rate)
local granted = tokens >= 1
if granted then tokens = tokens - 1 end
redis.call('HSET', bucket, 'tokens', tostring(tokens), 'at', tostring(clock))
redis.call('EXPIRE', bucket, math.ceil(burst / rate) + 1)
"""

# submit. KEYS: record, open set, rate bucket, idempotency key, queue list, record of the
# task the idempotency key held when the caller read it (or the new record again), the six
# listing indexes (``listing_keys``). ARGV: id, record ttl, now, cap, rate (0: none),
# burst, fp ('' without a key), idempotency ttl, id the key held when read ('' if none),
# message, index lifetime, record fields...
# Returns {outcome, id, retry_after}: created | replay | conflict | rate_limited |
# cap_reached | stale (the key names another task than the caller said: id is that
# task; call again passing its record, so the script can see whether it still exists).
# A first use of a key is one call; a replay is two.
_SUBMIT = _LUA_LIB + """
local id, ttl, now, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local rate, burst, fp, held_read = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[9]
if fp ~= '' then
  local held = redis.call('HMGET', KEYS[4], 'fp', 'id')
  if (held[2] or '') ~= held_read then return {'stale', held[2] or '', '0'} end
end
if rate > 0 then
  local bucket = KEYS[3]
""" + _RATE_BUCKET + """
  if not granted then return {'rate_limited', '', tostring((1 - tokens) / rate)} end
end
if fp ~= '' and held_read ~= '' then
  if redis.call('HGET', KEYS[4], 'fp') ~= fp then return {'conflict', held_read, '0'} end
  if redis.call('EXISTS', KEYS[6]) == 1 then return {'replay', held_read, '0'} end
  -- the first task's record expired: this request starts afresh under the key
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'replay', id, '0'} end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
if cap > 0 and redis.call('ZCARD', KEYS[2]) >= cap then return {'cap_reached', '', '0'} end
redis.call('HSET', KEYS[1], 'state', 'PENDING', unpack(ARGV, 12))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now, id)
redis.call('EXPIRE', KEYS[2], ttl)
for i = 7, 12 do index(KEYS[i], id, now, now, ARGV[11]) end
redis.call('LPUSH', KEYS[5], ARGV[10])
if fp ~= '' then
  redis.call('DEL', KEYS[4])
  redis.call('HSET', KEYS[4], 'fp', fp, 'id', id)
  redis.call('EXPIRE', KEYS[4], ARGV[8])
end
return {'created', id, '0'}
"""

# start. KEYS: record, the six listing indexes of an adopted record (``listing_keys``)
# [, result].
# ARGV: now, retries, STARTED value ('' for none), its ttl, ttl of a record adopted for a
# task sent around the API (0: adopt none), index lifetime, task id, the adopted record's
# fields...
# Returns {verdict, runs that died}: run | unknown (there was no record: a task sent
# around the API, now adopted; run it) | REVOKED | SUCCESS | FAILURE (do not run).
_START = _LUA_LIB + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  if tonumber(ARGV[5]) > 0 then  -- a task sent around the API: adopt it under SYSTEM_TENANT
    redis.call('HSET', KEYS[1], 'state', 'STARTED', 'started_at', ARGV[1], 'retries', ARGV[2],
               'runs_started', 1, unpack(ARGV, 8))
    redis.call('EXPIRE', KEYS[1], ARGV[5])
    for i = 2, 7 do index(KEYS[i], ARGV[7], ARGV[1], ARGV[1], ARGV[6]) end
  end
  if KEYS[8] and ARGV[3] ~= '' then write_result(KEYS[8], ARGV[3], ARGV[4]) end
  return {'unknown', 0}
end
local state = redis.call('HGET', KEYS[1], 'state')
if is_final(state) then return {state, 0} end
redis.call('HSET', KEYS[1], 'state', 'STARTED', 'started_at', ARGV[1], 'retries', ARGV[2])
redis.call('HDEL', KEYS[1], 'finished_at')
local started = redis.call('HINCRBY', KEYS[1], 'runs_started', 1)
local ended = tonumber(redis.call('HGET', KEYS[1], 'runs_ended') or '0')
if KEYS[8] and ARGV[3] ~= '' then write_result(KEYS[8], ARGV[3], ARGV[4]) end
return {'run', started - 1 - ended}
"""

# A result state that does not end the task (STARTED stored apart, PROGRESS, RETRY).
# KEYS: result[, record]. ARGV: value, ttl, then record field/value pairs to set.
# Written only if neither the result nor the record is final. Returns 1 if written.
_WRITE = _LUA_LIB + """
if KEYS[2] and is_final(redis.call('HGET', KEYS[2], 'state')) then return 0 end
local written = write_result(KEYS[1], ARGV[1], ARGV[2])
if written == 1 and KEYS[2] and #ARGV > 2 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 3))
end
return written
"""

# finish. KEYS: record, open set, the tenant's and every tenant's index of tasks ended in
# this state[, result]. ARGV: id, now, result ttl, final state ('' to count the run
# only), tenant the caller expects, run ended ('1'/'0'), result value ('' for none), its
# ttl, index lifetime. ``run ended`` counts a run that ended in this
# process whatever else happens (poison detection). Returns {outcome, detail}:
# done | missing | final (detail: the state it already had) | tenant (detail: the real
# tenant: the caller guessed the open set's key wrong and must call again).
_FINISH = _LUA_LIB + """
local id, now, ttl, state, tenant = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local refused, current = may_end(KEYS[1], KEYS[5], ARGV[7], ARGV[8], tenant, ARGV[6])
if refused then return refused end
if state == '' then return {'done', current or ''} end
close(KEYS[1], KEYS[2], {KEYS[3], KEYS[4]}, id, state, now, ttl, ARGV[9])
if KEYS[5] and ARGV[7] ~= '' then write_result(KEYS[5], ARGV[7], ARGV[8]) end
return {'done', current or ''}
"""

# fail: FAILURE, the dead letter and the freed slot together. KEYS: record, open set,
# dead letter, tenant's dead-letter index, every tenant's, the tenant's and every
# tenant's index of FAILUREs[, result]. ARGV: id, now, result ttl, tenant, run ended,
# dead-letter JSON without the record's fields, dead-letter ttl, result value ('' for
# none), its ttl, index lifetime. Returns {outcome, detail} as finish does.
_FAIL = _LUA_LIB + """
local id, now, ttl, tenant = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local refused, current = may_end(KEYS[1], KEYS[8], ARGV[8], ARGV[9], tenant, ARGV[5])
if refused then return refused end
local r = redis.call('HMGET', KEYS[1], 'queue', 'priority', 'retries', 'submitted_at')
-- ARGV[6] is a JSON object from the caller: append the record's fields as text
-- (decoding and encoding it again would turn an empty list into an object).
local entry = string.sub(ARGV[6], 1, -2) .. ',"tenant":' .. cjson.encode(tenant)
  .. ',"queue":' .. cjson.encode(r[1] or '') .. ',"priority":' .. (tonumber(r[2]) or 0)
  .. ',"retries":' .. (tonumber(r[3]) or 0) .. ',"submitted_at":' .. (r[4] or '0') .. '}'
close(KEYS[1], KEYS[2], {KEYS[6], KEYS[7]}, id, 'FAILURE', now, ttl, ARGV[10])
local dttl = tonumber(ARGV[7])
redis.call('SET', KEYS[3], entry, 'EX', dttl)
for i = 4, 5 do
  redis.call('ZADD', KEYS[i], now, id)
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', tonumber(now) - dttl)
  redis.call('EXPIRE', KEYS[i], dttl)
end
if KEYS[8] and ARGV[8] ~= '' then write_result(KEYS[8], ARGV[8], ARGV[9]) end
return {'done', current or ''}
"""

# revoke. KEYS: record, open set, the tenant's and every tenant's index of REVOKED
# tasks[, result]. ARGV: id, now, result ttl, tenant, terminate ('1'/'0'), REVOKED result
# value, its ttl, index lifetime.
# Returns {outcome, previous state}: revoked | missing | final | running (without
# terminate) | tenant (as finish).
_REVOKE = _LUA_LIB + """
local id, now, ttl, tenant = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local refused, current = may_end(KEYS[1], nil, '', 0, tenant, '0')
if refused then return refused end
current = current or 'PENDING'
if current == 'STARTED' and ARGV[5] ~= '1' then return {'running', current} end
close(KEYS[1], KEYS[2], {KEYS[3], KEYS[4]}, id, 'REVOKED', now, ttl, ARGV[8])
if KEYS[5] then write_result(KEYS[5], ARGV[6], ARGV[7]) end
return {'revoked', current}
"""

# retry_dead: only the caller that removes the dead letter re-enqueues the task.
# KEYS: record, open set, dead letter, tenant's dead-letter index, queue list, every
# tenant's dead-letter index, the six listing indexes (``listing_keys``), the tenant's
# and every tenant's index of FAILUREs[, result].
# ARGV: id, record ttl, now, cap, tenant, the dead letter as the caller read it,
# message, index lifetime, record fields... Returns {outcome}: queued | gone (no dead letter: another
# retry won, or it expired) | changed (not the dead letter read) | cap_reached.
_RETRY_DEAD = _LUA_LIB + """
local id, ttl, now, cap, tenant = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local entry = redis.call('GET', KEYS[3])
if not entry then return {'gone'} end
if entry ~= ARGV[6] then return {'changed'} end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
if cap > 0 and redis.call('ZCARD', KEYS[2]) >= cap then return {'cap_reached'} end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[4], id)
redis.call('ZREM', KEYS[6], id)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'PENDING', unpack(ARGV, 9))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now, id)
redis.call('EXPIRE', KEYS[2], ttl)
for i = 7, 12 do index(KEYS[i], id, now, now, ARGV[8]) end
redis.call('ZREM', KEYS[13], id)
redis.call('ZREM', KEYS[14], id)
if KEYS[15] then redis.call('DEL', KEYS[15]) end
redis.call('LPUSH', KEYS[5], ARGV[7])
return {'queued'}
"""

# A request token of a tenant (routes that submit nothing). KEYS: bucket. ARGV: rate,
# burst. Returns {allowed, seconds until a token is available}.
_RATE = """
local rate, burst, bucket = tonumber(ARGV[1]), tonumber(ARGV[2]), KEYS[1]
""" + _RATE_BUCKET + """
if granted then return {1, '0'} end
return {0, tostring((1 - tokens) / rate)}
"""

# A result state written on its own (results in another Redis than the records).
# KEYS: result. ARGV: value, ttl. Never overwrites a final state.
WRITE_RESULT = _LUA_LIB + "return write_result(KEYS[1], ARGV[1], ARGV[2])\n"


# --- periodic schedules (scheduler.py) -----------------------------------------------
# A fire is a plain ``submit`` under the Idempotency-Key ``schedule {name} {tick}``: the
# submit script claims the tick with the record and the message. What follows only keeps
# each schedule's fire state and the scan lease; neither decides whether a tick fires twice.

def schedules_key() -> str:
    return f"{PREFIX}schedules"


def schedule_state_key(ident: str) -> str:
    """The fire state of the schedule ``tenant/name``."""
    return f"{PREFIX}schedule-state:{ident}"


def scheduler_lease_key() -> str:
    return f"{PREFIX}scheduler-lease"


# schedule_advance: move a schedule's ``last_tick`` from what the caller read to a later
# tick, with the counts of what it did on the way, only if nobody moved it meanwhile.
# ``fires`` (tasks this caller's submits created: each tick creates one at most) count
# either way; skips and misses only with the move, so two replicas never count one twice.
# KEYS: state. ARGV: last_tick read ('' if none), new last_tick, last task id ('' keeps
# it), fired at ('' keeps it), fires, skipped, missed. Returns 1 if moved, else 0.
_SCHEDULE_ADVANCE = """
if tonumber(ARGV[5]) > 0 then redis.call('HINCRBY', KEYS[1], 'fires', ARGV[5]) end
local held = redis.call('HGET', KEYS[1], 'last_tick') or ''
if held ~= ARGV[1] then return 0 end
if ARGV[1] ~= '' and tonumber(ARGV[2]) < tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'last_tick', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'last_task_id', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'last_fired_at', ARGV[4]) end
redis.call('HINCRBY', KEYS[1], 'skipped', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'missed', ARGV[7])
return 1
"""

# scheduler_lease: take the scan lease if free, or renew it if held by this replica.
# KEYS: lease. ARGV: holder, ttl (ms). Returns 1 if held by the caller afterwards.
_SCHEDULER_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Give the lease up (a replica that stops): only if the caller holds it. KEYS: lease.
# ARGV: holder. Returns 1 if released.
_SCHEDULER_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# --- records and outcomes --------------------------------------------------------------

@dataclass
class TaskRecord:
    """What Taskplane knows of a submitted task beyond Celery's result."""

    id: str
    tenant: str
    task: str
    queue: str
    priority: int
    submitted_at: float
    state: str = PENDING
    eta: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    retries: int = 0

    @classmethod
    def from_hash(cls, task_id: str, raw: dict[bytes, bytes]) -> TaskRecord:
        h = {k.decode(): v.decode() for k, v in raw.items()}

        def num(name: str) -> float | None:
            return float(h[name]) if h.get(name) else None

        return cls(
            id=task_id,
            tenant=h.get("tenant", ""),
            task=h.get("task", ""),
            queue=h.get("queue", ""),
            priority=int(float(h.get("priority", 0))),
            submitted_at=float(h.get("submitted_at", 0)),
            state=h.get("state") or PENDING,
            eta=num("eta"),
            started_at=num("started_at"),
            finished_at=num("finished_at"),
            retries=int(h.get("retries", 0)),
        )

    def fields(self) -> list[str]:
        """The field/value pairs a new record is written with (state is the script's)."""
        out: list[str] = []
        for k in _NEW_RECORD_FIELDS:
            v = getattr(self, k)
            if v is not None:
                out += [k, str(v)]
        return out


_NEW_RECORD_FIELDS = tuple(f.name for f in fields(TaskRecord)
                           if f.name not in ("id", "state", "started_at", "finished_at"))


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


@dataclass(frozen=True)
class Submission:
    """Outcome of :meth:`Lifecycle.submit`."""

    outcome: str  # created | replay | conflict | rate_limited | cap_reached
    task_id: str
    retry_after: float = 0.0


@dataclass(frozen=True)
class RunStart:
    """Outcome of :meth:`Lifecycle.start`: whether the run goes ahead."""

    verdict: str  # run | unknown | REVOKED | SUCCESS | FAILURE
    died: int  # earlier runs whose process died before they ended

    @property
    def runs(self) -> bool:
        return self.verdict in ("run", "unknown")


@dataclass(frozen=True)
class Transition:
    """Outcome of finish, fail, revoke and retry_dead."""

    outcome: str  # done / revoked / queued | missing | final | running | gone | cap_reached ...
    previous: str = ""  # the state the task had (or, for ``final``, still has)


#: A Celery result write as (key, encoded value, ttl seconds; 0 keeps it forever).
ResultWrite = tuple[str, str, int]

class OutcomeUnknown(Exception):
    """Redis did not answer a state change in time: it may or may not have happened.

    Raised instead of the connection error so that no caller reports "nothing was
    changed" for a write that may have been applied.
    """

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"Redis did not confirm the change ({type(cause).__name__})")
        self.cause = cause
        self.task_id = ""  # set by callers that know which task it concerns


def never_sent(exc: BaseException) -> bool:
    """True when ``exc`` was raised while connecting, before a command was sent.

    redis-py raises ``ConnectionError("Error N connecting to host:port. …")`` and
    ``TimeoutError("Timeout connecting to server")`` from ``Connection.connect``; every
    other connection error may come after the command reached Redis. A test pins these
    messages (``tests/lifecycle/test_transitions.py``).
    """
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError) and (
        "connecting to" in str(exc))


class PoisonedTask(Exception):
    """The task's process died under it ``MAX_DELIVERIES`` times; it is not run again."""


def dead_letter(task_id: str, task: str, exc: BaseException, args: Any, kwargs: Any,
                retry_for: tuple[type[BaseException], ...]) -> dict[str, Any]:
    """What ``fail`` files for a task that failed for good, and why it did: poisoned, its
    declared retries exhausted, or an error it does not retry."""
    if isinstance(exc, PoisonedTask):
        reason = "poisoned"
    elif retry_for and isinstance(exc, retry_for):
        reason = "retries exhausted"
    else:
        reason = "failed"
    return {"id": task_id, "task": task, "args": list(args or ()), "kwargs": dict(kwargs or {}),
            "error": {"type": type(exc).__name__, "message": str(exc)[:2000]},
            "reason": reason, "failed_at": time.time()}


def fingerprint(body: Any) -> str:
    """Stable hash of a request body, so key reuse with a different body is detected."""
    # ensure_ascii: a lone surrogate (valid JSON, not encodable UTF-8) hashes too
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


class Lifecycle:
    """The transitions of every task, against one Redis. Cheap to create; holds one pool.

    ``result_key(id)`` names Celery's result key; ``results_here`` says whether results
    live in this Redis, so transitions write them in the same step (else the result
    backend writes them on its own, and only the record moves here).
    """

    def __init__(self, client: redis.Redis, *, record_ttl: int, result_ttl: int,
                 idempotency_ttl: int, dead_letter_ttl: int,
                 result_key: Callable[[str], str], results_here: bool,
                 max_countdown: int = 0) -> None:
        self.client = client
        #: How long a listing index keeps an entry: no record outlives it (submission,
        #: the longest countdown, then the result's lifetime once it ends).
        self.keep = record_ttl + max_countdown + result_ttl
        self.record_ttl = record_ttl
        self.result_ttl = result_ttl
        self.idempotency_ttl = idempotency_ttl
        self.dead_letter_ttl = dead_letter_ttl
        self.result_key = result_key
        self.results_here = results_here
        register = client.register_script
        self._submit, self._start, self._write = register(_SUBMIT), register(_START), register(_WRITE)
        self._finish, self._fail = register(_FINISH), register(_FAIL)
        self._revoke, self._retry_dead = register(_REVOKE), register(_RETRY_DEAD)
        self._rate = register(_RATE)

    # --- submit -------------------------------------------------------------------------

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
        ikey, fp = "", ""
        if idempotency is not None:
            ikey, fp = idempotency_key(record.tenant, idempotency[0]), idempotency[1]
        held = ""  # the task the key names, as far as this call knows: learnt from 'stale'
        for _ in range(5):
            keys = [record_key(record.id), open_key(record.tenant), rate_key(record.tenant),
                    ikey or record_key(record.id), push[0],
                    record_key(held) if held else record_key(record.id),
                    *listing_keys(record.tenant, record.task, record.queue)]
            args = [record.id, ttl, now, cap, rate, burst, fp, self.idempotency_ttl, held,
                    push[1], self.keep, *record.fields()]
            outcome, task_id, wait = self._call(self._submit, keys, args)
            outcome = outcome.decode()
            if outcome != "stale":
                return Submission(outcome, task_id.decode(), float(wait))
            held = task_id.decode()
        raise RuntimeError("the Idempotency-Key kept changing under this request")

    def take_token(self, tenant: str, rate: float, burst: int) -> float:
        """Spend one of the tenant's request tokens (routes that submit nothing); 0.0 if
        granted, else seconds until one frees up."""
        allowed, wait = self._call(self._rate, [rate_key(tenant)], [rate, burst])
        return 0.0 if int(allowed) else float(wait)

    # --- a run --------------------------------------------------------------------------

    def start(self, task_id: str, retries: int, started: ResultWrite | None = None,
              adopt: TaskRecord | None = None) -> RunStart:
        """A worker is about to run the task: refuse if it is revoked or finished, else
        mark it STARTED (and store ``started`` when results live here) and count the run.

        ``adopt``: the record to create if there is none, for a task sent around the API
        (a stock Celery client, ``celery call``): it then shows up for the operator, its
        failure is a dead letter, and nothing runs unaccounted for.
        """
        keys = [record_key(task_id)]
        if adopt is not None:
            keys += listing_keys(adopt.tenant, adopt.task, adopt.queue)
        else:  # unused by the script: any key names will do
            keys += [record_key(task_id)] * 6
        args: list[Any] = [time.time(), retries, "", 0]
        if started is not None and self.results_here:
            keys.append(started[0])
            args[2:4] = [started[1], started[2]]
        if adopt is not None:
            args += [self.record_ttl, self.keep, task_id, *adopt.fields()]
        else:
            args += [0, self.keep, task_id]
        verdict, died = self._call(self._start, keys, args)
        return RunStart(verdict.decode(), int(died))

    def write(self, task_id: str, result: ResultWrite, record_fields: Sequence[str] = ()
              ) -> bool:
        """Store a result state that does not end the task (PROGRESS, RETRY, STARTED),
        unless the task already ended; ``record_fields`` are set on the record with it."""
        keys = [result[0]]
        if self.results_here:
            keys.append(record_key(task_id))
        return bool(self._call(self._write, keys, [result[1], result[2], *record_fields]))

    # --- ends ---------------------------------------------------------------------------

    def finish(self, task_id: str, state: str, *, tenant: str = "", run_ended: bool = False,
               result: ResultWrite | None = None) -> Transition:
        """End the task in ``state`` (SUCCESS, REVOKED…) unless it already ended: record,
        result (when it lives here) and tenant slot together. ``state`` '' only counts the
        run as ended. ``tenant`` is a hint that saves a round trip when right."""
        ended = state or SUCCESS  # '' ends nothing: any index key will do

        def call(tenant: str) -> list[Any]:
            keys, value, ttl = self._with_result(
                [record_key(task_id), open_key(tenant), ended_index_key(tenant, ended),
                 ended_index_key(None, ended)], result)
            return self._call(self._finish, keys, [task_id, time.time(), self.result_ttl, state,
                                                   tenant, "1" if run_ended else "0", value, ttl,
                                                   self.keep])
        return self._with_tenant(call, tenant)

    def fail(self, task_id: str, letter: dict[str, Any], *, tenant: str = "",
             run_ended: bool = False, result: ResultWrite | None = None) -> Transition:
        """End the task as FAILURE (storing ``result`` when results live here) and file
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

        def call(tenant: str) -> list[Any]:
            keys, value, ttl = self._with_result(
                [record_key(task_id), open_key(tenant), dead_key(task_id), dead_index_key(tenant),
                 dead_index_key(None), ended_index_key(tenant, FAILURE),
                 ended_index_key(None, FAILURE)], result)
            return self._call(self._fail, keys, [task_id, time.time(), self.result_ttl, tenant,
                                                 "1" if run_ended else "0", payload,
                                                 self.dead_letter_ttl, value, ttl, self.keep])
        return self._with_tenant(call, tenant)

    def revoke(self, task_id: str, tenant: str, *, terminate: bool,
               result: ResultWrite | None = None) -> Transition:
        """Revoke the task unless it has ended: a task not yet started never runs; a
        running one only with ``terminate`` (the caller then broadcasts the kill)."""
        keys, value, ttl = self._with_result(
            [record_key(task_id), open_key(tenant), ended_index_key(tenant, REVOKED),
             ended_index_key(None, REVOKED)], result)
        outcome, previous = self._call(self._revoke, keys, [
            task_id, time.time(), self.result_ttl, tenant, "1" if terminate else "0", value, ttl,
            self.keep])
        return Transition(outcome.decode(), previous.decode())

    def _with_result(self, keys: list[str], result: ResultWrite | None
                     ) -> tuple[list[str], str, int]:
        """``keys`` with the result's key appended, and the result's value and ttl, when
        there is a result to write in this Redis; else ``keys`` and no value."""
        if result is None or not self.results_here:
            return keys, "", 0
        return [*keys, result[0]], result[1], result[2]

    def _with_tenant(self, call: Callable[[str], list[Any]], tenant: str) -> Transition:
        for _ in range(2):
            outcome, detail = call(tenant)
            if outcome != b"tenant":
                return Transition(outcome.decode(), detail.decode())
            tenant = detail.decode()
        return Transition("missing")

    # --- dead letters -------------------------------------------------------------------

    def dead_letter(self, tenant: str | None, task_id: str) -> dict[str, Any] | None:
        """The dead letter, decoded, if it is ``tenant``'s (``None``: whoever's)."""
        found = self.dead_letter_raw(tenant, task_id)
        return found[1] if found is not None else None

    def dead_letter_raw(self, tenant: str | None, task_id: str
                        ) -> tuple[str, dict[str, Any]] | None:
        """The dead letter as stored (for ``retry_dead``) and decoded, if it is ``tenant``'s
        (``None``: whoever's, for operators)."""
        raw = self.client.get(dead_key(task_id))
        if raw is None:
            return None
        entry: dict[str, Any] = json.loads(raw)
        return (raw.decode(), entry) if tenant in (None, entry.get("tenant")) else None

    def dead_letters(self, tenant: str | None, limit: int, offset: int
                     ) -> tuple[int, list[dict[str, Any]]]:
        """A tenant's dead letters, newest first, or every tenant's (``tenant`` None)."""
        index = dead_index_key(tenant)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zrevrange(index, offset, offset + limit - 1)
            pipe.zcard(index)
            raw_ids, total = pipe.execute()
        ids = [i.decode() for i in raw_ids]
        if not ids:
            return total, []
        raws = self.client.mget([dead_key(i) for i in ids])
        entries, gone = [], []
        for task_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                gone.append(task_id)
            else:
                entries.append(json.loads(raw))
        if gone:  # expired entries: drop them from the index too
            self.client.zrem(index, *gone)
            if tenant is not None:
                self.client.zrem(dead_index_key(None), *gone)
        return total - len(gone), entries

    def retry_dead(self, record: TaskRecord, read: str, push: tuple[str, str], *, cap: int = 0
                   ) -> Transition:
        """Enqueue a dead letter again under its id; ``read`` is the dead letter as the
        caller read it. Of concurrent retries exactly one finds it and wins."""
        now = time.time()
        keys = [record_key(record.id), open_key(record.tenant), dead_key(record.id),
                dead_index_key(record.tenant), push[0], dead_index_key(None),
                *listing_keys(record.tenant, record.task, record.queue),
                ended_index_key(record.tenant, FAILURE), ended_index_key(None, FAILURE)]
        if self.results_here:
            keys.append(self.result_key(record.id))
        (outcome,) = self._call(self._retry_dead, keys, [
            record.id, self.record_ttl, now, cap, record.tenant, read, push[1], self.keep,
            *record.fields()])
        return Transition(outcome.decode())

    # --- reads --------------------------------------------------------------------------

    def read(self, task_id: str, with_result: bool) -> tuple[TaskRecord | None, bytes | None]:
        """The record and, when ``with_result`` (results live here), the raw result: one
        round trip."""
        if not with_result:
            raw = self.client.hgetall(record_key(task_id))
            return (TaskRecord.from_hash(task_id, raw) if raw else None), None
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(record_key(task_id))
            pipe.get(self.result_key(task_id))
            raw, meta = pipe.execute()
        return (TaskRecord.from_hash(task_id, raw) if raw else None), meta

    def list_tasks(self, query: TaskQuery, limit: int, cursor: Cursor | None = None,
                   max_examined: int = 1000
                   ) -> tuple[list[tuple[TaskRecord, bytes | None]], Cursor | None]:
        """A page of tasks matching ``query``, newest submission first, with their raw
        results (when results live here), and the cursor of the next page (None: the end).

        Walks the one index that holds every possible match (:meth:`_index_for`: the tasks
        that ended in a final state, the tenant's unfinished tasks, one task type's, one
        queue's, or all), from ``cursor`` down, reading records a batch per round trip. With
        one filter (and the time window) a page costs O(log n + page); a second filter
        reads at most ``max_examined`` entries per page, so a page may hold fewer than
        ``limit`` tasks, and ``next`` says where to go on. Entries whose record has
        expired are dropped from the index as they are met.
        """
        index = self._index_for(query)
        low = "-inf" if query.after is None else f"({query.after!r}"
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
            entries = self.client.zrevrangebyscore(index, high, low, start=0, num=batch,
                                                   withscores=True)
            if skip_ties is not None:  # entries at the cursor's score not yet passed
                tie = skip_ties
                entries = [(m, sc) for m, sc in entries
                           if not (sc == tie.score and m.decode() >= tie.task_id)]
            if not entries:
                return found, None
            with self.client.pipeline(transaction=False) as pipe:
                for member, _ in entries:
                    pipe.hgetall(record_key(member.decode()))
                    if self.results_here:
                        pipe.get(self.result_key(member.decode()))
                replies = pipe.execute()
            step = 2 if self.results_here else 1
            gone = []
            for n, (member, score) in enumerate(entries):
                task_id = member.decode()
                raw, meta = replies[n * step], replies[n * step + 1] if self.results_here else None
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
                self.client.zrem(index, *gone)
            if last is not None:
                high, skip_ties = repr(last.score), last
        return found, last

    @staticmethod
    def _index_for(query: TaskQuery) -> str:
        """The smallest index that holds every task ``query`` can match."""
        if query.state in FINAL_STATES:
            return ended_index_key(query.tenant, query.state)
        if query.state is not None and query.tenant is not None:
            return open_key(query.tenant)  # unfinished tasks only, by submission time
        if query.task is not None:
            return tasks_index_key(query.tenant, "task", query.task)
        if query.queue is not None:
            return tasks_index_key(query.tenant, "queue", query.queue)
        return tasks_index_key(query.tenant)

    def runs_over(self, task_ids: Sequence[str]) -> bool:
        """Whether none of these tasks is running any more (each ended, is waiting for a
        retry, or has no record): one round trip."""
        if not task_ids:
            return True
        with self.client.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hget(record_key(task_id), "state")
            states = pipe.execute()
        return all(state != STARTED.encode() for state in states)

    # --- plumbing -----------------------------------------------------------------------

    @staticmethod
    def _call(script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return script(keys=keys, args=args)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if never_sent(exc):
                raise
            raise OutcomeUnknown(exc) from exc

    # --- periodic schedules --------------------------------------------------------------

    @functools.cached_property
    def _schedule_scripts(self) -> tuple[Any, Any, Any]:
        register = self.client.register_script
        return (register(_SCHEDULE_ADVANCE), register(_SCHEDULER_LEASE),
                register(_SCHEDULER_RELEASE))

    def schedule_state(self, ident: str) -> dict[str, str]:
        """A schedule's fire state (``schedule_state_key``), decoded; {} before its first."""
        raw = self.client.hgetall(schedule_state_key(ident))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def schedule_states(self, idents: Sequence[str]) -> list[dict[str, str]]:
        """The fire states of several schedules: one round trip."""
        with self.client.pipeline(transaction=False) as pipe:
            for ident in idents:
                pipe.hgetall(schedule_state_key(ident))
            replies = pipe.execute()
        return [{k.decode(): v.decode() for k, v in raw.items()} for raw in replies]

    def schedule_advance(self, ident: str, read: str, tick: float, *, task_id: str = "",
                         fired_at: float | None = None, fires: int = 0, skipped: int = 0,
                         missed: int = 0) -> bool:
        """Move the schedule's ``last_tick`` from ``read`` (as the caller read it) to
        ``tick``, counting what was done; False if another replica moved it first."""
        script = self._schedule_scripts[0]
        return bool(self._call(script, [schedule_state_key(ident)], [
            read, repr(tick), task_id, "" if fired_at is None else repr(fired_at), fires,
            skipped, missed]))

    def scheduler_lease(self, holder: str, ttl: float) -> bool:
        """Take or renew the scan lease for ``ttl`` seconds; True if ``holder`` has it."""
        script = self._schedule_scripts[1]
        return bool(self._call(script, [scheduler_lease_key()], [holder, int(ttl * 1000)]))

    def scheduler_release(self, holder: str) -> None:
        self._call(self._schedule_scripts[2], [scheduler_lease_key()], [holder])


def tenant_hint(request: Any) -> str:
    """The tenant a Celery request's message names (:data:`SYSTEM_TENANT` if none: a task
    sent around the API, whose record the worker created under that tenant)."""
    value = getattr(request, TENANT_HEADER, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(TENANT_HEADER)
    return str(value or SYSTEM_TENANT)


def result_state(meta: dict[str, Any] | None) -> str | None:
    """The state a Celery result holds, if any."""
    return str(meta["status"]) if meta and meta.get("status") else None


def visible_state(record: TaskRecord, meta: dict[str, Any] | None) -> str:
    """The state a client sees: the record's when final (the record is the authority
    on endings), else the result's finer one (PROGRESS, RETRY), else the record's."""
    if record.state in FINAL_STATES:
        return record.state
    return result_state(meta) or record.state
