"""Worker-side hooks: keep each task's record and the dead-letter list true to what happened.

Celery signals fire in the pool process for outcomes it traces (success, failure,
retry) and in the main process for outcomes it only observes (hard time limit,
revoke, a pool process that died), so every handler here is safe in either.

``celery -A taskplane.worker worker`` works too: the app is built lazily on first
access, so importing this module starts nothing.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Sequence
from datetime import datetime
from types import ModuleType
from typing import Any

from celery import signals, states
from celery.app import trace as celery_trace
from celery.apps.worker import Worker as CeleryWorker
from celery.exceptions import Retry
from celery.worker import state as worker_state
from celery.worker.request import Request as CeleryRequest

from . import broker, lifecycle, metrics, redis_conn
from .celery_app import create_celery
from .flowerconfig import REDACTED
from .lifecycle import Lifecycle, PoisonedTask
from .pool import POOL
from .results import RUN_ENDED, stock_record
from .runtime import STOCK_DEFAULT_QUEUE, Runtime, TaskplaneCelery, known_queues, runtime_of
from .settings import Settings
from .tasks.registry import Registry
from .worker_probes import LeaseStep, serve_probes

log = logging.getLogger("taskplane.worker")

# Celery's signals are process-wide: each handler reaches its app's state (records,
# metrics) through its sender's ``app.runtime``, and what one run's handlers share rides on
# that run's request (``RUN_STARTED``). The one process-wide flag: whether this process
# connected the handlers (``connect_signals``).
_connected = False
#: Attribute of a run's request: ``time.monotonic()`` at its ``task_prerun``.
RUN_STARTED = "taskplane_run_started"


def _lifecycle(sender: Any) -> Lifecycle:
    return _runtime(sender).lifecycle


def _runtime(sender: Any) -> Runtime:
    """The runtime of the app a signal's sender (task, consumer, worker) belongs to."""
    return runtime_of(sender.app)


def _instruments(sender: Any) -> metrics.Instruments:
    return _runtime(sender).metrics.instruments


def _queue_of(task: Any) -> str:
    info = getattr(task.request, "delivery_info", None) or {}
    return str(info.get("routing_key") or task.app.runtime.settings.default_queue)


def _submitted_at(request: Any) -> float | None:
    """When the API enqueued the task (a header that retries carry along)."""
    headers = getattr(request, "headers", None) or {}
    value = getattr(request, broker.ENQUEUED_AT_HEADER, None) or headers.get(broker.ENQUEUED_AT_HEADER)
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _due_at(request: Any) -> float | None:
    """When the task became due: its ETA (countdown or retry back-off) if any, else its enqueue."""
    eta = getattr(request, "eta", None)
    if eta:
        try:
            return datetime.fromisoformat(str(eta)).timestamp()
        except ValueError:
            pass
    return _submitted_at(request)


def _on_prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if not task_id:
        return
    now = time.time()
    request = task.request
    setattr(request, RUN_STARTED, time.monotonic())
    m = _instruments(task)
    m.worker_running.inc()
    if (getattr(request, "delivery_info", None) or {}).get("redelivered"):
        m.tasks.labels(task.name, _queue_of(task), "redelivered").inc()
    due = _due_at(request)
    if due is not None:
        m.task_queue_wait.labels(task.name, _queue_of(task)).observe(max(0.0, now - due))


def _on_postrun(sender: Any = None, task_id: str | None = None, task: Any = None,
                state: str | None = None, **_: Any) -> None:
    if not task_id:
        return
    m = _instruments(task)
    started = getattr(task.request, RUN_STARTED, None)
    if started is not None:
        m.worker_running.dec()
        queue = _queue_of(task)
        m.task_runtime.labels(task.name, queue).observe(time.monotonic() - started)
        submitted = _submitted_at(task.request)
        if state in states.READY_STATES and submitted is not None:
            m.task_end_to_end.labels(task.name, queue).observe(max(0.0, time.time() - submitted))
        outcome = {states.SUCCESS: "succeeded", states.RETRY: "retried",
                   states.REVOKED: "revoked", states.IGNORED: "revoked"}.get(state or "")
        if getattr(task.request, "taskplane_postponed", False):
            outcome = "postponed"  # another live worker runs it (tasks/base.py)
        if outcome:  # failures are counted once, by _on_failure, wherever they happen
            m.tasks.labels(task.name, queue, outcome).inc()
    request = task.request
    if getattr(request, "taskplane_skipped", False):
        return  # revoked or already ended: no run started, none ends
    if getattr(request, RUN_ENDED, False):
        return  # its SUCCESS, stored by the result backend, counted the run's end too
    # Count the run as ended; SUCCESS and REVOKED also end the task, unless the result
    # backend already did in the same step as storing the result.
    final = state if state in (states.SUCCESS, states.REVOKED) else ""
    _lifecycle(sender or task).finish(task_id, final, tenant=lifecycle.tenant_hint(request),
                                      run_ended=True)


