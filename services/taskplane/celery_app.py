"""The Celery application factory and the one function that puts a task on a queue.

Defaults favour not losing work over raw speed: JSON only, acknowledgement after
the task ends (``acks_late``), a task whose pool process dies is handed back
(``reject_on_worker_lost``), one message reserved per pool process, and a SIGTERM
that lets running tasks finish (soft shutdown) before handing the rest back.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kombu.exceptions
import redis
from celery import Celery, states
from celery.exceptions import TaskRevokedError
from kombu.utils.encoding import bytes_to_str

from . import broker, lifecycle, redis_conn, results, webhook_delivery
from .lifecycle import Lifecycle, OutcomeUnknown, Submission, TaskRecord, Transition
from .metrics import Metrics
from .runtime import Runtime, TaskplaneCelery
from .settings import Settings
from .tasks.registry import Registry

#: Publishing from a worker (retries, ``send_task`` from task code) gives up fast when
#: Redis is away; the API writes its messages itself (``submit``) and never retries.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                        "interval_max": 0.5}


def redis_client(url: str, settings: Settings, patient: bool = False) -> redis.Redis:
    """A client of ``url`` (a node or a Sentinel master set): ``redis_conn.client``."""
    return redis_conn.client(url, settings, patient=patient)


def create_celery(settings: Settings, patient: bool = False,
                  set_as_current: bool = True,
                  on_dead_letter: Callable[[str, str, str], None] | None = None,
                  shared_backend: bool = False) -> TaskplaneCelery:
    """A Celery app configured from ``settings``, with every task module loaded.

    ``patient`` (workers): writes of results, records and dead letters retry through a
    Redis outage instead of turning a finished task into a FAILURE. ``set_as_current``:
    make it Celery's process-wide current app (what ``celery.current_app`` and
    ``shared_task`` resolve to): a worker's or scheduler's one app; the API passes False,
    as its app factory touches nothing process-wide. ``on_dead_letter``: called with (task
    name, task id, queue) when this app's result backend files a dead letter
    (``Runtime.on_dead_letter``). ``shared_backend`` (the API): one result backend for the
    whole process (Celery's ``result_backend_thread_safe``) instead of one per thread.
    Celery keeps it in a thread-local, which gevent makes greenlet-local: every request
    built a backend of its own (a Redis client, a result consumer and its drainer, ~7 KB
    held by each follower and CPU on every submit, BENCHMARKS.md section 7). What the API
    asks of it is stateless (key names, decoding, lifecycle writes through the shared
    pool); the one stateful part, the result consumer behind ``AsyncResult.get``, the API
    never uses (its one ``send_task`` passes ``ignore_result``).
    """
    registry = Registry.from_modules(settings.task_modules, builtin=settings.builtin_tasks)
    if redis_conn.is_sentinel(settings.redis_url):
        broker.claim_sentinel_scheme()  # kombu's failover between sentinels keeps our transport
    app = TaskplaneCelery("taskplane", broker=settings.redis_url,
                 backend=results.backend_url(settings.redis_url),
                 set_as_current=set_as_current)
    registry.bind(app)
    routes = {spec.name: {"queue": spec.queue} for spec in registry if spec.queue}
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_track_started=False,  # TaskplaneTask stores STARTED with the record's stamp
        task_time_limit=settings.default_time_limit,
        task_soft_time_limit=settings.default_soft_time_limit,
        task_default_queue=settings.default_queue,
        task_default_priority=broker.transport_priority(broker.DEFAULT_PRIORITY),
        task_routes=routes,
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        result_expires=settings.result_expires,
        result_backend_thread_safe=shared_backend,
        result_extended=False,  # arguments stay out of results: they may be large or private
        worker_prefetch_multiplier=settings.worker_prefetch_multiplier,
        worker_concurrency=settings.worker_concurrency,
        worker_soft_shutdown_timeout=settings.worker_soft_shutdown_timeout,
        # An idle worker stops at once: tasks it holds for a countdown go back to the queue.
        worker_enable_soft_shutdown_on_idle=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # Rides through a lost broker connection instead of crashing (a kombu 5.7
        # workaround, broker.py), with every broker command bounded by REDIS_TIMEOUT.
        # Through Sentinel: the same, finding the master by asking the sentinels.
        broker_transport=(broker.SENTINEL_TRANSPORT if redis_conn.is_sentinel(settings.redis_url)
                          else broker.TRANSPORT),
        broker_transport_options={
            **broker.transport_options(settings.visibility_timeout,
                                       settings.unacked_restore_interval),
            **broker.client_timeouts(settings.redis_timeout),
            broker.ACK_BATCH_OPTION: settings.ack_batch_interval,
            **redis_conn.broker_options(settings)},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.redis_timeout,
        broker_pool_limit=settings.api_threads + 2,
        redis_socket_timeout=settings.redis_timeout,
        redis_socket_connect_timeout=settings.redis_timeout,
        redis_retry_on_timeout=False,
        redis_socket_keepalive=True,
        result_backend_transport_options={"retry_policy": {"timeout": settings.redis_timeout},
                                          **redis_conn.backend_options(settings)},
    )
    if (broker_ssl := redis_conn.celery_ssl(settings.redis_url, settings)) is not None:
        app.conf.broker_use_ssl = broker_ssl
    if (backend_ssl := redis_conn.celery_ssl(settings.redis_url, settings)) is not None:
        app.conf.redis_backend_use_ssl = backend_ssl
    if patient:
        app.conf.update(
            result_backend_always_retry=True,
            result_backend_max_retries=redis_conn.WORKER_REDIS_RETRIES,
            result_backend_base_sleep_between_retries_ms=int(
                redis_conn.WORKER_REDIS_BACKOFF["base"] * 1000),
            result_backend_max_sleep_between_retries_ms=int(
                redis_conn.WORKER_REDIS_BACKOFF["cap"] * 1000),
        )
    if shared_backend:  # built now, once: threads asking first at once would each build one
        result_backend(app)
    client = redis_client(settings.redis_url, settings, patient=patient)
    app_metrics = Metrics(settings.metrics_enabled)
    app.runtime = Runtime(
        settings=settings,
        registry=registry,
        lifecycle=Lifecycle(client, record_ttl=settings.task_record_ttl,
                            result_ttl=settings.result_expires,
                            idempotency_ttl=settings.idempotency_ttl,
                            dead_letter_ttl=settings.dead_letter_ttl,
                            # bytes, whatever celery-types says: kombu's helper takes both
                            result_key=lambda task_id: bytes_to_str(
                                result_backend(app).get_key_for_task(task_id)),
                            max_countdown=settings.max_countdown,
                            acks=settings.replicas_ack, ack_timeout=settings.redis_ack_timeout,
                            keep_messages=settings.reconcile_seconds > 0,
                            # a worker ending a task repeats the ending until a replica
                            # has it (or half the visibility timeout), then acks
                            strict_acks=not patient, on_ack=app_metrics.count_replica_ack,
                            ack_patience=settings.visibility_timeout / 2 if patient else 0.0,
                            ride_through=settings.submit_ride_through_seconds,
                            run_lease=settings.run_lease),
        broker=broker.RedisBroker(client),
        metrics=app_metrics,
        on_dead_letter=on_dead_letter,
    )
    webhook_delivery.register(app)
    return app


def result_backend(app: Celery) -> results.ResultBackend:
    """The app's result backend, typed: always Taskplane's (``results.backend_url``)."""
    backend = app.backend
    if not isinstance(backend, results.ResultBackend):
        raise TypeError(f"{type(backend).__name__} is not taskplane.results.ResultBackend")
    return backend


def new_task_id() -> str:
    return str(uuid.uuid4())


def task_message(app: TaskplaneCelery, *, task_id: str, tenant: str, name: str,
                 args: Sequence[Any],
                 kwargs: Mapping[str, Any], queue: str, priority: int, now: float,
                 countdown: float | None = None, headers: Mapping[str, str] | None = None
                 ) -> tuple[str, str]:
    """The queue list and raw broker entry of one task, as ``send_task`` would write it.

    Celery builds the message (protocol 2, so any Celery worker runs it); ``broker``
    wraps it in the transport's envelope. Argument reprs are a count, not the values:
    Celery logs them and puts them in events, and task arguments may be private.
    """
    task = app.tasks.get(name)
    message = app.amqp.as_task_v2(
        task_id, name, args=tuple(args), kwargs=dict(kwargs),
        eta=datetime.fromtimestamp(now + countdown, UTC) if countdown else None,
        time_limit=getattr(task, "time_limit", None),
        soft_time_limit=getattr(task, "soft_time_limit", None),
        reply_to=app.thread_oid, origin=app.runtime.origin,
        argsrepr=redacted_repr(args), kwargsrepr=redacted_repr(kwargs),
        # None, as send_task leaves it: the task's own setting applies (celery-types: bool)
        ignore_result=None,  # type: ignore[arg-type]  # see above
    )
    message[0][lifecycle.TENANT_HEADER] = tenant
    if headers:
        message[0].update(headers)
    return broker.encode_task(message, queue, priority, now)


def redacted_repr(values: Sequence[Any] | Mapping[str, Any]) -> str:
    return f"<{len(values)} redacted>"


class TenantCapReached(Exception):
    """The tenant already has ``MAX_OPEN_TASKS_PER_TENANT`` unfinished tasks."""


class RateLimited(Exception):
    """The tenant is over ``RATE_LIMIT``; ``retry_after`` seconds until a token frees up."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited for {retry_after:.3f}s")
        self.retry_after = retry_after


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used with a different body, for task ``task_id``."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)
        self.task_id = task_id


