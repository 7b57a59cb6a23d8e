"""Per-tenant limits: a request rate, and a cap on unfinished tasks.

Both live in Redis, so they hold across every API pod. Either answers 429 with a
``Retry-After`` a client can honour; neither loses anything (nothing was accepted).
"""

from __future__ import annotations

import math

from flask import Flask, Response, request

from ..celery_app import IdempotencyConflict, RateLimited, TenantCapReached
from .auth import current_tenant
from .context import api_context
from .errors import ApiError, error_response

#: Routes whose submit script takes the request's token itself, in the same Redis step
#: as the task (``lifecycle.submit``): a submission costs one round trip.
TOKEN_IN_SUBMIT = frozenset({"v1.submit_task", "seed.start_task"})


def enforce_rate() -> None:
    """``before_request`` hook after authentication: one token per request."""
    settings = api_context().settings
    if settings.rate_limit <= 0 or request.endpoint in TOKEN_IN_SUBMIT:
        return
    wait = api_context().runtime.lifecycle.take_token(current_tenant(), settings.rate_limit,
                                                      settings.rate_limit_burst)
    if wait > 0:
        raise _rate_limited(wait)


def _rate_limited(wait: float) -> ApiError:
    settings = api_context().settings
    return ApiError(429, "rate_limited",
                    f"more than {settings.rate_limit:g} requests a second; slow down",
                    {"limit_per_second": settings.rate_limit, "burst": settings.rate_limit_burst},
                    {"Retry-After": str(max(1, math.ceil(wait)))})


def init_app(app: Flask) -> None:
    @app.errorhandler(RateLimited)
    def _rate(exc: RateLimited) -> Response:
        err = _rate_limited(exc.retry_after)
        return error_response(err.status, err.code, err.message, err.details, err.headers)

    @app.errorhandler(IdempotencyConflict)
    def _conflict(exc: IdempotencyConflict) -> Response:
        return error_response(409, "idempotency_conflict",
                              "this Idempotency-Key was used with a different body",
                              {"id": exc.task_id})

    @app.errorhandler(TenantCapReached)
    def _cap(exc: TenantCapReached) -> Response:
        settings = api_context().settings
        return error_response(
            429, "too_many_open_tasks",
            f"tenant has {settings.max_open_tasks_per_tenant} unfinished tasks; wait for some "
            "to finish", {"limit": settings.max_open_tasks_per_tenant},
            {"Retry-After": str(settings.retry_after)})