def _on_failure(sender: Any = None, task_id: str | None = None,
                exception: BaseException | None = None, **_: Any) -> None:
    """Count a failure for good (the result backend filed its dead letter: ``results.py``)."""
    if not task_id or isinstance(exception, Retry):
        return
    queue = _queue_for(sender, task_id)
    m = _instruments(sender)
    m.tasks.labels(sender.name, queue, "failed").inc()
    if isinstance(exception, PoisonedTask):
        m.tasks.labels(sender.name, queue, "poisoned").inc()


def _on_dead_letter(app: TaskplaneCelery, task: str, task_id: str, queue: str) -> None:
    """``Runtime.on_dead_letter`` of a worker app: its result backend filed a dead letter."""
    app.runtime.metrics.instruments.tasks.labels(task, queue or "<unknown>",
                                                 "dead_lettered").inc()
    log.info("task %s[%s] dead-lettered", task, task_id)


def _queue_for(task: Any, task_id: str) -> str:
    """The queue of ``task_id``: from the request running it if this process runs it (a
    pool process), else from its record (the main process, after a time limit, a revoke
    or a lost process), else the default queue."""
    if task.request and task.request.id == task_id:
        return _queue_of(task)
    record, _ = _lifecycle(task).read(task_id, with_result=False)
    return record.queue if record is not None and record.queue else (
        task.app.runtime.settings.default_queue)


def _on_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    if request is not None and request.id:
        # The result backend stored REVOKED and ended the task; a task that stores no
        # result ends here (a no-op if already ended), adopted if sent around the API.
        _lifecycle(sender).finish(request.id, states.REVOKED,
                                  tenant=lifecycle.tenant_hint(request),
                                  adopt=stock_record(request.id, request, sender.name,
                                                     sender.app.runtime.settings.default_queue))
        queue = _queue_for(sender, request.id)
        _instruments(sender).tasks.labels(sender.name, queue, "revoked").inc()


def _on_rejected(sender: Any = None, **_: Any) -> None:
    """``task_rejected``, ``task_unknown`` (sent by the consumer). The message names no
    registered task or cannot be decoded: its name is not a bounded label value, so all
    such messages count under one."""
    _instruments(sender).tasks.labels("<unknown>", "<unknown>", "rejected").inc()


def _on_process_shutdown(**_: Any) -> None:
    metrics.mark_process_dead(os.getpid())


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    """In the main process: zero every counter series, mark the worker up."""
    runtime = _runtime(sender)
    m = runtime.metrics.instruments
    for spec in runtime.registry:
        for outcome in metrics.OUTCOMES:
            m.tasks.labels(spec.name, spec.queue or runtime.settings.default_queue, outcome)
    for outcome in metrics.WEBHOOK_OUTCOMES:
        m.webhook_deliveries.labels(outcome)
    m.worker_up.labels(_hostname(sender)).set(1)
    # Probes, lease renewal and the loop beat: worker_probes.LeaseStep, on every connection.


def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    """``worker_shutdown`` (sent by the worker, whose hostname the consumer shares)."""
    _instruments(sender).worker_up.labels(_hostname(sender)).set(0)


def _hostname(sender: Any) -> str:
    return str(getattr(sender, "hostname", None) or "worker")


def connect_signals() -> None:
    """Wire the handlers once per process (weak=False: they are module functions)."""
    global _connected
    if _connected:
        return
    signals.task_prerun.connect(_on_prerun, weak=False)
    signals.task_postrun.connect(_on_postrun, weak=False)
    signals.task_failure.connect(_on_failure, weak=False)
    signals.task_revoked.connect(_on_revoked, weak=False)
    signals.task_rejected.connect(_on_rejected, weak=False)
    signals.task_unknown.connect(_on_rejected, weak=False)
    signals.worker_process_shutdown.connect(_on_process_shutdown, weak=False)
    signals.celeryd_init.connect(_on_worker_init, weak=False)
    signals.worker_ready.connect(_on_worker_ready, weak=False)
    signals.worker_shutdown.connect(_on_worker_shutdown, weak=False)
    _connected = True


def consumer_module_logger() -> str:
    """The logger Celery's consumer reports undeliverable messages on, with their whole body
    and headers (which carry the arguments and their reprs).

    Reads Celery's consumer module (not public API); the one place that does.
    ``tests/integration/test_celery_tools.py`` sends an unknown task and fails if its
    arguments reach the worker's log, so a change in Celery shows up there.
    """
    return str(_consumer_module().logger.name)


def _consumer_module() -> ModuleType:
    """``celery.worker.consumer.consumer``, whose logger and templates celery-types leaves
    out: read as a plain module."""
    return importlib.import_module("celery.worker.consumer.consumer")


