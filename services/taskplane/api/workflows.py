"""The ``/v1/workflows`` API: submit a chain or a group with a callback, read, list.

Every member is checked at the door as ``POST /v1/tasks`` checks a task (422 naming the
member: ``group[3].kwargs.seconds``), then the whole workflow is accepted in one atomic
step (``lifecycle.submit_workflow``) or not at all. What happens after is the
lifecycle's: see ``lifecycle/workflow_state.py``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from typing import Any

from celery.exceptions import TaskRevokedError
from flask import Blueprint, Response, jsonify, request

from .. import broker, lifecycle, webhook_delivery, webhooks, workflows
from ..celery_app import (
    IdempotencyConflict,
    TenantCapReached,
    new_task_id,
    result_backend,
    task_message,
)
from ..lifecycle import Member, TaskRecord, Workflow, WorkflowDraft, fingerprint
from ..tasks.registry import TaskSpec
from . import follow, schemas
from .auth import authenticate, current_tenant, may_see, scope
from .body import json_body
from .context import api_context
from .errors import ApiError
from .followers import Refused, followers
from .limits import enforce_rate
from .routes import _flag, _idempotency_key, task_url
from .status import iso

bp = Blueprint("workflows", __name__, url_prefix="/v1")
bp.before_request(authenticate)
bp.before_request(enforce_rate)

_ID = re.compile(schemas.TASK_ID_PATTERN)
#: Stands for the outcome a step receives when its arguments are checked at the door.
_INPUT = object()


def workflow_url(workflow_id: str) -> str:
    return f"{request.script_root}{bp.url_prefix}/workflows/{workflow_id}"


@bp.post("/workflows")
def submit_workflow() -> Response:
    ctx = api_context()
    body = json_body()
    settings = ctx.settings
    try:
        plan = workflows.parse(body, settings.workflow_max_group, settings.workflow_max_chain)
    except workflows.TooLarge as exc:
        raise ApiError(413, "workflow_too_large", str(exc),
                       {"field": exc.field, "limit": exc.limit, "size": exc.size}) from None
    except workflows.Invalid as exc:
        raise ApiError(422, "validation_failed", "workflow body is invalid",
                       {"fields": exc.problems}) from None
    if plan.notify is not None:
        found_problems = webhooks.notify_problems(plan.notify, settings.webhook_allow_private,
                                                  settings.webhook_allow_http)
        if found_problems:
            raise ApiError(422, "validation_failed", "workflow body is invalid",
                           {"fields": found_problems})
    tenant = current_tenant()
    workflow_id = new_task_id()
    now = time.time()
    problems: list[dict[str, str]] = []
    members: list[Member] = []
    held: dict[int, lifecycle.HeldStage] = {}
    header = {workflows.WORKFLOW_HEADER: workflow_id}
    for step in plan.steps:
        checked = _check(step, problems)
        if checked is None:
            continue
        spec, args, kwargs, queue, priority, countdown = checked
        record = TaskRecord(id=new_task_id(), tenant=tenant, task=spec.name, queue=queue,
                            priority=priority, submitted_at=now,
                            eta=now + countdown if countdown else None)
        if step.spec.get("notify") is not None:
            record.notify = webhook_delivery.notify_field(ctx.celery, tenant, "task",
                                                          record.id, step.spec["notify"])
        push = task_message(ctx.celery, task_id=record.id, tenant=tenant, name=spec.name,
                            args=args, kwargs=kwargs, queue=queue, priority=priority,
                            now=now, countdown=countdown, headers=header)
        if step.stage == 0:
            members.append(Member(record, step.stage, step.position, push))
        else:
            members.append(Member(record, step.stage, step.position))
            held[step.stage] = workflows.held_stage(push)
    if problems:
        raise ApiError(422, "validation_failed", "workflow members are invalid",
                       {"fields": problems})
    callback = next((m.record.id for m in members if m.stage == 1), "") \
        if plan.kind == "group" else ""
    draft = WorkflowDraft(id=workflow_id, tenant=tenant, kind=plan.kind, on=plan.on,
                          members=members, held=held, callback=callback)
    notify = plan.notify if plan.notify is not None else \
        ctx.runtime.lifecycle.webhook_endpoints().get(tenant)
    if notify is not None:  # its own, or the tenant's registered endpoint
        draft.notify = webhook_delivery.notify_field(ctx.celery, tenant, "workflow",
                                                     workflow_id, notify)
    key = _idempotency_key()
    idempotency = (key, fingerprint(body)) if key is not None else None
    outcome = ctx.runtime.lifecycle.submit_workflow(
        draft, cap=settings.max_open_tasks_per_tenant, idempotency=idempotency)
    if outcome.outcome == "cap_reached":
        raise TenantCapReached(tenant)
    if outcome.outcome == "conflict":
        raise IdempotencyConflict(outcome.workflow_id)
    found = ctx.runtime.lifecycle.read_workflow(outcome.workflow_id)
    if found is None:  # a replayed workflow that expired just now
        raise ApiError(409, "idempotency_conflict",
                       "this Idempotency-Key's workflow keeps changing", None)
    url = workflow_url(found.id)
    response = jsonify({"id": found.id, "kind": found.kind, "state": found.state,
                        "links": {"self": url}})
    response.status_code = 202
    response.headers["Location"] = url
    if outcome.outcome == "replay":
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _check(step: workflows.Step, problems: list[dict[str, str]]
           ) -> tuple[TaskSpec, list[Any], dict[str, Any], str, int, float | None] | None:
    """The member's task, arguments, queue, priority and countdown, or None after adding
    what is wrong with it (each field named under the member's path) to ``problems``."""
    ctx = api_context()
    path, body = step.path, step.spec

    def add(found: list[dict[str, str]]) -> None:
        problems.extend({"field": f"{path}.{p['field']}" if p["field"] != "body" else path,
                         "message": p["message"]} for p in found)

    errors = ctx.submit_validator.errors(body)
    if errors:
        add(errors)
        return None
    spec = ctx.runtime.registry.get(body["task"])
    if spec is None:
        add([{"field": "task", "message": f"no task type named {body['task']!r}"}])
        return None
    if step.stage > 0 and body.get("countdown"):
        add([{"field": "countdown", "message": "only members of the first stage may wait"}])
        return None
    args, kwargs = list(body.get("args", [])), dict(body.get("kwargs", {}))
    queue = body.get("queue") or spec.queue or ctx.settings.default_queue
    if queue not in ctx.runtime.known_queues():
        add([{"field": "queue", "message": f"unknown queue {queue!r}"}])
        return None
    found = _argument_errors(spec, args, kwargs, step.takes_input)
    if body.get("notify") is not None:
        found += webhooks.notify_problems(body["notify"], ctx.settings.webhook_allow_private,
                                          ctx.settings.webhook_allow_http)
    if found:
        add(found)
        return None
    return (spec, args, kwargs, queue, int(body.get("priority", broker.DEFAULT_PRIORITY)),
            body.get("countdown"))


def _argument_errors(spec: TaskSpec, args: list[Any], kwargs: dict[str, Any],
                     takes_input: bool) -> list[dict[str, str]]:
    """``spec.argument_errors``; for a step that receives the stage before's outcome as
    its first argument, the rest are checked with that argument's parameter left out
    (its value is known only when the stage before ends)."""
    if not takes_input:
        return spec.argument_errors(args, kwargs)
    try:
        named = spec.bind_arguments([_INPUT, *args], kwargs)
    except TypeError as exc:
        return [{"field": "args" if "positional" in str(exc) else "kwargs",
                 "message": f"{exc} (the first argument is the stage before's outcome)"}]
    slot = next((name for name, value in named.items() if value is _INPUT), None)
    named = {k: (None if v is _INPUT else v) for k, v in named.items()}
    return [p for p in spec.contract.errors(named)
            if slot is None or (p["field"].split(".")[-1] != slot
                                and not p["field"].startswith(f"kwargs.{slot}"))]


def _owned(workflow_id: str) -> Workflow:
    found = api_context().runtime.lifecycle.read_workflow(workflow_id) \
        if _ID.fullmatch(workflow_id) else None
    if found is None or not may_see(found.tenant):
        shown = workflow_id[:128]
        raise ApiError(404, "workflow_not_found", f"no workflow with id {shown!r}",
                       {"id": shown})
    return found


def represent(found: Workflow, with_members: bool = True) -> dict[str, Any]:
    total = found.total
    out: dict[str, Any] = {
        "id": found.id, "kind": found.kind, "on": found.on, "state": found.state,
        "created_at": iso(found.created_at),
        "finished_at": iso(found.finished_at),
        "total": total, "counts": found.counts,
        "progress": math.floor(100 * found.ended / total) if total else 100,
    }
    if found.reason:
        out["reason"] = found.reason
    if with_members:
        ids = [i for stage in found.stages for i in stage]
        states = api_context().runtime.lifecycle.member_states(ids)
        shown = [[{"id": i, "state": states.get(i, "EXPIRED"), "links": {"self": task_url(i)}}
                  for i in stage] for stage in found.stages]
        if found.kind == "chain":
            out["steps"] = [s[0] for s in shown]
        else:
            out["members"] = shown[0]
            out["then"] = [s[0] for s in shown[1:]]
        out["callback"] = found.callback or None
    out["links"] = {"self": workflow_url(found.id)}
    return out


@bp.get("/workflows/<workflow_id>")
def get_workflow(workflow_id: str) -> Response:
    return jsonify(represent(_owned(workflow_id)))


#: How often a workflow's event stream reads the workflow. A workflow has no result key
#: to subscribe to (its members do); reading one hash is cheap.
EVENT_POLL = 0.5


@bp.get("/workflows/<workflow_id>/events")
def workflow_events(workflow_id: str) -> Response:
    """Server-Sent Events: ``event: state`` with the workflow's state, counts and progress
    each time they change, until it ends (or after ``MAX_EVENT_STREAM`` seconds). Counts
    change at every member's ending, so this reads the workflow every ``EVENT_POLL``
    seconds, holding one of the API process's follower slots (``followers.py``)."""
    ctx = api_context()
    found = _owned(workflow_id)
    hub, tenant = followers(), found.tenant
    try:
        hub.admit(tenant, "events")
    except Refused as refused:
        raise follow._refused(refused) from None
    life, lasts, url = ctx.runtime.lifecycle, ctx.settings.max_event_stream, workflow_url(
        workflow_id)

    def stream() -> Iterator[str]:
        try:
            deadline, current, sent, n = time.monotonic() + lasts, found, None, 0
            while True:
                body = json.dumps(_summary(current, url), separators=(",", ":"))
                if body != sent:
                    n += 1
                    yield f"id: {n}\nevent: state\ndata: {body}\n\n"
                    sent = body
                if current.state in lifecycle.FINAL_STATES or time.monotonic() >= deadline:
                    return
                time.sleep(EVENT_POLL)
                current = life.read_workflow(workflow_id) or current
        finally:
            hub.release(tenant, "events")

    return Response(stream(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _summary(found: Workflow, url: str) -> dict[str, Any]:
    total = found.total
    return {"id": found.id, "kind": found.kind, "state": found.state, "total": total,
            "counts": found.counts,
            "progress": math.floor(100 * found.ended / total) if total else 100,
            "finished_at": iso(found.finished_at), "links": {"self": url}}


@bp.delete("/workflows/<workflow_id>")
def cancel_workflow(workflow_id: str) -> Response:
    """Revoke every member not yet started (each counted in the workflow by its revoke,
    so the workflow ends REVOKED once its running members end); running ones too with
    ``?terminate=true``, whose processes are then killed in one broadcast."""
    ctx = api_context()
    found = _owned(workflow_id)
    terminate = _flag("terminate")
    life, backend = ctx.runtime.lifecycle, result_backend(ctx.celery)
    error = backend.encode_result(TaskRevokedError("workflow cancelled via API"), "REVOKED")
    revoked, running, kill = 0, 0, []
    for member in (i for stage in found.stages for i in stage):
        outcome = life.revoke(member, found.tenant, terminate=terminate,
                              result=backend.encode_state(member, error, "REVOKED"))
        if outcome.outcome == "revoked":
            revoked += 1
            if outcome.previous == lifecycle.STARTED:
                kill.append(member)
        elif outcome.outcome == "running":
            running += 1
    if kill:
        ctx.celery.control.revoke(kill, terminate=True, signal="SIGKILL")
    body = represent(_owned(workflow_id))
    body["cancelled"] = {"revoked": revoked, "running": running}
    response = jsonify(body)
    response.status_code = 202
    return response


@bp.get("/workflows")
def list_workflows() -> Response:
    raw_limit = request.args.get("limit", "50")
    if not (raw_limit.isascii() and raw_limit.isdigit()
            and 1 <= int(raw_limit) <= schemas.MAX_PAGE):
        raise ApiError(422, "validation_failed", "query parameters are invalid",
                       {"fields": [{"field": "limit",
                                    "message": f"integer 1-{schemas.MAX_PAGE}"}]})
    before = None
    cursor = request.args.get("cursor")
    if cursor is not None:
        try:
            before = float(cursor) if len(cursor) <= 40 and cursor.isascii() else math.nan
        except ValueError:
            before = math.nan
        if not math.isfinite(before):
            raise ApiError(422, "validation_failed", "query parameters are invalid",
                           {"fields": [{"field": "cursor",
                                        "message": "not a cursor this API returned"}]})
    owner = scope()
    items, last = api_context().runtime.lifecycle.list_workflows(owner, int(raw_limit), before)
    shown = []
    for found in items:
        item = represent(found, with_members=False)
        if owner is None:
            item["tenant"] = found.tenant
        shown.append(item)
    return jsonify({"items": shown, "next": repr(last) if last is not None else None})
