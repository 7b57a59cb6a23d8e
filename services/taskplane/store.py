"""Taskplane's own Redis keys: task records, idempotency keys and dead letters.

Celery's keys (queue lists, unacked deliveries, results) belong to the broker
and result backend and are read only through ``broker.py``. The keys here are
Taskplane's, all under one prefix:

============================================  ======  ==============================================
key                                           type    holds
============================================  ======  ==============================================
``taskplane:task:{id}``                       hash    the task record: tenant, task, queue, priority,
                                                      submitted_at, started_at, finished_at, retries,
                                                      revoked. Its existence is what makes an id
                                                      "submitted" (else 404). TTL ``TASK_RECORD_TTL``,
                                                      then ``RESULT_EXPIRES`` once finished.
``taskplane:idem:{tenant}:{sha256(key)}``     string  JSON ``{fp, id, done}`` for an Idempotency-Key;
                                                      TTL ``IDEMPOTENCY_TTL``.
``taskplane:dead:{id}``                       string  JSON dead letter (arguments, error, reason);
                                                      TTL ``DEAD_LETTER_TTL``.
``taskplane:dead-letters:{tenant}``           zset    dead-letter ids by time of death.
``taskplane:open:{tenant}``                   zset    ids of the tenant's unfinished tasks by
                                                      submission time (the per-tenant cap).
``taskplane:rate:{tenant}``                   hash    token bucket of the tenant's request rate.
============================================  ======  ==============================================
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, fields
from typing import Any

import redis

from . import results

PREFIX = "taskplane:"

# A run starts: stamp the record and count the run (runs started minus runs ended is the
# number of runs whose process died under them), and, given a second key, store the
# run's STARTED state unless the task was revoked. A record is stamped only if it
# exists: a task sent around the API has none, and an HSET would create one without a
# TTL. KEYS: record[, result]. ARGV: now, retries[, STARTED value, its TTL].
# Returns {exists, revoked, died}.
_START = results.WRITE_STATE_LUA + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  if KEYS[2] then write_state(KEYS[2], ARGV[3], ARGV[4]) end
  return {0, 0, 0}
end
redis.call('HSET', KEYS[1], 'started_at', ARGV[1], 'retries', ARGV[2])
redis.call('HDEL', KEYS[1], 'finished_at')
local started = redis.call('HINCRBY', KEYS[1], 'runs_started', 1)
local ended = tonumber(redis.call('HGET', KEYS[1], 'runs_ended') or '0')
local revoked = redis.call('HGET', KEYS[1], 'revoked') == '1' and 1 or 0
if KEYS[2] and revoked == 0 then write_state(KEYS[2], ARGV[3], ARGV[4]) end
return {1, revoked, started - 1 - ended}
"""

# A task's run ended, or the task itself did. ARGV[5] counts the run as ended in its
# process ('1': success, failure, retry; '0': the task ended without a run ending here,
# e.g. revoked, or failed for good in the worker's main process); ARGV[6] '1' when the
# task is finished for good: stamp it, keep it for the result TTL, release its place in
# the tenant's open set. A missing record (a task sent around the API) is left alone.
_END = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[5] == '1' then redis.call('HINCRBY', KEYS[1], 'runs_ended', 1) end
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  local tenant = redis.call('HGET', KEYS[1], 'tenant')
  if tenant then redis.call('ZREM', ARGV[3] .. tenant, ARGV[4]) end
end
return 1
"""

# Create a record unless the tenant already has ``cap`` unfinished tasks (0: no cap),
# and, given a third key, push the task's message onto that queue list in the same
# step: a record never exists without its message, nor a message without its record.
# Entries older than the record TTL are pruned first: their records have expired.
# KEYS: record, open set[, queue list]. ARGV: id, ttl, now, cap, message (or ''), then
# the record's field/value pairs.
_CREATE = """
local id, ttl, now, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
if cap > 0 and redis.call('ZCARD', KEYS[2]) >= cap then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now, id)
redis.call('EXPIRE', KEYS[2], ttl)
if KEYS[3] then redis.call('LPUSH', KEYS[3], ARGV[5]) end
return 1
"""

# A token bucket per tenant: ``rate`` tokens a second up to ``burst``; Redis' clock.
# Returns {allowed, seconds until a token is available}.
_RATE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
if allowed == 1 then return {1, '0'} end
return {0, tostring((1 - tokens) / rate)}
"""

_SET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


