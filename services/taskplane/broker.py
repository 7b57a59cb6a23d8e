"""How kombu's Redis transport lays out a queue, and the one place that reads it.

Routes, metrics and the exporter ask this module; nothing else knows a broker
key. A second broker (Sentinel, RabbitMQ) is a second module with the same
``QueueStats``-returning surface.

Layout: kombu's Redis transport with its *defaults* (``kombu/transport/redis.py``), so
any Celery 5 client, the stock ``celery`` CLI and Flower read and write the same keys
configured with nothing but the broker URL. ``SEP`` and ``PRIORITY_STEPS`` are read from
kombu, not restated: this module cannot drift from what a stock client writes.

==================================  ======  ==================================================
key                                 type    holds
==================================  ======  ==================================================
``{queue}``                         list    waiting messages of priority step 0 (served
                                            first); producers LPUSH, consumers BRPOP, so the
                                            oldest message is at index -1
``{queue}{SEP}{n}``, n in 3, 6, 9    list    waiting messages of priority step n; ``SEP``
                                            is kombu's separator, the two bytes 0x06 0x16
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
``_kombu.binding.*``                set     kombu's exchange bindings (``celery.pidbox``,
                                            ``celeryev``...): ``inspect``/``control`` replies
``taskplane:queue-first-seen``      hash    Taskplane's own: queue list key → ``"{delivery
                                            tag} {epoch}"``, when a queue read first saw a
                                            message with no enqueue time (a stock client's)
                                            at that list's tail (``FIRST_SEEN_KEY``)
==================================  ======  ==================================================

Enqueue time: Taskplane's API stamps each message with ``ENQUEUED_AT_HEADER``. A stock
Celery client (``send_task``, ``.delay()``) stamps nothing, and kombu's delivery info holds
no time either, so the oldest age of such a message counts from the first queue read (an
exporter scrape, ``GET /v1/queues``) that found it oldest in its list: a lower bound, late
by up to a scrape interval for a message that arrives in an empty list, and younger than
the truth for one that had stock messages ahead of it. A queue no worker drains still ages
steadily, which is what the stale-queue alert and the autoscaler need.

Priorities: Taskplane's API takes 0-9 with 9 the most urgent (as AMQP does). The Redis
transport serves its *lowest* number first, so the API value p is sent as transport
priority ``9 - p`` (the message's ``priority`` property, what a stock client sets), and
kombu files transport priority t in the list of the highest step <= t. So API priorities
share four lists, each served before the next: 7-9 (step 0), 4-6 (step 3, the default 5
included), 1-3 (step 6), 0 (step 9); within a list, first in first out. A stock client
that sets no priority lands in step 0, served with API priorities 7-9. This module is
the only place that flips or bins a priority.

Losing the broker connection (Redis restarted, killed, stalled, failed over) is handled
here too, by ``RideThroughTransport``: see "Riding through a lost connection" below.
"""

from __future__ import annotations

import base64
import bisect
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kombu.transport as kombu_transport
import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps as json_dumps

from . import redis_conn

log = logging.getLogger("taskplane.broker")

#: kombu's default priority steps (0, 3, 6, 9): one list per step. Kept at the default so
#: stock clients, the CLI and Flower need no transport options.
PRIORITY_STEPS: tuple[int, ...] = tuple(kombu_redis.PRIORITY_STEPS)
#: kombu's default separator between queue name and priority step (``\x06\x16``).
SEP: str = kombu_redis.Channel.sep
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
#: API priority range and the priority of a task submitted without one.
MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = 0, 9, 5
#: Message header carrying the epoch time a task was enqueued (oldest-age, queue wait).
ENQUEUED_AT_HEADER = "taskplane_enqueued_at"
#: When queue reads first saw each list's unstamped tail message (see the table above).
FIRST_SEEN_KEY = "taskplane:queue-first-seen"

