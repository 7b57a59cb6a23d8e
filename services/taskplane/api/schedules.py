"""``/v1/schedules``: each tenant manages its own periodic schedules.

Every write is checked in full before it is stored (the body's shape, the cron expression,
the time zone, the task and its arguments against the task's schema), so a bad schedule is
a 422 naming the field now, not a FAILURE at its first tick. A schedule of another tenant
is a 404, exactly like a schedule that does not exist. Schedules declared in code belong
to the ``system`` tenant: a ``system`` token (operators) sees them and their fire state,
read-only. The schedulers (``scheduler.py``) pick a change up at their next scan.
"""

from __future__ import annotations

import re
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request

from .. import lifecycle, schedules
from ..schedules import Schedule, ScheduleError, ScheduleStore
from ..schema import CompiledSchema
from . import schemas
from .auth import acting_tenant, authenticate, is_operator, scope
from .body import json_body, validate
from .context import api_context
from .errors import ApiError
from .limits import enforce_rate
from .status import iso, load

bp = Blueprint("schedules", __name__, url_prefix="/v1")
bp.before_request(authenticate)
bp.before_request(enforce_rate)

_NAME = re.compile(schedules.NAME_PATTERN)
_CREATE = CompiledSchema(schemas.schedule_schema(create=True), "body")
_PATCH = CompiledSchema(schemas.schedule_schema(create=False), "body")


def _store() -> ScheduleStore:
    return ScheduleStore(api_context().runtime.lifecycle)


def _url(name: str) -> str:
    return f"{request.script_root}{bp.url_prefix}/schedules/{name}"


def _not_found(name: str) -> ApiError:
    shown = name if len(name) <= 64 else name[:61] + "..."
    return ApiError(404, "schedule_not_found", f"no schedule named {shown!r}", {"name": shown})


def _tenant() -> str:
    """Whose schedule a route names: the caller's tenant; an operator names any tenant with
    ``?tenant=`` (the code-declared ``system`` schedules without it)."""
    if is_operator():
        return scope() or lifecycle.SYSTEM_TENANT
    return acting_tenant()


def _declared(tenant: str | None) -> list[Schedule]:
    """Schedules declared in code: the ``system`` tenant's, read-only here."""
    if tenant not in (None, lifecycle.SYSTEM_TENANT):
        return []
    return schedules.declared_in(api_context().runtime.registry)


def _owned(name: str, writing: bool = False) -> Schedule:
    tenant = _tenant()
    schedule = _store().get(tenant, name) if _NAME.fullmatch(name) else None
    if schedule is None:
        schedule = next((s for s in _declared(tenant) if s.name == name), None)
        if schedule is not None and writing:
            raise ApiError(409, "declared_in_code", f"schedule {name!r} is declared in code "
                           "(taskplane.schedules.periodic); change it there", {"name": name})
    if schedule is None:
        raise _not_found(name)
    return schedule


def _checked(schedule: Schedule) -> Schedule:
    runtime = api_context().runtime
    try:
        schedules.check(schedule, runtime.registry, runtime.known_queues())
    except ScheduleError as exc:
        raise ApiError(422, "validation_failed", "the schedule is invalid",
                       {"fields": exc.fields}) from None
    return schedule


def _iso(stamp: float | str | None) -> str | None:
    return iso(float(stamp)) if stamp not in (None, "") else None


def represent(schedule: Schedule) -> dict[str, Any]:
    """The definition with its fire state: last tick handled, last fire and the last
    task's id and state, the next fire, and the counts of fires, skips and misses."""
    ctx = api_context()
    state = ctx.runtime.lifecycle.schedule_state(schedule.ident)
    last_tick = float(state["last_tick"]) if state.get("last_tick") else schedule.created_at
    next_fire = schedule.next_tick(max(last_tick, time.time())) if schedule.enabled else None
    last_task = None
    if state.get("last_task_id"):
        task_id = state["last_task_id"]
        status = load(ctx.celery, task_id)
        last_task = {"id": task_id, "state": status.state if status else "EXPIRED",
                     "links": {"self": f"{request.script_root}/v1/tasks/{task_id}"}}
    return {**schedule.public(), "next_fire_at": _iso(next_fire),
            "last_tick_at": _iso(state.get("last_tick")),
            "last_fired_at": _iso(state.get("last_fired_at")), "last_task": last_task,
            "fires": int(state.get("fires", 0)), "skipped": int(state.get("skipped", 0)),
            "missed": int(state.get("missed", 0)), "links": {"self": _url(schedule.name)}}


def _from_body(body: dict[str, Any], tenant: str, base: dict[str, Any]) -> Schedule:
    fields = {**base, **body}
    if "cron" in body and body["cron"] is not None and "every" not in body:
        fields["every"] = None  # switching to cron
    if "every" in body and body["every"] is not None and "cron" not in body:
        fields["cron"] = None  # switching to an interval
    fields["args"] = tuple(fields.get("args") or ())
    for name in ("every", "priority"):  # JSON Schema's integer includes 5.0: so does ours
        if isinstance(fields.get(name), float) and fields[name].is_integer():
            fields[name] = int(fields[name])
    fields.pop("source", None)
    return Schedule(tenant=tenant, source="api", **fields)


@bp.post("/schedules")
def create_schedule() -> Response:
    body = json_body()
    validate(body, _CREATE, "request body")
    schedule = _checked(_from_body(body, acting_tenant(), {"created_at": time.time()}))
    declared = _declared(schedule.tenant)
    settings = api_context().settings
    cap = settings.max_schedules_per_tenant
    outcome = "exists" if any(s.name == schedule.name for s in declared) else \
        _store().create(schedule, cap)
    if outcome == "exists":
        raise ApiError(409, "schedule_exists", f"a schedule named {schedule.name!r} exists; "
                       "PATCH it or DELETE it first", {"name": schedule.name})
    if outcome == "cap_reached":  # as the cap of unfinished tasks answers (api/limits.py)
        raise ApiError(429, "too_many_schedules",
                       f"tenant has {cap} schedules; DELETE one first", {"limit": cap},
                       {"Retry-After": str(settings.retry_after)})
    response = jsonify(represent(schedule))
    response.status_code = 201
    response.headers["Location"] = _url(schedule.name)
    return response


@bp.get("/schedules")
def list_schedules() -> Response:
    """The caller's schedules; an operator's: every tenant's (or the one ``?tenant=``
    names), each with its ``tenant``."""
    owner = scope()
    stored = _store().all() if owner is None else _store().of_tenant(owner)
    items = []
    for schedule in (*_declared(owner), *stored):
        item = represent(schedule)
        if is_operator():
            item["tenant"] = schedule.tenant
        items.append(item)
    return jsonify({"items": items})


@bp.get("/schedules/<name>")
def get_schedule(name: str) -> Response:
    return jsonify(represent(_owned(name)))


@bp.patch("/schedules/<name>")
def update_schedule(name: str) -> Response:
    current = _owned(name, writing=True)
    body = json_body()
    validate(body, _PATCH, "request body")
    base = {k: v for k, v in current.__dict__.items() if k not in ("tenant",)}
    schedule = _checked(_from_body(body, current.tenant, base))
    if not _store().replace(schedule):  # deleted since it was read: not brought back
        raise _not_found(name)
    return jsonify(represent(schedule))


@bp.delete("/schedules/<name>")
def delete_schedule(name: str) -> Response:
    if not (_NAME.fullmatch(name) and _store().delete(_tenant(), name)):
        _owned(name, writing=True)  # 409 for a schedule declared in code
        raise _not_found(name)
    return Response(status=204)
