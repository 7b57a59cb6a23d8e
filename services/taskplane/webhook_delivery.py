"""Webhook deliveries on workers: the message an ending pushes, and the task that sends it.

At submission, :func:`notify_field` builds the JSON stored in the record's (or the
workflow's) ``notify`` field: the target and secret, and the delivery task's message
held as ``workflows.held_stage`` holds a stage's. The script that ends the task pushes it
with the final state as first argument (``workflow_lib.lua`` ``notify_end``), so every
ending gets its delivery or none is recorded. The worker that takes it runs
:func:`deliver_event`: read the subject, POST the signed event, log the attempt, retry
with back-off until ``WEBHOOK_RETRY_PERIOD`` after the ending, then list it as dead.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from celery import Task

from . import webhooks, workflows
from .webhooks import DELIVER_TASK, EVENTS

if TYPE_CHECKING:
    from .runtime import TaskplaneCelery

log = logging.getLogger("taskplane.webhooks")


def notify_field(app: TaskplaneCelery, tenant: str, kind: str, subject: str,
                 notify: dict[str, str]) -> str:
    """The ``notify`` field of a task's record or a workflow's hash."""
    from .celery_app import new_task_id, task_message  # celery_app registers this module

    settings = app.runtime.settings
    push = task_message(app, task_id=new_task_id(), tenant=tenant, name=DELIVER_TASK,
                        args=[kind, subject], kwargs={}, queue=settings.webhook_queue,
                        priority=5, now=time.time())
    held = workflows.held_stage(push)
    return json.dumps({"url": notify["url"], "secret": notify["secret"],
                       "msg": held.template, "queue": held.queue_key, "rest": held.body_rest})


def _event(app: TaskplaneCelery, kind: str, subject: str, state: str) -> dict[str, Any]:
    """The event's ``data``: what the subject's status shows, enough to act on."""
    life = app.runtime.lifecycle
    if kind == "workflow":
        found = life.read_workflow(subject)
        if found is None:
            return {"id": subject, "state": state}
        return {"id": subject, "kind": found.kind, "state": found.state,
                "counts": found.counts, "callback": found.callback or None}
    record, meta_raw = life.read(subject, True)
    data: dict[str, Any] = {"id": subject, "state": state}
    if record is not None:
        data.update(task=record.task, queue=record.queue, workflow=record.workflow)
    meta = json.loads(meta_raw) if meta_raw else None  # as stored: errors stay plain JSON
    if meta and state == "SUCCESS":
        data["result"] = meta.get("result")
    elif meta and state == "FAILURE":
        result = meta.get("result") or {}
        message = result.get("exc_message", "")
        if isinstance(message, list):
            message = " ".join(str(m) for m in message)
        data["error"] = {"type": result.get("exc_type", "Error"), "message": str(message)[:2000]}
    return data


def deliver_event(task: Task, state: str, kind: str, subject: str,
                  since: float | None = None) -> str:
    """One attempt of a delivery (the body of :data:`DELIVER_TASK`); retries run for
    ``WEBHOOK_RETRY_PERIOD`` from the ending, or from ``since`` (a dead delivery retried
    over the API)."""
    app: TaskplaneCelery = task.app  # type: ignore[assignment]
    settings = app.runtime.settings
    life = app.runtime.lifecycle
    found = life.notify_of(kind, subject)
    if found is None:
        return "gone"  # the record expired, or it never asked
    notify, tenant, ended_at = found
    msg_id = webhooks.event_id(kind, subject, state, ended_at)
    event_type = EVENTS.get((kind, state), f"{kind}.ended")
    problem = webhooks.target_problem(notify["url"], settings.webhook_allow_private,
                                      settings.webhook_allow_http)
    if problem:
        attempt = webhooks.Attempt(time.time(), 0, 0.0, f"refused: {problem}")
    else:
        payload = {"type": event_type, "timestamp": _iso(time.time()),
                   "data": _event(app, kind, subject, state)}
        attempt = webhooks.post(notify["url"], notify["secret"], msg_id, payload,
                                settings.webhook_timeout)
    started = since or (float(ended_at) if ended_at else time.time())
    over = problem is not None or time.time() >= started + settings.webhook_retry_period
    outcome = "delivered" if attempt.ok else ("dead" if over else "retried")
    life.log_delivery(kind, subject, state, tenant, attempt.as_json(), outcome == "dead")
    found_metrics = app.runtime.metrics.instruments
    found_metrics.webhook_deliveries.labels(outcome).inc()
    found_metrics.webhook_latency.observe(attempt.latency_ms / 1000)
    if outcome == "retried":
        raise task.retry(countdown=webhooks.backoff(task.request.retries or 0),
                         max_retries=None)
    if outcome == "dead":
        log.warning("webhook delivery %s of %s %s is dead: %s", msg_id, kind, subject,
                    attempt.error or attempt.status)
    return outcome


def _iso(when: float) -> str:
    from datetime import UTC, datetime
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def register(app: TaskplaneCelery) -> None:
    """Add :data:`DELIVER_TASK` to ``app`` (not to the task registry: clients cannot
    submit it). Its result is not stored: the attempts log says what happened."""
    settings = app.runtime.settings

    @app.task(name=DELIVER_TASK, bind=True, ignore_result=True, acks_late=True,
              max_retries=None, time_limit=int(settings.webhook_timeout) + 30,
              soft_time_limit=int(settings.webhook_timeout) + 20, shared=False)
    def deliver(self: Task, state: str, kind: str, subject: str,
                since: float | None = None) -> str:
        return deliver_event(self, state, kind, subject, since)

    app.conf.task_routes = {**(app.conf.task_routes or {}),
                            DELIVER_TASK: {"queue": settings.webhook_queue}}