@dataclass
class TaskRecord:
    """What Taskplane knows of a submitted task beyond Celery's result."""

    id: str
    tenant: str
    task: str
    queue: str
    priority: int
    submitted_at: float
    eta: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    retries: int = 0
    revoked: bool = False

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
            eta=num("eta"),
            started_at=num("started_at"),
            finished_at=num("finished_at"),
            retries=int(h.get("retries", 0)),
            revoked=h.get("revoked") == "1",
        )

    def to_hash(self) -> dict[str, str]:
        out = {}
        for k in _RECORD_FIELDS:
            v = getattr(self, k)
            if v is None:
                continue
            out[k] = ("1" if v else "0") if isinstance(v, bool) else str(v)
        return out


#: The fields a record hash holds (all but the id, which is in the key).
_RECORD_FIELDS = tuple(f.name for f in fields(TaskRecord) if f.name != "id")


@dataclass(frozen=True)
class RunStart:
    """What the record says as a run begins."""

    known: bool  # the task was submitted through the API
    revoked: bool
    died: int  # earlier runs whose process died before they ended


@dataclass(frozen=True)
class IdempotencyClaim:
    """Outcome of claiming an Idempotency-Key: ours to use, a replay, or a conflict."""

    task_id: str
    claimed: bool  # this request owns the key and must enqueue
    conflict: bool = False  # the key was used with a different body
    in_progress: bool = False  # the first request with this key has not finished enqueuing


def fingerprint(body: Any) -> str:
    """Stable hash of a request body, so key reuse with a different body is detected."""
    # ensure_ascii: a lone surrogate (valid JSON, not encodable UTF-8) hashes too
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


