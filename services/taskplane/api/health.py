"""Probes and the API description: no token needed, no tenant data served."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from .. import redis_conn
from .context import api_context
from .errors import error_response
from .openapi import openapi_document

bp = Blueprint("health", __name__)
#: Where an app keeps its serialised description (``app.extensions``).
_OPENAPI = "taskplane.openapi"


@bp.get("/healthz")
def healthz() -> Response:
    """The process serves requests. Never touches Redis: a Redis outage must not restart us."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Redis answers, so a request routed here can be accepted. Behind Sentinel, a failed
    ping also says why (``redis_conn.diagnose``): a wrong master set name, a refused
    sentinel password or silent sentinels each have their own ``sentinel`` code."""
    ctx = api_context()
    try:
        ctx.runtime.lifecycle.ping()
    except Exception as exc:
        details: dict[str, str] = {"reason": type(exc).__name__}
        if redis_conn.is_sentinel(ctx.settings.redis_url):
            problem = redis_conn.diagnose(ctx.settings.redis_url, ctx.settings)
            details["sentinel"] = problem.code if problem else "ok"
        return error_response(503, "broker_unavailable", "Redis is unreachable", details,
                              {"Retry-After": str(ctx.settings.retry_after)})
    return jsonify({"status": "ready"})


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    """Prometheus exposition of every gunicorn worker of this pod."""
    body, content_type = api_context().runtime.metrics.scrape()
    return Response(body, content_type=content_type)


@bp.get("/openapi.json")
def openapi() -> Response:
    """Built once per app, on first request: it depends only on the app's settings and
    registry, and this route needs no token, so it must stay cheap (~10 ms to build)."""
    body = current_app.extensions.get(_OPENAPI)
    if body is None:
        ctx = api_context()
        body = current_app.extensions[_OPENAPI] = current_app.json.dumps(
            openapi_document(ctx.settings, ctx.runtime))
    return Response(body, mimetype="application/json")