@dataclass(frozen=True)
class Accepted:
    """A submission Redis took: a new task, or the first task of a replayed key."""

    task_id: str
    record: TaskRecord | None  # the new task's record; None for a replay (read it)

    @property
    def replayed(self) -> bool:
        return self.record is None


def submit(app: TaskplaneCelery, *, tenant: str, name: str, args: Sequence[Any],
           kwargs: Mapping[str, Any], queue: str, priority: int,
           countdown: float | None = None, task_id: str | None = None,
           idempotency: tuple[str, str] | None = None, rate_limited: bool = False,
           notify: Mapping[str, str] | None = None) -> Accepted:
    """Accept a task in one atomic Redis call (``lifecycle.submit``): the record and its
    message are both written or neither, and a worker that takes the message always finds
    the record. ``idempotency = (key, body fingerprint)``; ``rate_limited``: the call
    also spends one of the tenant's ``RATE_LIMIT`` tokens. ``notify``: the checked
    ``{"url", "secret"}`` of the task's webhook (``webhooks.py``); without it, the
    tenant's registered endpoint, if any.

    Raises :class:`RateLimited`, :class:`TenantCapReached`, :class:`IdempotencyConflict`,
    or :class:`lifecycle.OutcomeUnknown` (with ``task_id``) when Redis did not answer in
    time: the task may exist; a retry with the same key finds out without a second task.
    """
    runtime = app.runtime
    settings = runtime.settings
    now = time.time()
    record = TaskRecord(id=task_id or new_task_id(), tenant=tenant, task=name, queue=queue,
                        priority=priority, submitted_at=now,
                        eta=now + countdown if countdown else None)
    if notify is None:  # the tenant's registered endpoint, if an operator set one
        notify = runtime.lifecycle.webhook_endpoints().get(tenant)
    if notify is not None:
        record.notify = webhook_delivery.notify_field(app, tenant, "task", record.id,
                                                      dict(notify))
    push = task_message(app, task_id=record.id, tenant=tenant, name=name, args=args,
                        kwargs=kwargs, queue=queue, priority=priority, now=now,
                        countdown=countdown)
    rate = settings.rate_limit if rate_limited else 0.0
    try:
        outcome: Submission = runtime.lifecycle.submit(
            record, push, cap=settings.max_open_tasks_per_tenant, rate=rate,
            burst=settings.rate_limit_burst, idempotency=idempotency)
    except OutcomeUnknown as exc:
        exc.task_id = record.id
        raise
    if outcome.outcome == "created":
        return Accepted(record.id, record)
    if outcome.outcome == "replay":
        return Accepted(outcome.task_id, None)
    if outcome.outcome == "conflict":
        raise IdempotencyConflict(outcome.task_id)
    if outcome.outcome == "rate_limited":
        raise RateLimited(outcome.retry_after)
    raise TenantCapReached(tenant)