class Store:
    """Reads and writes Taskplane's keys. Cheap to create; holds one connection pool."""

    def __init__(self, client: redis.Redis, *, record_ttl: int, result_ttl: int,
                 idempotency_ttl: int, dead_letter_ttl: int) -> None:
        self.client = client
        self.record_ttl = record_ttl
        self.result_ttl = result_ttl
        self.idempotency_ttl = idempotency_ttl
        self.dead_letter_ttl = dead_letter_ttl
        self._start = client.register_script(_START)
        self._end = client.register_script(_END)
        self._set_if_exists = client.register_script(_SET_IF_EXISTS)
        self._create = client.register_script(_CREATE)
        self._rate = client.register_script(_RATE)

    # --- keys ---------------------------------------------------------------------------

    @staticmethod
    def record_key(task_id: str) -> str:
        return f"{PREFIX}task:{task_id}"

    @staticmethod
    def idempotency_key(tenant: str, key: str) -> str:
        return f"{PREFIX}idem:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"

    @staticmethod
    def dead_key(task_id: str) -> str:
        return f"{PREFIX}dead:{task_id}"

    @staticmethod
    def dead_index_key(tenant: str) -> str:
        return f"{PREFIX}dead-letters:{tenant}"

    # --- records ------------------------------------------------------------------------

    @staticmethod
    def open_key(tenant: str) -> str:
        return f"{PREFIX}open:{tenant}"

    @staticmethod
    def rate_key(tenant: str) -> str:
        return f"{PREFIX}rate:{tenant}"

    def create(self, record: TaskRecord, cap: int = 0,
               push: tuple[str, str] | None = None) -> bool:
        """Write the record, and LPUSH ``push = (list key, message)`` with it atomically;
        False (nothing written) if the tenant has ``cap`` open tasks."""
        now = time.time()
        ttl = self.record_ttl + int(max(0.0, (record.eta or 0) - now))
        pairs = [x for pair in record.to_hash().items() for x in pair]
        keys = [self.record_key(record.id), self.open_key(record.tenant)]
        message = ""
        if push is not None:
            keys.append(push[0])
            message = push[1]
        created = self._create(keys=keys, args=[record.id, ttl, now, cap, message, *pairs])
        return bool(created)

    def open_count(self, tenant: str) -> int:
        return int(self.client.zcard(self.open_key(tenant)))

    def take_token(self, tenant: str, rate: float, burst: int) -> float:
        """Spend one of the tenant's request tokens; 0.0 if granted, else seconds to wait."""
        allowed, wait = self._rate(keys=[self.rate_key(tenant)], args=[rate, burst])
        return 0.0 if int(allowed) else float(wait)

    def get(self, task_id: str) -> TaskRecord | None:
        raw = self.client.hgetall(self.record_key(task_id))
        return TaskRecord.from_hash(task_id, raw) if raw else None

    def start(self, task_id: str, retries: int,
              state: tuple[str, str, int] | None = None) -> RunStart:
        """Stamp ``started_at`` and count the run; say if it was revoked or keeps dying.

        ``state``: the run's STARTED result as ``(key, value, ttl)``, stored in the same
        call unless the task was revoked (``ResultBackend.started_state``).
        """
        keys, args = [self.record_key(task_id)], [time.time(), retries]
        if state is not None:
            keys.append(state[0])
            args += [state[1], state[2]]
        exists, revoked, died = self._start(keys=keys, args=args)
        return RunStart(known=bool(exists), revoked=bool(revoked), died=int(died))

    def end_run(self, task_id: str, finished: bool) -> None:
        """A run ended without its process dying; ``finished``: the task is done for good."""
        self._end_task(task_id, run_ended=True, finished=finished)

    def finish(self, task_id: str) -> None:
        """The task is done for good, whether or not a run ended here (revoked, failed)."""
        self._end_task(task_id, run_ended=False, finished=True)

    def _end_task(self, task_id: str, run_ended: bool, finished: bool) -> None:
        self._end(keys=[self.record_key(task_id)],
                  args=[time.time(), self.result_ttl, f"{PREFIX}open:", task_id,
                        "1" if run_ended else "0", "1" if finished else "0"])

    def set_retries(self, task_id: str, retries: int) -> None:
        self._set_if_exists(keys=[self.record_key(task_id)], args=["retries", retries])

    def mark_revoked(self, task_id: str) -> None:
        self._set_if_exists(keys=[self.record_key(task_id)],
                            args=["revoked", "1", "finished_at", time.time()])

    # --- idempotency --------------------------------------------------------------------

    def claim_idempotency(self, tenant: str, key: str, fp: str, task_id: str) -> IdempotencyClaim:
        ikey = self.idempotency_key(tenant, key)
        value = json.dumps({"fp": fp, "id": task_id, "done": False})
        if self.client.set(ikey, value, nx=True, ex=self.idempotency_ttl):
            return IdempotencyClaim(task_id=task_id, claimed=True)
        raw = self.client.get(ikey)
        if raw is None:  # expired between the two calls: claim again
            return self.claim_idempotency(tenant, key, fp, task_id)
        held = json.loads(raw)
        if held["fp"] != fp:
            return IdempotencyClaim(task_id=held["id"], claimed=False, conflict=True)
        return IdempotencyClaim(task_id=held["id"], claimed=False, in_progress=not held["done"])

    def confirm_idempotency(self, tenant: str, key: str, fp: str, task_id: str) -> None:
        value = json.dumps({"fp": fp, "id": task_id, "done": True})
        self.client.set(self.idempotency_key(tenant, key), value, xx=True, keepttl=True)

    def release_idempotency(self, tenant: str, key: str) -> None:
        self.client.delete(self.idempotency_key(tenant, key))

    # --- dead letters -------------------------------------------------------------------

    def dead_letter(self, task_id: str, task: str, args: Any, kwargs: Any,
                    error: dict[str, str], reason: str) -> bool:
        """File a task that failed for good; False if it has no record (sent around the API)."""
        record = self.get(task_id)
        if record is None:
            return False
        now = time.time()
        entry = {
            "id": task_id, "task": task, "tenant": record.tenant, "queue": record.queue,
            "priority": record.priority, "args": list(args or ()), "kwargs": dict(kwargs or {}),
            "error": error, "reason": reason, "retries": record.retries,
            "submitted_at": record.submitted_at, "failed_at": now,
        }
        try:
            payload = json.dumps(entry)
        except (TypeError, ValueError):
            entry["args"], entry["kwargs"] = [], {}
            entry["reason"] = reason + " (arguments not JSON-serialisable, not kept)"
            payload = json.dumps(entry)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self.dead_key(task_id), payload, ex=self.dead_letter_ttl)
            pipe.zadd(self.dead_index_key(record.tenant), {task_id: now})
            pipe.zremrangebyscore(self.dead_index_key(record.tenant), 0,
                                  now - self.dead_letter_ttl)
            pipe.expire(self.dead_index_key(record.tenant), self.dead_letter_ttl)
            pipe.execute()
        return True

    def dead_letters(self, tenant: str, limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
        index = self.dead_index_key(tenant)
        ids = [i.decode() for i in self.client.zrevrange(index, offset, offset + limit - 1)]
        total = self.client.zcard(index)
        if not ids:
            return total, []
        raws = self.client.mget([self.dead_key(i) for i in ids])
        entries, gone = [], []
        for task_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                gone.append(task_id)
            else:
                entries.append(json.loads(raw))
        if gone:  # expired entries: drop them from the index too
            self.client.zrem(index, *gone)
        return total - len(gone), entries

    def get_dead_letter(self, tenant: str, task_id: str) -> dict[str, Any] | None:
        raw = self.client.get(self.dead_key(task_id))
        if raw is None:
            return None
        entry = json.loads(raw)
        return entry if entry.get("tenant") == tenant else None

    def remove_dead_letter(self, tenant: str, task_id: str) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.dead_key(task_id))
            pipe.zrem(self.dead_index_key(tenant), task_id)
            pipe.execute()
