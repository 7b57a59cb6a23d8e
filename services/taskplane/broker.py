"""How kombu's Redis transport lays out a queue, and the one place that reads it.

Routes, metrics and the exporter ask this module; nothing else knows a broker
key. A second broker (Sentinel, RabbitMQ) is a second module with the same
``QueueStats``-returning surface.

Layout (``kombu/transport/redis.py``, with the transport options set below):

==================================  ======  ==================================================
key                                 type    holds
==================================  ======  ==================================================
``{queue}``                         list    waiting messages of transport priority 0 (served
                                            first); producers LPUSH, consumers BRPOP, so the
                                            oldest message is at index -1
``{queue}:{n}`` for n in 1..9       list    waiting messages of transport priority n
``unacked``                         hash    delivery tag → JSON ``[message, exchange,
                                            routing_key]`` for every message a worker holds
                                            and has not acknowledged (all queues together)
                                            (countdown/ETA tasks wait here, unacknowledged,
                                            until due)
``unacked_index``                   zset    delivery tag → time of delivery, renewed by
                                            the holding worker every LEASE_INTERVAL (its
                                            lease); entries older than the visibility
                                            timeout are restored to their queue
``unacked_mutex``                   string  lock around that restore
==================================  ======  ==================================================

Priorities: Taskplane's API takes 0-9 with 9 the most urgent (as AMQP does). The
Redis transport serves its *lowest* number first, so the API value p is sent as
transport priority ``9 - p``; this module is the only place that flips it.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from kombu.serialization import dumps as serialize
from kombu.utils.json import dumps as json_dumps

#: One list per priority level, so every API priority is distinct on the broker.
PRIORITY_STEPS: tuple[int, ...] = tuple(range(10))
#: Separator between queue name and priority step; queue names cannot contain it.
SEP = ":"
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
UNACKED_MUTEX_KEY = "unacked_mutex"
#: API priority range and the priority of a task submitted without one.
MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = 0, 9, 5
#: Message header carrying the epoch time a task was enqueued (oldest-age, queue wait).
ENQUEUED_AT_HEADER = "taskplane_enqueued_at"

# One round trip for every queue's figures: LLEN of each priority list, the enqueue
# time of the oldest message at the tail of each, and the routing key and ETA of
# every unacknowledged delivery (a worker holds countdown/ETA tasks unacknowledged
# until due: those are "scheduled", the rest "reserved").
# Returns {name, waiting, reserved, oldest_enqueued_at, scheduled} per queue.
_QUEUE_STATS = """
local sep, unacked, nsteps = ARGV[1], ARGV[2], tonumber(ARGV[3])
local header, now = ARGV[4], ARGV[5]
local out, index = {}, {}
for q = 6 + nsteps, #ARGV do
  local name, waiting, oldest = ARGV[q], 0, ''
  for s = 1, nsteps do
    local pri = ARGV[5 + s]
    local key = name
    if pri ~= '0' then key = name .. sep .. pri end
    local n = redis.call('LLEN', key)
    if n > 0 then
      waiting = waiting + n
      local ok, msg = pcall(cjson.decode, redis.call('LINDEX', key, -1))
      if ok and type(msg) == 'table' and type(msg['headers']) == 'table' then
        local t = tonumber(msg['headers'][header])
        if t and (oldest == '' or t < tonumber(oldest)) then oldest = string.format('%.6f', t) end
      end
    end
  end
  out[#out + 1] = {name, waiting, 0, oldest, 0}
  index[name] = #out
end
for _, raw in ipairs(redis.call('HVALS', unacked)) do
  local ok, entry = pcall(cjson.decode, raw)
  if ok and type(entry) == 'table' then
    local i = index[entry[3]]
    if i then
      local msg, eta = entry[1], nil
      if type(msg) == 'table' and type(msg['headers']) == 'table' then eta = msg['headers']['eta'] end
      -- ISO-8601 UTC timestamps of one format compare correctly as strings
      if type(eta) == 'string' and eta > now then
        out[i][5] = out[i][5] + 1
      else
        out[i][3] = out[i][3] + 1
      end
    end
  end
end
return out
"""


@dataclass(frozen=True)
class QueueStats:
    """A queue as the broker holds it right now."""

    name: str
    waiting: int  # in the queue's lists, all priorities
    reserved: int  # delivered to a worker, due, not yet acknowledged (running or prefetched)
    oldest_enqueued_at: float | None  # epoch seconds of the oldest waiting message
    scheduled: int = 0  # held by a worker until a future countdown/ETA

    def oldest_age(self, now: float) -> float:
        return max(0.0, now - self.oldest_enqueued_at) if self.oldest_enqueued_at else 0.0


def transport_options(visibility_timeout: int, restore_interval: int) -> dict[str, Any]:
    """``broker_transport_options`` that give the layout documented above.

    Every worker sweeps ``unacked_index`` each ``restore_interval`` seconds (throttle 1:
    kombu's default sweeps only every tenth tick) and hands back messages whose lease is
    older than ``visibility_timeout``. The sweep's lock expires quickly, so a worker that
    dies holding it delays the next sweep by seconds, not minutes.
    """
    return {
        "priority_steps": list(PRIORITY_STEPS),
        "sep": SEP,
        "queue_order_strategy": "priority",
        "visibility_timeout": visibility_timeout,
        "unacked_restore_interval": restore_interval,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": max(10, 3 * restore_interval),
    }


def transport_priority(api_priority: int) -> int:
    """API priority (9 most urgent) → Redis transport priority (0 served first)."""
    return MAX_PRIORITY - api_priority


def queue_key(queue: str, step: int) -> str:
    """The list holding ``queue``'s waiting messages of transport priority ``step``."""
    return queue if step == 0 else f"{queue}{SEP}{step}"


def queue_keys(queue: str) -> list[str]:
    """Every Redis list that holds waiting messages of ``queue``."""
    return [queue_key(queue, step) for step in PRIORITY_STEPS]


#: kombu's Redis channel base64-encodes message bodies (``Channel.body_encoding``).
BODY_ENCODING = "base64"
#: AMQP's "persistent" delivery mode, which kombu's producer sets on every task message.
PERSISTENT = 2


def encode_task(message: tuple[dict[str, Any], dict[str, Any], Any, Any], queue: str,
                api_priority: int, enqueued_at: float) -> tuple[str, str]:
    """The Redis list and the raw entry kombu would LPUSH for a Celery task message.

    ``message`` is what ``app.amqp.as_task_v2`` builds (headers, properties, body). The
    envelope is what ``Producer.publish`` → ``Channel.prepare_message`` →
    ``basic_publish`` write for the anonymous exchange (routing key = queue name, which
    is how Celery sends to a direct queue): the API can then store a task's record and
    its message in one atomic script instead of a record write plus a kombu publish.
    The integration suite compares this entry with what ``send_task`` writes.
    """
    headers, properties, body, _sent_event = message
    content_type, content_encoding, data = serialize(body, serializer="json")
    step = transport_priority(api_priority)
    envelope = {
        "body": base64.b64encode(data.encode() if isinstance(data, str) else data).decode(),
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": {**headers, ENQUEUED_AT_HEADER: enqueued_at},
        "properties": {
            **properties,
            "delivery_mode": PERSISTENT,
            "priority": step,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "body_encoding": BODY_ENCODING,
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return queue_key(queue, step), json_dumps(envelope)


class RedisBroker:
    """Reads queue figures from a kombu Redis broker."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._stats = client.register_script(_QUEUE_STATS)

    def queue_stats(self, queues: Iterable[str]) -> list[QueueStats]:
        names = sorted(set(queues))
        if not names:
            return []
        now = datetime.now(UTC).isoformat(timespec="microseconds")
        rows = self._stats(args=[SEP, UNACKED_KEY, len(PRIORITY_STEPS), ENQUEUED_AT_HEADER, now,
                                 *PRIORITY_STEPS, *names])
        return [
            QueueStats(
                name=_text(name), waiting=int(waiting), reserved=int(reserved),
                oldest_enqueued_at=float(oldest) if oldest else None, scheduled=int(scheduled),
            )
            for name, waiting, reserved, oldest, scheduled in rows
        ]

    def renew_leases(self, delivery_tags: Iterable[str]) -> int:
        """Reset the lease clock of messages this worker holds; returns how many it renewed.

        ``XX``: a tag acknowledged (or handed back) meanwhile is not brought back to life.
        """
        now = time.time()
        tags = {tag: now for tag in delivery_tags}
        if not tags:
            return 0
        return int(self.client.zadd(UNACKED_INDEX_KEY, tags, xx=True, ch=True))

    def oldest_lease_at(self) -> float | None:
        """Epoch seconds of the stalest lease among all unacknowledged messages."""
        oldest = self.client.zrange(UNACKED_INDEX_KEY, 0, 0, withscores=True)
        return float(oldest[0][1]) if oldest else None

    def ping(self) -> bool:
        return bool(self.client.ping())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