def _message_dump_templates() -> dict[str, str]:
    """Celery's log templates that dump a message body → the line logged instead."""
    consumer = _consumer_module()

    return {
        consumer.UNKNOWN_TASK_ERROR: "Received unregistered task of type %s (id %s); "
                                     "discarded. Its arguments are not logged.",
        consumer.INVALID_TASK_ERROR: "Received an invalid task message (%s); discarded. "
                                     "Its body is not logged.",
        consumer.UNKNOWN_FORMAT: "Received and deleted a message of unknown format; its "
                                 "body is not logged.",
        consumer.MESSAGE_DECODE_ERROR: "Cannot decode a message body (%s); its body is not "
                                       "logged.",
    }


class RedactMessageDumps(logging.Filter):
    """Celery logs the whole body and headers of a message it cannot run (an unknown task
    name from a foreign client, an invalid or undecodable message): task arguments would
    reach the logs. The line keeps what identifies the message, not its contents."""

    def __init__(self) -> None:
        super().__init__()
        self.templates = _message_dump_templates()

    def filter(self, record: logging.LogRecord) -> bool:
        replacement = self.templates.get(record.msg) if isinstance(record.msg, str) else None
        if replacement is None:
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        first = args[0] if args else None
        if replacement.count("%s") == 2:  # unknown task: its name, and its id from the headers
            headers = args[2] if len(args) > 2 and isinstance(args[2], dict) else {}
            name = str(first.args[0]) if isinstance(first, KeyError) and first.args else str(first)
            record.args = (name[:200], str(headers.get("id", "?"))[:200])
        elif replacement.count("%s") == 1:
            record.args = (type(first).__name__ if isinstance(first, BaseException)
                           else "?",)
        else:
            record.args = ()
        record.msg = replacement
        record.exc_info = None  # the traceback's locals and message may quote the body
        record.exc_text = None
        return True


class RedactReturnValues(logging.Filter):
    """Celery logs each task's return value on success; results can hold anything a tenant
    sent, and task data never reaches Taskplane's logs. The line keeps name, id, runtime."""

    REDACTED = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict) and "return_value" in record.args:
            record.msg = self.REDACTED
        return True


class RedactedResultRequest(CeleryRequest):
    """A task request whose ``task-succeeded`` event says ``<redacted>`` for the result.

    The event carries the result's repr cut to ``resultrepr_maxsize``; Taskplane sets that
    to 0 (the repr is never built at length), which Celery renders as a fragment, ``", ..."``,
    and Flower showed that as if it were the value. The marker says what happened.
    """

    def send_event(self, type: str, **fields: Any) -> None:
        if type == "task-succeeded" and "result" in fields:
            fields["result"] = REDACTED
        super().send_event(type, **fields)


class TaskplaneWorker(CeleryWorker):
    """Celery's worker, whose soft shutdown ends as soon as the tasks it held have ended.

    Celery's ``wait_for_soft_shutdown`` sleeps the whole ``WORKER_SOFT_SHUTDOWN_TIMEOUT``
    once any task runs, even one that ends a moment later. The worker's event loop is
    paused during that wait, so its own bookkeeping cannot tell when the pool finishes;
    the task records can: each run writes its ending there itself. A finished task whose
    message was not yet acknowledged is delivered again and skipped at start (its record
    has ended), so ending the wait early never runs anything twice.
    """

    #: How often the records are read while waiting.
    SOFT_SHUTDOWN_POLL = 0.2

    def wait_for_soft_shutdown(self) -> None:  # type: ignore[override]  # celery-types says bool; Celery's returns None
        timeout = float(self.app.conf.worker_soft_shutdown_timeout or 0)
        running = [r.id for r in tuple(worker_state.active_requests)]
        if timeout <= 0 or not running or self.app.conf.worker_enable_soft_shutdown_on_idle:
            super().wait_for_soft_shutdown()
            return
        log.warning("soft shutdown: waiting up to %ss for %d running task(s)", timeout,
                    len(running))
        life = self.app.runtime.lifecycle
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if life.runs_over(running):
                    return
            except Exception as exc:  # Redis away: keep waiting out the timeout
                log.warning("soft shutdown: cannot read task records: %s", type(exc).__name__)
            time.sleep(min(self.SOFT_SHUTDOWN_POLL, max(0.0, deadline - time.monotonic())))


