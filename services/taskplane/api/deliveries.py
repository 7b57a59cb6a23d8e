"""Webhook deliveries over the API: each task's and workflow's attempts, the dead
deliveries of a tenant, and retrying one (workers deliver: ``webhook_delivery.py``)."""

from __future__ import annotations

import re
import time

from flask import Blueprint, Response, jsonify

from .. import webhooks
from ..webhooks import DELIVER_TASK
from .auth import authenticate, is_operator, may_see, scope
from .body import json_body
from .context import api_context
from .errors import ApiError
from .limits import enforce_rate
from .routes import _owned as owned_task
from .status import iso
from .workflows import _owned as owned_workflow

bp = Blueprint("deliveries", __name__, url_prefix="/v1")
bp.before_request(authenticate)
bp.before_request(enforce_rate)

_DEAD = re.compile(r"^(task|workflow):([A-Za-z0-9][A-Za-z0-9_.:-]{0,127}):"
                   r"(SUCCESS|FAILURE|REVOKED)$")


@bp.get("/tasks/<task_id>/deliveries")
def task_deliveries(task_id: str) -> Response:
    owned_task(task_id)
    return jsonify({"items": api_context().runtime.lifecycle.delivery_attempts("task",
                                                                               task_id)})


@bp.get("/workflows/<workflow_id>/deliveries")
def workflow_deliveries(workflow_id: str) -> Response:
    owned_workflow(workflow_id)
    return jsonify({"items": api_context().runtime.lifecycle.delivery_attempts(
        "workflow", workflow_id)})


@bp.get("/webhook-deliveries/dead")
def dead_deliveries() -> Response:
    """Deliveries that failed for ``WEBHOOK_RETRY_PERIOD``, newest first (an operator's:
    every tenant's)."""
    entries = api_context().runtime.lifecycle.dead_deliveries(scope(), 200)
    items = []
    for member, died in entries:
        kind, rest = member.split(":", 1)
        subject, state = rest.rsplit(":", 1)
        items.append({"id": member, "kind": kind, "subject": subject, "state": state,
                      "died_at": iso(died)})
    return jsonify({"items": items})


@bp.post("/webhook-deliveries/dead/<delivery_id>/retry")
def retry_dead_delivery(delivery_id: str) -> Response:
    """Send a dead delivery again, with a fresh retry period; of concurrent retries one
    wins (the others: 404)."""
    ctx = api_context()
    match = _DEAD.fullmatch(delivery_id)
    found = ctx.runtime.lifecycle.notify_of(match[1], match[2]) if match else None
    if match is None or found is None or not may_see(found[1]) or \
            not ctx.runtime.lifecycle.revive_delivery(found[1], delivery_id):
        raise ApiError(404, "delivery_not_found", f"no dead delivery {delivery_id[:200]!r}",
                       {"id": delivery_id[:200]})
    kind, subject, state = match[1], match[2], match[3]
    ctx.celery.send_task(DELIVER_TASK, args=[state, kind, subject],
                         kwargs={"since": time.time()}, ignore_result=True,
                         queue=ctx.settings.webhook_queue)
    response = jsonify({"id": delivery_id, "state": "queued"})
    response.status_code = 202
    return response


def _operator_only() -> None:
    if not is_operator():
        raise ApiError(403, "operator_only", "only an operator token may register webhook "
                       "endpoints", None)


@bp.get("/webhook-endpoints")
def list_endpoints() -> Response:
    """The registered endpoints the caller may see (a tenant: its own), secrets withheld."""
    endpoints = api_context().runtime.lifecycle.webhook_endpoints()
    return jsonify({"items": [{"tenant": t, "url": e["url"]} for t, e in sorted(endpoints.items())
                              if may_see(t)]})


@bp.put("/webhook-endpoints/<tenant>")
def set_endpoint(tenant: str) -> Response:
    """An operator registers the tenant's webhook: every task of the tenant submitted
    without its own ``notify`` then notifies it (within ``ENDPOINTS_CACHE`` seconds)."""
    _operator_only()
    ctx = api_context()
    body = json_body()
    problems = webhooks.notify_problems(body, ctx.settings.webhook_allow_private,
                                        ctx.settings.webhook_allow_http)
    if problems or not 0 < len(tenant) <= 128:
        raise ApiError(422, "validation_failed", "endpoint is invalid",
                       {"fields": problems or [{"field": "tenant", "message": "1-128 chars"}]})
    ctx.runtime.lifecycle.set_webhook_endpoint(tenant, {"url": body["url"],
                                                        "secret": body["secret"]})
    return jsonify({"tenant": tenant, "url": body["url"]})


@bp.delete("/webhook-endpoints/<tenant>")
def delete_endpoint(tenant: str) -> Response:
    _operator_only()
    if not api_context().runtime.lifecycle.set_webhook_endpoint(tenant, None):
        raise ApiError(404, "endpoint_not_found", f"no endpoint for tenant {tenant[:128]!r}",
                       None)
    return Response(status=204)