# One round trip for every queue's figures: LLEN of each priority list, the enqueue
# time of the oldest message at the tail of each, and the routing key and ETA of
# every unacknowledged delivery (a worker holds countdown/ETA tasks unacknowledged
# until due: those are "scheduled", the rest "reserved").
# A tail without an enqueue time (a stock client's message) is dated by FIRST_SEEN_KEY:
# the time of the first read that saw that delivery tag at that list's tail, recorded
# now if none did; a list whose tail is stamped, or that is empty, drops its entry.
# KEYS: the unacked hash, FIRST_SEEN_KEY, then each queue's lists in PRIORITY_STEPS order
# (``queue_keys``).
# ARGV: the enqueue-time header, now (ISO 8601 UTC), len(PRIORITY_STEPS), now (epoch
# seconds), queue names.
# Returns {name, waiting, reserved, oldest_enqueued_at, scheduled} per queue.
_QUEUE_STATS = """
local header, now, nsteps, epoch = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local seen = KEYS[2]
local out, index = {}, {}
for q = 5, #ARGV do
  local name, waiting, oldest = ARGV[q], 0, ''
  local first = 3 + (q - 5) * nsteps
  for k = first, first + nsteps - 1 do
    local n = redis.call('LLEN', KEYS[k])
    local t, tag = nil, nil
    if n > 0 then
      waiting = waiting + n
      local ok, msg = pcall(cjson.decode, redis.call('LINDEX', KEYS[k], -1))
      if ok and type(msg) == 'table' then
        if type(msg['headers']) == 'table' then t = tonumber(msg['headers'][header]) end
        if not t and type(msg['properties']) == 'table' then tag = msg['properties']['delivery_tag'] end
      end
    end
    if type(tag) == 'string' then
      local entry = redis.call('HGET', seen, KEYS[k])
      if entry and string.sub(entry, 1, #tag + 1) == tag .. ' ' then
        t = tonumber(string.sub(entry, #tag + 2))
      else
        redis.call('HSET', seen, KEYS[k], tag .. ' ' .. epoch)
        t = tonumber(epoch)
      end
    else
      redis.call('HDEL', seen, KEYS[k])
    end
    if t and (oldest == '' or t < tonumber(oldest)) then oldest = string.format('%.6f', t) end
  end
  out[#out + 1] = {name, waiting, 0, oldest, 0}
  index[name] = #out
end
for _, raw in ipairs(redis.call('HVALS', KEYS[1])) do
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
    """``broker_transport_options`` for the layout documented above: none of them changes
    a key or the priority lists (those stay kombu's defaults), only timing and order.

    Every worker sweeps ``unacked_index`` each ``restore_interval`` seconds (throttle 1:
    kombu's default sweeps only every tenth tick) and hands back messages whose lease is
    older than ``visibility_timeout``. The sweep's lock expires quickly, so a worker that
    dies holding it delays the next sweep by seconds, not minutes.
    """
    return {
        "queue_order_strategy": "priority",
        "visibility_timeout": visibility_timeout,
        "unacked_restore_interval": restore_interval,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": max(10, 3 * restore_interval),
    }


def client_timeouts(seconds: float) -> dict[str, float]:
    """Transport options bounding every broker command and connect to ``seconds``.

    kombu's default is no timeout: a stalled or half-open Redis would hold the worker's
    loop inside one call for as long as it lasts, past any probe. With a bound the call
    fails, the consumer treats it as a lost connection and reconnects (riding through as
    below). The consumer's BRPOP waits at most ``brpop_timeout`` (1 s), well inside it.
    """
    return {"socket_timeout": seconds, "socket_connect_timeout": seconds}


def transport_priority(api_priority: int) -> int:
    """API priority (9 most urgent) → Redis transport priority (0 served first)."""
    return MAX_PRIORITY - api_priority


def api_priority(message_priority: Any) -> int:
    """The API priority of a delivered message's ``priority`` property (the inverse of
    :func:`transport_priority`); the default for a message that names none."""
    try:
        step = int(message_priority)
    except (TypeError, ValueError):
        return DEFAULT_PRIORITY
    return min(MAX_PRIORITY, max(MIN_PRIORITY, MAX_PRIORITY - step))


def priority_step(transport_priority: int) -> int:
    """The step whose list holds messages of ``transport_priority``: the highest step at
    or below it, as kombu's ``Channel.priority`` files them."""
    clamped = min(MAX_PRIORITY, max(MIN_PRIORITY, int(transport_priority)))
    return PRIORITY_STEPS[bisect.bisect(PRIORITY_STEPS, clamped) - 1]


def queue_key(queue: str, transport_priority: int) -> str:
    """The list holding ``queue``'s waiting messages of ``transport_priority``."""
    step = priority_step(transport_priority)
    return queue if step == 0 else f"{queue}{SEP}{step}"


def queue_keys(queue: str) -> list[str]:
    """Every Redis list that holds waiting messages of ``queue``."""
    return [queue if step == 0 else f"{queue}{SEP}{step}" for step in PRIORITY_STEPS]


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
    step = transport_priority(api_priority)
    envelope = {
        "body": base64.b64encode(_json(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
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
    return queue_key(queue, step), _json(envelope)


def _json(value: Any) -> str:
    """JSON as kombu's ``json`` serializer writes it. A task's arguments arrive as JSON,
    so the standard library's C encoder (several times faster than kombu's registry and
    encoder class) serialises them; anything else goes through kombu's."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return json_dumps(value)


class RedisBroker:
    """Reads queue figures from a kombu Redis broker."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._stats = client.register_script(_QUEUE_STATS)

    def queue_stats(self, queues: Iterable[str], now: float | None = None) -> list[QueueStats]:
        """Each queue's figures, read at ``now`` (epoch seconds; the clock by default)."""
        names = sorted(set(queues))
        if not names:
            return []
        at = time.time() if now is None else now
        iso = datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds")
        keys = [UNACKED_KEY, FIRST_SEEN_KEY,
                *(key for name in names for key in queue_keys(name))]
        rows = self._stats(keys=keys, args=[ENQUEUED_AT_HEADER, iso, len(PRIORITY_STEPS),
                                            f"{at:.6f}", *names])
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
        return int(self.client.zadd(UNACKED_INDEX_KEY, tags, xx=True, ch=True) or 0)

    def oldest_lease_at(self) -> float | None:
        """Epoch seconds of the stalest lease among all unacknowledged messages."""
        oldest = self.client.zrange(UNACKED_INDEX_KEY, 0, 0, withscores=True)
        return float(oldest[0][1]) if oldest else None

    def ping(self) -> bool:
        return bool(self.client.ping())


# --- Riding through a lost connection ----------------------------------------------------
#
# Upstream bug (kombu 5.7.0, Celery 5.7.0; remove this section when kombu fixes it):
# when the consumer loses its broker connection, Celery calls ``Connection.collect()``
# (which drops the transport's ``client``) and then ``Connection.close()``. Closing the
# task channel runs ``QoS.restore_unacked_once()``, whose ``restore_unacked`` builds a
# client from ``channel.connection.client`` - now None - and raises
# ``AttributeError: 'NoneType' object has no attribute 'hostname'``. That is not a
# connection error, so the worker stops with "Unrecoverable error"; a late ack of a task
# still running after the loss crashes the same way. Even where the restore works (Redis
# back within milliseconds), it would requeue the tasks this worker is still running, and
# they would run twice. The same family as celery/kombu#582 and #970 (a channel's client
# built from a connection already released); no upstream fix for 5.7 was found. The test
# ``test_kombus_own_transport_still_crashes_and_the_worker_exits_non_zero`` fails once it is
# fixed upstream: then check whether this section can go.
#
# What Taskplane does instead, for its broker URL only (``TRANSPORT``):
#
# * ``RideThroughTransport._collect`` is kombu's hook for "this connection is gone, drop
#   it without talking to the broker" (the AMQP transports implement it). It detaches every
#   channel: no broker I/O, no restore. The messages the worker holds stay in ``unacked``
#   under their leases.
# * A detached channel keeps the connection parameters it was opened with, so its late acks
#   (a task that was running across the outage and finishes afterwards) reach Redis through
#   a fresh client instead of crashing.
# * An ack that fails because Redis is away is remembered and sent again on reconnection,
#   so a task that finished during the outage is not redelivered after it.
# * On reconnection the worker calls ``settle_detached(still_held)``: pending acks are
#   sent, held messages the worker dropped meanwhile (prefetched or waiting for their
#   countdown; Celery forgets those on a connection loss) go back to their queue at once,
#   and the ones it still runs keep being renewed (``held_tags``) until their ack.
#
# The behaviour lives in two mixins, and everything that reconnects is the channel's
# ``_fresh_pool``: a Sentinel URL form later is ``RideThroughChannelMixin`` over kombu's
# ``SentinelChannel`` (and the transport mixin over ``SentinelTransport``), overriding that
# one method to ask the sentinels for the current master - an addition, not a rewrite.


class SweepGate:
    """Holds back this process's sweeps for expired leases until live workers renewed theirs.

    While Redis is away (restarted, killed, stalled) no lease can be renewed, so when it
    answers again every lease may look expired, the running tasks' included. A worker that
    swept at once would hand its peers' (and its own) running tasks to others. So after
    Redis was unreachable, sweeps wait until it has answered for half the visibility
    timeout: live workers renew at least every third of it (``LEASE_INTERVAL``), which
    leaves a sixth for a late tick. A process that just started has not seen whether Redis
    was away, so it waits the same from its start. A dead worker's messages still come
    back, that much later at most.
    """

    def __init__(self) -> None:
        self._down = False
        self._up_since = time.monotonic()

    def unreachable(self) -> None:
        self._down = True

    def reachable(self) -> None:
        if self._down:
            self._down = False
            self._up_since = time.monotonic()

    def allowed(self, visibility_timeout: float) -> bool:
        return not self._down and time.monotonic() - self._up_since >= visibility_timeout / 2


#: This process's gate: the lease renewer reports reachability, the transport loss.
SWEEPS = SweepGate()


#: Transport option: seconds an ack may wait to be sent with others (0: each ack at once).
ACK_BATCH_OPTION = "ack_batch_interval"
#: The most acks one batch holds: a batch this full is sent at once.
ACK_BATCH_MAX = 64


class RideThroughQoS(kombu_redis.QoS):
    """kombu's Redis QoS, which neither restores nor crashes once its channel is detached,
    and sends acks in batches.

    Batched acks (issue 29): with ``ack_batch_interval`` (``ACK_BATCH_OPTION``) above 0 an
    ack is not a round trip of its own (ZREM + HDEL of one tag) but waits up to that long,
    or until ``ACK_BATCH_MAX`` wait, and goes with the others in one ZREM + one HDEL. The
    worker forgets an acked message at once (its prefetch slot is free); until the batch is
    sent its tag stays among the ones whose lease this worker renews (``held_tags``), so no
    sweep hands it out meanwhile. The batch is sent before the channel closes (warm and
    soft shutdown), and kept as pending acks when the connection is lost (``settle``). Only
    a worker killed outright loses the acks of its last interval: those messages come back
    after the visibility timeout, as any unacked one does, and the ``start`` script refuses
    to run a task whose record ended (it is acknowledged without running).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Acks Redis did not take (it was away): sent again on reconnection.
        self.pending_acks: set[str] = set()
        self._guard = threading.Lock()
        client = getattr(getattr(self.channel, "connection", None), "client", None)
        options = getattr(client, "transport_options", None) or {}
        self.ack_batch_interval = float(options.get(ACK_BATCH_OPTION, 0) or 0)
        #: Acked tags not sent yet (with ``ack_batch_interval``), in ack order.
        self._unsent: list[str] = []
        self._flusher: threading.Timer | None = None

    @contextmanager
    def pipe_or_acquire(self, pipe: Any = None, client: Any = None) -> Iterator[Any]:
        """kombu's, but a pipeline of its own is a plain one, not MULTI/EXEC: a delivery's
        lease (ZADD into the unacked index, HSET of the message) and its ack (ZREM, HDEL)
        are each two commands in one round trip either way, and the transaction cost
        Redis two more commands each time (issue 29). Nothing relies on it: the sweep
        hands back only leases older than the visibility timeout (a new one is not, even
        with its message not yet filed), ignores an index entry without a message, and
        restores under WATCH of the unacked hash, which any HSET or HDEL trips."""
        if pipe:
            yield pipe
        else:
            with self.channel.conn_or_acquire(client) as conn:  # type: ignore[attr-defined]  # the Redis channel's, not in the stubs
                yield conn.pipeline(transaction=False)

    def restore_unacked_once(self, stderr: Any = None) -> None:
        if getattr(self.channel, "detached", False):
            return  # held messages stay leased; settle() decides their fate on reconnection
        self.flush_acks()  # the channel closes: the batch goes first
        super().restore_unacked_once(stderr)

    def unsent_acks(self) -> list[str]:
        """Tags acked on this channel whose ack is not sent yet (waiting for its batch)."""
        with self._guard:
            return list(self._unsent)

    def flush_acks(self) -> None:
        """Send the acks waiting for their batch: one ZREM and one HDEL in one round trip.
        If Redis is away they become pending acks, sent again on reconnection."""
        with self._guard:
            tags, self._unsent = self._unsent, []
            flusher, self._flusher = self._flusher, None
        if flusher is not None and flusher is not threading.current_thread():
            flusher.cancel()
        if not tags:
            return
        try:
            with self.pipe_or_acquire() as pipe:
                pipe.zrem(self.unacked_index_key, *tags).hdel(self.unacked_key, *tags).execute()
        except Exception as exc:  # connection errors, and a channel closed under the timer
            log.warning("ack of %d message(s) deferred until Redis answers: %s", len(tags),
                        type(exc).__name__)
            with self._guard:
                self.pending_acks.update(tags)
            _register(self)

    def ack(self, delivery_tag: str) -> None:
        if self.ack_batch_interval > 0 and not getattr(self.channel, "detached", False) \
                and not getattr(self.channel, "closed", False):
            with self._guard:
                self._unsent.append(str(delivery_tag))
                full = len(self._unsent) >= ACK_BATCH_MAX
                if not full and self._flusher is None:
                    self._flusher = threading.Timer(self.ack_batch_interval, self.flush_acks)
                    self._flusher.daemon = True
                    self._flusher.start()
            virtual.QoS.ack(self, delivery_tag)  # the worker no longer holds it
            if full:
                self.flush_acks()
            return
        try:
            super().ack(delivery_tag)
        except self.channel.connection_errors as exc:  # type: ignore[attr-defined]  # kombu sets it on each channel; absent from its stubs
            log.warning("ack of %s deferred until Redis answers: %s", delivery_tag,
                        type(exc).__name__)
            with self._guard:
                self.pending_acks.add(str(delivery_tag))
            virtual.QoS.ack(self, delivery_tag)  # the worker no longer holds it
            _register(self)

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        """kombu's sweep for expired leases, held back right after an outage (``SWEEPS``)."""
        if not SWEEPS.allowed(self.visibility_timeout):
            return
        try:
            super().restore_visible(start, num, interval)
        except self.channel.connection_errors:  # type: ignore[attr-defined]  # as in ack
            SWEEPS.unreachable()
            raise

    def held(self) -> list[str]:
        """Tags delivered on this channel and neither acknowledged nor rejected yet."""
        dirty = self._dirty or set()
        return [str(tag) for tag in list(self._delivered or ()) if tag not in dirty]

    def detach(self) -> None:
        """The connection is gone: forget nothing, restore nothing, talk to no one."""
        self._on_collect.cancel()  # type: ignore[attr-defined]  # kombu's QoS internals, not in its stubs
        with self._guard:  # acks waiting for their batch are sent on reconnection
            self.pending_acks.update(self._unsent)
            self._unsent = []
            flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()
        if self.held() or self.pending_acks:
            _register(self)

    def settle(self, still_held: Callable[[str], bool]) -> int:
        """Send pending acks and requeue what the worker no longer holds; returns requeued."""
        with self._guard:
            pending = sorted(self.pending_acks)
        for tag in pending:
            self._remove_from_indices(tag).execute()  # type: ignore[attr-defined]  # as in detach
            with self._guard:
                self.pending_acks.discard(tag)
        requeued = 0
        if getattr(self.channel, "detached", False):
            for tag in self.held():
                if not still_held(tag):
                    self.restore_by_tag(tag)
                    virtual.QoS.ack(self, tag)
                    requeued += 1
            self._flush()  # type: ignore[attr-defined]  # as in detach
        return requeued

    def settled(self) -> bool:
        return not self.pending_acks and not self.unsent_acks() and (
            not getattr(self.channel, "detached", False) or not self.held())


class RideThroughChannelMixin:
    """Makes a kombu Redis channel detachable from a lost connection (see above)."""

    QoS: Any = RideThroughQoS  # a kombu_redis.QoS subclass (the stubs type it per base)
    #: Set once the connection this channel used is gone.
    detached = False
    connection: Any
    _qos: virtual.QoS | None  # a RideThroughQoS (``QoS``); typed as kombu's Channel types it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What a detached channel reconnects with: the transport forgets its client.
        # A mixin: mypy cannot see the kombu Channel after it in the MRO, which has
        # _connparams, _get_pool, _create_client, pool, _disconnect_pools, _close_clients
        # and close (hence the ignores below, each for that reason).
        self._detached_params: dict[str, Any] = self._connparams(  # type: ignore[attr-defined]  # mixin
            asynchronous=False)

    def _get_pool(self, asynchronous: bool = False) -> redis.ConnectionPool:
        transport = self.connection
        if self.detached or transport is None or transport.client is None:
            return self._fresh_pool()
        pool: redis.ConnectionPool = super()._get_pool(  # type: ignore[misc]  # mixin
            asynchronous=asynchronous)
        return pool

    def _create_client(self, asynchronous: bool = False) -> redis.Redis:
        """kombu builds a new ``redis.Redis`` for every synchronous step: each delivery's
        and each ack's bookkeeping. With redis-py 8 building one costs more than the round
        trip it makes, in the consumer loop every task passes through. A client is a
        thread-safe handle on the channel's pool, so one is kept per pool (a detached or
        reconnected channel has a new pool, and gets a new client)."""
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc, no-any-return]  # mixin
        pool = self.pool  # type: ignore[attr-defined]  # mixin
        client: redis.Redis | None = self.__dict__.get("_sync_client")
        if client is None or client.connection_pool is not pool:
            client = super()._create_client(asynchronous=False)  # type: ignore[misc]  # mixin
            self.__dict__["_sync_client"] = client
        return client

    def _fresh_pool(self) -> redis.ConnectionPool:
        """The one place a detached channel reconnects (a Sentinel form overrides it)."""
        return redis.ConnectionPool(**self._detached_params)

    def detach(self) -> None:
        """Drop this channel's sockets without a word to Redis, keeping its held messages."""
        self.detached = True
        self._in_poll = None  # close() must not read a reply from a dead socket
        self._in_listen = None
        if isinstance(self._qos, RideThroughQoS):
            self._qos.detach()
        if self.connection is not None and self.connection.cycle is not None:
            self.connection.cycle.discard(self)
        self._disconnect_pools()  # type: ignore[attr-defined]  # mixin
        self._close_clients()  # type: ignore[attr-defined]  # mixin

    def close(self) -> None:
        if self.detached:
            # Celery closes the lost connection after collecting it: nothing is left to
            # close, and kombu's close would drop the exchange types that requeueing a
            # dropped message (``settle``) still needs.
            return
        super().close()  # type: ignore[misc]  # mixin


class RideThroughTransportMixin:
    """Makes a kombu Redis transport drop a lost connection without a word to Redis."""

    _avail_channels: list[Any]
    channels: list[Any] | None
    cycle: Any

    def _collect(self, connection: Any) -> None:
        """Called instead of closing when the connection is already lost: no broker I/O."""
        SWEEPS.unreachable()
        channels = [*self._avail_channels, *(self.channels or ())]
        self._avail_channels.clear()
        if self.channels is not None:
            self.channels.clear()
        self.cycle.close()
        for channel in channels:
            channel.detach()


class RideThroughChannel(RideThroughChannelMixin, kombu_redis.Channel):
    """kombu's Redis channel, detachable from a lost connection."""


class RideThroughTransport(RideThroughTransportMixin, kombu_redis.Transport):
    """kombu's Redis transport (``redis://``, ``rediss://``), riding through lost connections."""

    Channel = RideThroughChannel


class RideThroughSentinelChannel(RideThroughChannelMixin, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel, detachable from a lost connection: a detached channel
    reconnects by asking the sentinels it was opened with for the current master, so a
    late ack after a failover reaches the new master, never the demoted one."""

    #: A demoted master's READONLY and a replica-less master's NOREPLICAS drop the
    #: connection: the consumer reconnects to the master the sentinels name now.
    connection_class = redis_conn.MasterConnection
    connection_class_ssl = redis_conn.MasterSSLConnection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        alternates = self.connection.client.alt or [self.connection.client.as_uri(True)]
        self._detached_sentinels: list[tuple[str, int]] = [
            (u.hostname or "127.0.0.1", u.port or self.connection.default_port)
            for u in map(kombu_redis._parse_url, alternates)  # type: ignore[attr-defined]
            if u.scheme == "sentinel"]

    def _fresh_pool(self) -> redis.ConnectionPool:
        params = {k: v for k, v in self._detached_params.items() if k not in ("host", "port")}
        credentials = {k: params[k] for k in ("username", "password") if k in params}
        sentinel = redis_conn.FailoverSentinel(
            self._detached_sentinels, min_other_sentinels=getattr(self, "min_other_sentinels", 0),
            sentinel_kwargs=getattr(self, "sentinel_kwargs", None), **params)
        master = sentinel.master_for(getattr(self, "master_name", None), redis.Redis, **credentials)
        return master.connection_pool  # type: ignore[no-any-return]


class RideThroughSentinelTransport(RideThroughTransportMixin, kombu_redis.SentinelTransport):
    """kombu's Sentinel transport (``sentinel://``), riding through lost connections and
    failovers alike."""

    Channel = RideThroughSentinelChannel


#: ``broker_transport`` (Celery) / ``transport=`` (kombu) value selecting the transport above.
TRANSPORT = f"{__name__}:RideThroughTransport"
#: The same for a Sentinel ``REDIS_URL`` (``redis_conn``).
SENTINEL_TRANSPORT = f"{__name__}:RideThroughSentinelTransport"


def claim_sentinel_scheme() -> None:
    """Make ``sentinel://`` mean :class:`RideThroughSentinelTransport` in this process.

    A Sentinel URL lists several sentinels, which kombu also takes as failover
    alternates: on a lost connection it ``switch``es to the next one and re-reads the
    transport from that URL's scheme, dropping ``broker_transport``. The consumer would
    then carry on with kombu's stock Sentinel transport: no ride-through, and a
    ``NOREPLICAS`` from a replica-less old master ends the worker ("Unrecoverable error").
    Found by ``tests/ha/test_faults.py``; called by ``create_celery`` for Sentinel URLs."""
    kombu_transport.TRANSPORT_ALIASES["sentinel"] = SENTINEL_TRANSPORT

_DETACHED: list[RideThroughQoS] = []
_DETACHED_LOCK = threading.Lock()


def _register(qos: RideThroughQoS) -> None:
    with _DETACHED_LOCK:
        if not any(q is qos for q in _DETACHED):
            _DETACHED.append(qos)


def settle_detached(still_held: Callable[[str], bool]) -> int:
    """After a reconnection: send deferred acks, requeue what the worker dropped.

    ``still_held(tag)`` says whether the worker still runs the message (its ack will come).
    Returns how many messages went back to their queue. Connection errors propagate:
    call again later, nothing is lost by waiting (the messages stay leased meanwhile).
    """
    with _DETACHED_LOCK:
        pending = list(_DETACHED)
    requeued = 0
    for qos in pending:
        requeued += qos.settle(still_held)
        if qos.settled():
            with _DETACHED_LOCK:
                _DETACHED[:] = [q for q in _DETACHED if q is not qos]
    if requeued:
        log.info("requeued %d message(s) dropped during the broker outage", requeued)
    return requeued


def held_tags(channel: Any) -> list[str]:
    """Delivery tags the worker holds: on ``channel`` (its live task channel, if any) and on
    channels detached from lost connections (still running, or acked while Redis was away).

    kombu keeps them in the QoS of the channel that delivered them: running tasks,
    prefetched ones, and ones waiting in the worker for their countdown/ETA.
    """
    tags: list[str] = []
    qos = getattr(channel, "qos", None) if channel is not None else None
    if qos is not None:
        delivered = getattr(qos, "_delivered", None) or {}
        dirty: set[str] = getattr(qos, "_dirty", None) or set()
        tags.extend(str(tag) for tag in list(delivered) if tag not in dirty)
        if isinstance(qos, RideThroughQoS):
            tags.extend(qos.unsent_acks())  # leased until their batch is sent
    with _DETACHED_LOCK:
        detached = list(_DETACHED)
    for old in detached:
        if getattr(old.channel, "detached", False):
            tags.extend(old.held())
        tags.extend(sorted(old.pending_acks))
    return list(dict.fromkeys(tags))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
