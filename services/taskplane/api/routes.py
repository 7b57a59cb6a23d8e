"""The ``/v1`` API: submit, inspect and revoke tasks; list task types, queues, dead letters."""

from __future__ import annotations

import math
import re
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for

from .. import broker, lifecycle, webhooks
from ..celery_app import TenantCapReached, retry_dead_letter_task, revoke, submit
from ..lifecycle import TaskRecord, fingerprint
from ..schema import CompiledSchema
from . import follow, observe, schemas
from .auth import authenticate, current_tenant, is_operator, may_see, scope
from .body import json_body, validate
from .context import api_context
from .errors import UNAVAILABLE, ApiError
from .limits import enforce_rate
from .status import TaskStatus, iso, load, not_found, represent

bp = Blueprint("v1", __name__, url_prefix="/v1")
bp.before_request(authenticate)
bp.before_request(enforce_rate)

_TASK_ID = re.compile(schemas.TASK_ID_PATTERN)
_IDEMPOTENCY_KEY = re.compile(schemas.IDEMPOTENCY_KEY_PATTERN)


def _owned(task_id: str) -> TaskStatus:
    """The task if it exists and the caller may see it (its tenant, or an operator);
    another tenant's task is 404 too."""
    if not _TASK_ID.fullmatch(task_id):
        raise not_found(task_id)
    status = load(api_context().celery, task_id)
    if status is None or not may_see(status.record.tenant):
        raise not_found(task_id)
    return status


def _owned_or_unavailable(task_id: str) -> TaskStatus:
    """:func:`_owned` for a follower: Redis being away is a 503 that names the task."""
    try:
        return _owned(task_id)
    except UNAVAILABLE:
        raise follow.unavailable(task_id) from None


def task_url(task_id: str) -> str:
    """``url_for("v1.get_task")`` without the URL map: ids match ``_TASK_ID`` (no
    characters to quote), and this runs on every submission."""
    return f"{request.script_root}{bp.url_prefix}/tasks/{task_id}"


def accepted(status: TaskStatus, replayed: bool = False) -> Response:
    url = task_url(status.record.id)
    response = jsonify(represent(status, url))
    response.status_code = 202
    response.headers["Location"] = url
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.post("/tasks")
def submit_task() -> Response:
    ctx = api_context()
    body = json_body()
    validate(body, ctx.submit_validator, "request body")
    spec = ctx.runtime.registry.get(body["task"])
    if spec is None:
        raise ApiError(404, "unknown_task", f"no task type named {body['task']!r}",
                       {"task": body["task"], "see": url_for("v1.task_types")})
    args, kwargs = body.get("args", []), body.get("kwargs", {})
    queue = body.get("queue") or spec.queue or ctx.settings.default_queue
    if queue not in ctx.runtime.known_queues():
        raise ApiError(422, "validation_failed", "request body is invalid",
                       {"fields": [{"field": "queue",
                                    "message": f"unknown queue {queue!r}; known: "
                                               f"{', '.join(ctx.runtime.known_queues())}"}]})
    problems = spec.argument_errors(args, kwargs)
    if problems:
        raise ApiError(422, "validation_failed", f"arguments do not match {spec.name!r}",
                       {"fields": problems, "schema": spec.schema})
    notify = body.get("notify")
    if notify is not None:
        notify_problems = webhooks.notify_problems(notify, ctx.settings.webhook_allow_private,
                                                   ctx.settings.webhook_allow_http)
        if notify_problems:
            raise ApiError(422, "validation_failed", "notify is invalid",
                           {"fields": notify_problems})
    key = _idempotency_key()
    idempotency = (key, fingerprint(body)) if key is not None else None
    for _ in range(2):
        outcome = submit(ctx.celery, tenant=current_tenant(), name=spec.name, args=args,
                         kwargs=kwargs, queue=queue,
                         priority=int(body.get("priority", broker.DEFAULT_PRIORITY)),
                         countdown=body.get("countdown"), idempotency=idempotency,
                         rate_limited=True, notify=notify)
        if outcome.record is not None:
            observe.accepted(spec.name)
            return accepted(TaskStatus(outcome.record, None))
        status = load(ctx.celery, outcome.task_id)
        if status is not None:
            return accepted(status, replayed=True)
        # the first task's record expired just now: the key starts afresh
    raise ApiError(409, "idempotency_conflict", "this Idempotency-Key's task keeps changing",
                   None)


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(400, "invalid_idempotency_key",
                       f"Idempotency-Key must be 1-{schemas.MAX_IDEMPOTENCY_KEY} printable "
                       "ASCII characters without spaces", None)
    return key


@bp.get("/tasks")
def list_tasks() -> Response:
    """The caller's tasks (an operator's: every tenant's, each with its ``tenant``), newest
    first, filtered, a cursor-paginated page at a time."""
    ctx = api_context()
    owner = scope()
    query, limit, cursor = _task_query(owner)
    rows, last = ctx.runtime.lifecycle.list_tasks(query, limit, cursor)
    backend = ctx.celery.backend
    items = []
    for record, raw_meta in rows:
        meta = backend.decode_result(raw_meta) if raw_meta else None
        item = represent(TaskStatus(record, meta), task_url(record.id))
        if is_operator():
            item["tenant"] = record.tenant
        items.append(item)
    return jsonify({"items": items, "next": last.encode() if last is not None else None})