def revoke(app: TaskplaneCelery, task_id: str, tenant: str, *, terminate: bool) -> Transition:
    """Revoke a task unless it has ended (``lifecycle.revoke``), then tell the workers: a
    worker holding it for a countdown drops it, and a running one is killed (SIGKILL: pool
    children ignore SIGTERM once it means soft shutdown). A worker that receives it later
    finds it revoked at start and skips it, so the broadcast is not what stops it."""
    life, backend = app.runtime.lifecycle, result_backend(app)
    error = backend.encode_result(TaskRevokedError("revoked via API"), states.REVOKED)
    write = backend.encode_state(task_id, error, states.REVOKED)
    outcome = life.revoke(task_id, tenant, terminate=terminate, result=write)
    if outcome.outcome != "revoked":
        return outcome
    try:
        app.control.revoke(task_id, terminate=outcome.previous == lifecycle.STARTED,
                           signal="SIGKILL")
    except (redis.RedisError, kombu.exceptions.OperationalError) as exc:
        unknown = OutcomeUnknown(exc)  # revoked, but the kill may not have gone out
        unknown.task_id = task_id
        raise unknown from exc
    return outcome


def retry_dead_letter_task(app: TaskplaneCelery, tenant: str, task_id: str, read: str
                           ) -> Transition:
    """Enqueue a dead letter again under its id (``lifecycle.retry_dead``); ``read`` is the
    dead letter's JSON as the caller read it. Of concurrent retries exactly one wins."""
    life = app.runtime.lifecycle
    entry = json.loads(read)
    now = time.time()
    record = TaskRecord(id=task_id, tenant=tenant, task=entry["task"], queue=entry["queue"],
                        priority=int(entry["priority"]), submitted_at=now)
    push = task_message(app, task_id=task_id, tenant=tenant, name=record.task,
                        args=entry.get("args") or [], kwargs=entry.get("kwargs") or {},
                        queue=record.queue, priority=record.priority, now=now)
    try:
        outcome = life.retry_dead(record, read, push,
                                  cap=app.runtime.settings.max_open_tasks_per_tenant)
    except OutcomeUnknown as exc:
        exc.task_id = task_id
        raise
    return outcome
