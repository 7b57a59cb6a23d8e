"""The Celery application factory and the one function that puts a task on a queue.

Defaults favour not losing work over raw speed: JSON only, acknowledgement after
the task ends (``acks_late``), a task whose pool process dies is handed back
(``reject_on_worker_lost``), one message reserved per pool process, and a SIGTERM
that lets running tasks finish (soft shutdown) before handing the rest back.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from celery import Celery
from celery.utils.nodenames import anon_nodename
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from . import broker, results
from .settings import Settings
from .store import Store, TaskRecord
from .tasks.registry import Registry, load_task_modules

#: Publishing from a worker (retries, ``send_task`` from task code) gives up fast when
#: Redis is away; the API writes its messages itself (``submit``) and never retries.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                        "interval_max": 0.5}


@dataclass(frozen=True)
class Runtime:
    """What every Taskplane process derives from its settings, hung on the Celery app."""

    settings: Settings
    registry: Registry
    store: Store
    broker: broker.RedisBroker
    #: The ``origin`` header of messages this process sends (Celery's ``anon_nodename``).
    origin: str = field(default_factory=anon_nodename)

    def known_queues(self) -> list[str]:
        queues = {self.settings.default_queue, *self.settings.queues}
        queues |= self.registry.queues(self.settings.default_queue)
        return sorted(queues)


#: How long a worker keeps retrying Redis before a write gives up: a task that finished
#: during a short Redis outage must still end SUCCESS, not FAILURE(ConnectionError).
WORKER_REDIS_RETRIES = 25  # 0.1 s doubling to 2 s apart: about 45 s in all
WORKER_REDIS_BACKOFF = {"base": 0.1, "cap": 2.0}


def redis_tls_options(settings: Settings) -> dict[str, Any]:
    """TLS options of a ``rediss://`` connection: the server's certificate is checked,
    against ``REDIS_TLS_CA_FILE`` when set (else the system's CAs). Celery's broker and
    result backend take the same dict (``broker_use_ssl``, ``redis_backend_use_ssl``)."""
    options: dict[str, Any] = {"ssl_cert_reqs": "required"}  # redis-py, kombu and Celery all read it
    if settings.redis_tls_ca_file:
        options["ssl_ca_certs"] = settings.redis_tls_ca_file
    return options


def redis_client(url: str, settings: Settings, patient: bool = False) -> redis.Redis:
    """A client that fails fast (the API: a quick 503 beats a hung request), or, when
    ``patient`` (workers), retries connection errors with back-off through an outage."""
    retry = None
    if patient:
        retry = Retry(ExponentialBackoff(**WORKER_REDIS_BACKOFF), WORKER_REDIS_RETRIES,
                      supported_errors=(redis.ConnectionError, redis.TimeoutError))
    return redis.Redis.from_url(
        url,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        health_check_interval=30,
        retry=retry,
        retry_on_timeout=patient,
        **(redis_tls_options(settings) if url.startswith("rediss:") else {}),
    )


def create_celery(settings: Settings, patient: bool = False) -> Celery:
    """A Celery app configured from ``settings``, with every task module loaded.

    ``patient`` (workers): writes of results, records and dead letters retry through a
    Redis outage instead of turning a finished task into a FAILURE.
    """
    registry = load_task_modules(settings.task_modules, builtin=settings.builtin_tasks)
    app = Celery("taskplane", broker=settings.redis_url,
                 backend=results.backend_url(settings.results_url),
                 set_as_current=True)
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
        result_extended=False,  # arguments stay out of results: they may be large or private
        worker_prefetch_multiplier=settings.worker_prefetch_multiplier,
        worker_concurrency=settings.worker_concurrency,
        worker_soft_shutdown_timeout=settings.worker_soft_shutdown_timeout,
        # An idle worker stops at once: tasks it holds for a countdown go back to the queue.
        worker_enable_soft_shutdown_on_idle=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_transport_options=broker.transport_options(settings.visibility_timeout,
                                                          settings.unacked_restore_interval),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.redis_timeout,
        broker_pool_limit=settings.api_threads + 2,
        redis_socket_timeout=settings.redis_timeout,
        redis_socket_connect_timeout=settings.redis_timeout,
        redis_retry_on_timeout=False,
        result_backend_transport_options={"retry_policy": {"timeout": settings.redis_timeout}},
    )
    if settings.redis_url.startswith("rediss:"):
        app.conf.broker_use_ssl = redis_tls_options(settings)
    if settings.results_url.startswith("rediss:"):
        app.conf.redis_backend_use_ssl = redis_tls_options(settings)
    if patient:
        app.conf.update(
            result_backend_always_retry=True,
            result_backend_max_retries=WORKER_REDIS_RETRIES,
            result_backend_base_sleep_between_retries_ms=int(WORKER_REDIS_BACKOFF["base"] * 1000),
            result_backend_max_sleep_between_retries_ms=int(WORKER_REDIS_BACKOFF["cap"] * 1000),
        )
    client = redis_client(settings.redis_url, settings, patient=patient)
    app.taskplane = Runtime(  # type: ignore[attr-defined]
        settings=settings,
        registry=registry,
        store=Store(client, record_ttl=settings.task_record_ttl,
                    result_ttl=settings.result_expires,
                    idempotency_ttl=settings.idempotency_ttl,
                    dead_letter_ttl=settings.dead_letter_ttl),
        broker=broker.RedisBroker(client),
    )
    return app


def runtime_for(app: Celery) -> Runtime:
    return app.taskplane  # type: ignore[attr-defined,no-any-return]


def store_for(app: Celery) -> Store:
    return runtime_for(app).store


def new_task_id() -> str:
    return str(uuid.uuid4())


def task_message(app: Celery, *, task_id: str, name: str, args: Sequence[Any],
                 kwargs: Mapping[str, Any], queue: str, priority: int, now: float,
                 countdown: float | None = None) -> tuple[str, str]:
    """The queue list and raw broker entry of one task, as ``send_task`` would write it.

    Celery builds the message (protocol 2, so any Celery worker runs it); ``broker``
    wraps it in the transport's envelope. Argument reprs are a count, not the values:
    Celery logs them and puts them in events, and task arguments may be private.
    """
    task = app.tasks.get(name)
    message = app.amqp.as_task_v2(
        task_id, name, args=list(args), kwargs=dict(kwargs),
        eta=datetime.fromtimestamp(now + countdown, UTC) if countdown else None,
        time_limit=getattr(task, "time_limit", None),
        soft_time_limit=getattr(task, "soft_time_limit", None),
        reply_to=app.thread_oid, origin=runtime_for(app).origin,
        argsrepr=redacted_repr(args), kwargsrepr=redacted_repr(kwargs),
        ignore_result=None,  # as send_task leaves it: the task's own setting applies
    )
    return broker.encode_task(message, queue, priority, now)


def redacted_repr(values: Sequence[Any] | Mapping[str, Any]) -> str:
    return f"<{len(values)} redacted>"


class TenantCapReached(Exception):
    """The tenant already has ``MAX_OPEN_TASKS_PER_TENANT`` unfinished tasks."""


def submit(app: Celery, *, tenant: str, name: str, args: Sequence[Any],
           kwargs: Mapping[str, Any], queue: str, priority: int,
           countdown: float | None = None, task_id: str | None = None) -> TaskRecord:
    """Record a task and put its message on the queue in one atomic Redis call: either
    both are written or neither (a connection error propagates and nothing is accepted),
    and a worker that takes the message always finds the record."""
    runtime = runtime_for(app)
    now = time.time()
    record = TaskRecord(id=task_id or new_task_id(), tenant=tenant, task=name, queue=queue,
                        priority=priority, submitted_at=now,
                        eta=now + countdown if countdown else None)
    push = task_message(app, task_id=record.id, name=name, args=args, kwargs=kwargs,
                        queue=queue, priority=priority, now=now, countdown=countdown)
    if not runtime.store.create(record, cap=runtime.settings.max_open_tasks_per_tenant,
                                push=push):
        raise TenantCapReached(tenant)
    return record