def _task_query(tenant: str | None) -> tuple[lifecycle.TaskQuery, int, lifecycle.Cursor | None]:
    args, problems = request.args, []
    state = args.get("state")
    if state is not None and state not in lifecycle.STATES:
        problems.append({"field": "state", "message": f"one of {', '.join(lifecycle.STATES)}"})
    for name in ("task", "queue"):
        value = args.get(name)
        if value is not None and not 0 < len(value) <= 200:
            problems.append({"field": name, "message": "1-200 characters"})
    after, before = _timestamp("submitted_after", problems), _timestamp("submitted_before",
                                                                      problems)
    limit = 50
    raw_limit = args.get("limit", "50")
    if not (raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 6
            and 1 <= int(raw_limit) <= schemas.MAX_PAGE):
        problems.append({"field": "limit", "message": f"integer 1-{schemas.MAX_PAGE}"})
    else:
        limit = int(raw_limit)
    cursor = None
    if args.get("cursor") is not None:
        try:
            if len(args["cursor"]) > schemas.MAX_CURSOR:
                raise ValueError("too long")
            cursor = lifecycle.Cursor.decode(args["cursor"])
        except ValueError:
            problems.append({"field": "cursor", "message": "not a cursor this API returned"})
    if problems:
        raise ApiError(422, "validation_failed", "query parameters are invalid",
                       {"fields": problems})
    query = lifecycle.TaskQuery(tenant=tenant, state=state, task=args.get("task"),
                                queue=args.get("queue"), after=after, before=before)
    return query, limit, cursor


def _timestamp(name: str, problems: list[dict[str, str]]) -> float | None:
    """An ISO 8601 time (a zone or Z; none means UTC) or epoch seconds, as epoch seconds."""
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        if len(raw) > schemas.MAX_TIMESTAMP:
            raise ValueError("too long")
        value = float(raw) if raw.isascii() and raw.replace(".", "", 1).isdigit() else None
        if value is None:
            parsed = datetime.fromisoformat(raw)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            value = parsed.timestamp()
    except (ValueError, OverflowError):
        value = None
    if value is None or not math.isfinite(value):
        problems.append({"field": name, "message": "an ISO 8601 time or epoch seconds"})
        return None
    return value


@bp.get("/tasks/<task_id>")
def get_task(task_id: str) -> Response:
    """The task; with ``?wait=N`` (seconds, at most ``MAX_WAIT``) as soon as it has ended,
    or after N seconds as it is then."""
    seconds = _wait_seconds()
    status = _owned_or_unavailable(task_id) if seconds else _owned(task_id)
    waited = None
    if seconds:
        status, waited = follow.wait(status, seconds, task_url(task_id))
    response = jsonify(represent(status, task_url(task_id)))
    if waited is not None:
        response.headers[follow.WAIT_HEADER] = waited
        if waited in (follow.REFUSED, follow.INTERRUPTED):
            response.headers["Retry-After"] = str(api_context().settings.retry_after)
    return response


