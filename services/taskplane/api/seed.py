"""The blog post's two routes, answering in the post's own shapes.

Kept so a team moving off the post's code changes nothing on the client side;
they do require a token, like every route that touches tasks.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from .. import broker
from ..celery_app import submit
from . import observe
from .auth import authenticate, current_tenant
from .context import api_context
from .errors import ApiError
from .limits import enforce_rate
from .routes import _owned
from .status import error_of

bp = Blueprint("seed", __name__)
bp.before_request(authenticate)
bp.before_request(enforce_rate)

SEED_TASK = "long_running_task"


@bp.get("/start_task/<data>")
def start_task(data: str) -> Response:
    ctx = api_context()
    spec = ctx.runtime.registry.get(SEED_TASK)
    if spec is None:
        raise ApiError(404, "unknown_task", f"task {SEED_TASK!r} is not registered", None)
    kwargs = {"data": data}
    problems = spec.argument_errors([], kwargs)
    if problems:
        raise ApiError(422, "validation_failed", "data is invalid", {"fields": problems})
    outcome = submit(ctx.celery, tenant=current_tenant(), name=SEED_TASK, args=[],
                     kwargs=kwargs, queue=spec.queue or ctx.settings.default_queue,
                     priority=broker.DEFAULT_PRIORITY, rate_limited=True)
    observe.accepted(SEED_TASK)
    return jsonify({"task_id": outcome.task_id, "message": "Task enqueued!"})


@bp.get("/task_status/<task_id>")
def task_status(task_id: str) -> Response:
    status = _owned(task_id)
    state = status.state
    result = status.meta.get("result") if status.meta else None
    if state == "PENDING":
        return jsonify({"state": state, "status": "Pending..."})
    if state in ("FAILURE", "REVOKED", "RETRY"):  # the post's shape for an exception
        return jsonify({"state": state, "status": error_of(result)["message"] or state.lower()})
    return jsonify({"state": state, "result": result})