def create_worker_app(settings: Settings) -> TaskplaneCelery:
    """The worker's Celery app. Side-effect free: ``celery -A taskplane.worker inspect``
    builds it too, inside a live worker's pod, so the metrics directory is prepared and the
    logging set up only when a worker starts (``_on_worker_init``)."""
    app = create_celery(settings, patient=True, on_dead_letter=lambda task, task_id, queue: (
        _on_dead_letter(app, task, task_id, queue)))
    # "terminate" stops the task whichever signal it names (taskplane.pool).
    app.conf.worker_pool = POOL
    # Task events (Flower) carry no return value: results may hold anything a tenant sent.
    for task in app.tasks.values():
        task.resultrepr_maxsize = 0
        # a dotted path, as Celery's own default ('celery.worker.request:Request') is
        task.Request = f"{__name__}:{RedactedResultRequest.__name__}"
    app.steps["consumer"].add(LeaseStep)
    # Celery's ``Worker`` is a writable cached_property; celery-types declares it read-only.
    app.Worker = app.subclass_with_self(TaskplaneWorker)  # type: ignore[misc]  # see above
    connect_signals()
    return app


def _on_worker_init(**_: Any) -> None:
    """``celeryd_init``: in a starting worker's main process, before its pool forks and
    before prometheus-client is imported: the metrics directory is this process's now,
    and the worker's logs leave task data out."""
    metrics.prepare_multiprocess_dir("worker")
    redact_task_data_in_logs()


def redact_task_data_in_logs() -> None:
    """Filter Celery's loggers that would write task arguments or results (once per
    process: the worker's start, not the app factory, sets up logging)."""
    for name, kind in ((celery_trace.logger.name, RedactReturnValues),
                       (consumer_module_logger(), RedactMessageDumps)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())


#: What SIGTERM does to a worker, by default, everywhere: a bare ``taskplane worker``, the
#: worker image and the chart (``workers.defaults.shutdown``) agree on Celery's *warm*
#: shutdown. The worker takes no new message and every running task finishes: nothing is
#: lost (held countdown messages go back to the queue), nothing runs twice, and the wait
#: is bounded by the hard time limit every task has (``DEFAULT_TIME_LIMIT`` or its own),
#: which the chart's grace period covers. *Soft* shutdown (``REMAP_SIGTERM=SIGQUIT``)
#: stops sooner but hands unfinished tasks back to start again from the beginning:
#: repeated work, and a task longer than ``WORKER_SOFT_SHUTDOWN_TIMEOUT`` may never finish
#: under repeated scale-downs. It is a per-pool choice, never the default.
SHUTDOWN_MODEL = "warm"


def worker_argv(settings: Settings, extra: Sequence[str] = ()) -> list[str]:
    """The ``celery worker`` command line the settings describe; ``extra`` wins."""
    queues = settings.worker_queues or tuple(runtime_queues(settings))
    if settings.default_queue in queues:
        # the default queue's workers also take where stock clients send by default and
        # the webhook deliveries, so no deployment forgets either (the chart does likewise)
        queues = (*queues, *(q for q in (STOCK_DEFAULT_QUEUE, settings.webhook_queue)
                             if q not in queues))
    return [
        "worker",
        f"--loglevel={settings.log_level}",
        f"--queues={','.join(queues)}",
        f"--concurrency={settings.worker_concurrency}",
        "--pool=prefork",
        "--without-mingle",  # pool start-up does not wait on other workers' replies
        "--without-gossip",
        *extra,
    ]


def runtime_queues(settings: Settings) -> list[str]:
    return known_queues(settings, Registry.from_modules(settings.task_modules,
                                                        settings.builtin_tasks))


def run(settings: Settings, extra: Sequence[str] = ()) -> None:
    """Start a worker in this process (the container's and the CLI's entry point).

    SIGTERM is Celery's warm shutdown (:data:`SHUTDOWN_MODEL`) unless the environment
    remaps it (``REMAP_SIGTERM=SIGQUIT``: soft), as the chart does for a ``soft`` pool."""
    metrics.prepare_multiprocess_dir("worker")  # this process owns it; before the probes serve
    redis_conn.await_master(settings, "worker")  # behind Sentinel: a master, or exit saying why
    redis_conn.warn_if_too_few_replicas(settings, "worker")
    app = create_worker_app(settings)
    serve_probes(app)  # a taken port stops the worker here, before it takes any task
    # The ``celery`` command itself, handed this app (its ``--app`` takes an app object
    # as a default, as ``app.start`` passes it): its ``main`` returns the worker's exit
    # code, which ``app.worker_main`` and ``app.start`` drop. An unrecoverable error must
    # end the process non-zero so Kubernetes and compose restart it.
    from celery.bin.celery import celery as celery_command

    code = celery_command.main(args=worker_argv(settings, extra), standalone_mode=False,
                               default_map={"app": app})
    if code:
        raise SystemExit(code)


def __getattr__(name: str) -> Any:
    """``celery -A taskplane.worker ...``: Celery reads the module's ``app`` (or ``celery``)
    once; each read builds a new app from the environment, so importing this module
    builds none and no app is kept in it."""
    if name in ("app", "celery"):
        return create_worker_app(Settings.from_env())
    raise AttributeError(name)
