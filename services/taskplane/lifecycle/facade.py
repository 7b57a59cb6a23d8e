""":class:`Lifecycle`: every task's transitions, reads, rate limit and schedule state
against one Redis, under one name (what the API, the worker and the scheduler hold)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from redis.client import PubSub

from .deliveries import Deliveries
from .listing import Listing
from .ratelimit import RateLimit
from .reconcile import Reconcile
from .schedule_state import ScheduleState
from .store import Store
from .transitions import Transitions
from .workflow_state import WorkflowState


class Lifecycle(Transitions, Listing, RateLimit, ScheduleState, WorkflowState, Deliveries,
                Reconcile):
    """The transitions of every task, against one Redis. Cheap to create; holds one pool.

    Each part lives in its own module (``transitions``, ``listing``, ``ratelimit``,
    ``schedule_state``, ``workflow_state``, ``reconcile``); their scripts all run through one :class:`Store`.
    ``result_key(id)`` names Celery's result key: results live in this Redis, beside the
    records, and every transition writes the result in the same step as the record.
    """

    def __init__(self, client: redis.Redis, *, record_ttl: int, result_ttl: int,
                 idempotency_ttl: int, dead_letter_ttl: int,
                 result_key: Callable[[str], str],
                 max_countdown: int = 0, acks: int = 0, ack_timeout: float = 1.0,
                 strict_acks: bool = True,
                 on_ack: Callable[[bool], None] | None = None,
                 ack_patience: float = 0.0, ride_through: float = 0.0,
                 run_lease: float = 0.0, keep_messages: bool = True) -> None:
        # acks: REDIS_MIN_REPLICAS_ACK; accepting transitions wait for replicas (store.py)
        self._store = Store(client, acks=acks, ack_timeout=ack_timeout, strict=strict_acks,
                            on_ack=on_ack, patience=ack_patience)
        #: How long a listing index keeps an entry: no record outlives it (submission,
        #: the longest countdown, then the result's lifetime once it ends).
        self.keep = record_ttl + max_countdown + result_ttl
        #: How long a tenant's open set keeps an entry: the longest an unfinished record
        #: lives (a countdown task's record lives its countdown longer).
        self.open_age = record_ttl + max_countdown
        self.record_ttl = record_ttl
        self.result_ttl = result_ttl
        self.idempotency_ttl = idempotency_ttl
        self.dead_letter_ttl = dead_letter_ttl
        self.result_key = result_key
        #: Whether submit keeps each message on its record until the task starts, for the
        #: reconcile pass (``reconcile.lua``) to push again one a failover lost. Only
        #: worth its Redis cost (a 1-2 kB copy per task, and a record too big for Redis'
        #: compact hash encoding) where that pass runs: ``RECONCILE_INTERVAL`` not 0.
        self.keep_messages = keep_messages
        #: Seconds a submission keeps trying through a failover (``SUBMIT_RIDE_THROUGH``).
        self.ride_through = ride_through
        #: Seconds a run's lease holds off a second start (0: none; ``Settings.run_lease``)
        self.run_lease = run_lease

    def ping(self) -> bool:
        """Whether Redis answers (readiness probes)."""
        return self._store.ping()

    def subscribe(self, task_id: str) -> PubSub:
        """A pub/sub connection that hears every write of the task's result (``?wait=``,
        server-sent events): subscribed before the caller's first read, so no write is
        missed between the read and the wait."""
        return self._store.subscribe(self.result_key(task_id))

    def pubsub_connection(self) -> Any:
        """A fresh connection to this Redis, for one process's shared subscription to
        result channels (the API's follower dispatcher, ``api/dispatch.py``, which
        subscribes ``result_key(id)`` as followers come and goes)."""
        return self._store.connection()