@bp.get("/tasks/<task_id>/events")
def task_events(task_id: str) -> Response:
    """Server-Sent Events: the task's state (and progress) each time it changes, until it
    ends."""
    status = _owned_or_unavailable(task_id)
    stream = follow.events(status, task_url(task_id))
    return Response(stream, mimetype="text/event-stream", direct_passthrough=True,
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _wait_seconds() -> float:
    raw = request.args.get("wait")
    if raw is None:
        return 0.0
    try:
        seconds = float(raw) if raw.isascii() else -1.0
    except ValueError:
        seconds = -1.0
    most = api_context().settings.max_wait
    if not (math.isfinite(seconds) and 0 <= seconds <= most):
        raise ApiError(422, "validation_failed", f"wait must be 0-{most:g} seconds",
                       {"fields": [{"field": "wait", "message": f"number 0-{most:g}"}]})
    return seconds


@bp.delete("/tasks/<task_id>")
def revoke_task(task_id: str) -> Response:
    ctx = api_context()
    status = _owned(task_id)
    terminate = _flag("terminate")
    revoked = revoke(ctx.celery, status.record.id, status.record.tenant, terminate=terminate)
    if revoked.outcome == "final":
        raise ApiError(409, "task_finished", f"task already ended in state {revoked.previous}",
                       {"state": revoked.previous})
    if revoked.outcome == "running":
        raise ApiError(409, "task_running",
                       "task is running; DELETE with ?terminate=true to stop it",
                       {"state": _shown_running(status)})
    if revoked.outcome != "revoked":  # its record expired meanwhile
        raise not_found(task_id)
    revoked_status = TaskStatus(replace(status.record, state=lifecycle.REVOKED), None)
    response = jsonify(represent(_reread(task_id, revoked_status), task_url(task_id)))
    response.status_code = 202
    return response


def _reread(task_id: str, known: TaskStatus) -> TaskStatus:
    """The task as stored after a change this request made, or ``known`` if it cannot be
    read back: the change happened, and a 503 would say it did not."""
    try:
        return load(api_context().celery, task_id) or known
    except UNAVAILABLE:
        return known


def _shown_running(status: TaskStatus) -> str:
    return status.state if status.state in lifecycle.RUNNING_STATES else lifecycle.STARTED


@bp.get("/task-types")
def task_types() -> Response:
    ctx = api_context()
    return jsonify({"items": [spec.public(ctx.settings.default_queue)
                              for spec in ctx.runtime.registry]})


@bp.get("/queues")
def queues() -> Response:
    runtime = api_context().runtime
    now = time.time()
    return jsonify({"items": [
        {"name": q.name, "waiting": q.waiting, "reserved": q.reserved,
         "scheduled": q.scheduled, "oldest_age_seconds": round(q.oldest_age(now), 3)}
        for q in runtime.broker.queue_stats(runtime.known_queues())
    ]})


def _flag(name: str) -> bool:
    value = request.args.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise ApiError(422, "validation_failed", f"{name} must be true or false",
                       {"fields": [{"field": name, "message": "true or false"}]})
    return value in ("true", "1")


#: ``limit`` and ``offset`` of a dead-letter page: (default, lowest, highest).
_PAGE = {"limit": (50, 1, schemas.MAX_DEAD_LETTER_PAGE),
         "offset": (0, 0, schemas.MAX_DEAD_LETTER_OFFSET)}


def _page() -> tuple[int, int]:
    """``limit`` and ``offset``; each refused one is named in ``details``."""
    values, problems = {}, []
    for name, (default, low, high) in _PAGE.items():
        raw = request.args.get(name, str(default))
        # no more digits than the bound has: never a number too long to parse
        if raw.isascii() and raw.isdigit() and len(raw) <= len(str(high)) \
                and low <= int(raw) <= high:
            values[name] = int(raw)
        else:
            problems.append({"field": name, "message": f"integer {low}-{high}"})
    if problems:
        raise ApiError(422, "validation_failed", "query parameters are invalid",
                       {"fields": problems})
    return values["limit"], values["offset"]


def _dead_letter(entry: dict[str, Any], with_tenant: bool) -> dict[str, Any]:
    """A dead letter as shown: its tenant only to an operator, who sees every tenant's."""
    out = {k: v for k, v in entry.items() if with_tenant or k != "tenant"}
    out["submitted_at"] = iso(entry.get("submitted_at"))
    out["failed_at"] = iso(entry.get("failed_at"))
    return out


@bp.get("/dead-letters")
def dead_letters() -> Response:
    limit, offset = _page()
    tenant = scope()
    total, entries = api_context().runtime.lifecycle.dead_letters(tenant, limit, offset)
    return jsonify({"items": [_dead_letter(e, is_operator()) for e in entries], "total": total,
                    "limit": limit, "offset": offset})


@bp.post("/dead-letters/<task_id>/retry")
def retry_dead_letter(task_id: str) -> Response:
    ctx = api_context()
    valid = bool(_TASK_ID.fullmatch(task_id))
    # an operator (scope None) finds any tenant's, and acts for that tenant
    found = ctx.runtime.lifecycle.dead_letter_raw(scope(), task_id) if valid else None
    if found is None:
        status = load(ctx.celery, task_id) if valid else None
        if status is not None and may_see(status.record.tenant):
            raise _not_dead_lettered(task_id, status.state)
        raise ApiError(404, "dead_letter_not_found", f"no dead letter with id {task_id!r}",
                       {"id": task_id})
    read, entry = found
    tenant = str(entry["tenant"])
    if ctx.runtime.registry.get(entry["task"]) is None:
        raise ApiError(409, "unknown_task",
                       f"task type {entry['task']!r} is no longer registered", None)
    outcome = retry_dead_letter_task(ctx.celery, tenant, task_id, read)
    if outcome.outcome == "cap_reached":
        raise TenantCapReached(tenant)
    if outcome.outcome != "queued":  # another request retried it first
        status = load(ctx.celery, task_id)
        raise _not_dead_lettered(task_id, status.state if status else "PENDING")
    observe.accepted(entry["task"])
    queued = TaskRecord(id=task_id, tenant=tenant, task=entry["task"], queue=entry["queue"],
                        priority=int(entry["priority"]), submitted_at=time.time())
    return accepted(_reread(task_id, TaskStatus(queued, None)))


def _not_dead_lettered(task_id: str, state: str) -> ApiError:
    return ApiError(409, "not_dead_lettered",
                    f"task {task_id!r} is not in the dead letters (state {state}): another "
                    "request retried it, or it never failed for good", {"id": task_id,
                                                                        "state": state})


def submit_validator(max_countdown: int) -> CompiledSchema:
    return CompiledSchema(schemas.submit_schema(max_countdown), "body")

