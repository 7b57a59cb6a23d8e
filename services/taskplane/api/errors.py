"""One error shape for every failure: ``{"error": {"code", "message", "details"}}``.

Clients get the right status and a machine-readable code; nothing a client sends
can produce a traceback. Redis being away is a 503 with ``Retry-After``, because
the client should simply try again, and nothing was accepted. A change Redis may have
applied without confirming it (a timeout after the command was sent) is a 503 that says
the outcome is unknown (``outcome_unknown``), never "nothing was accepted".
"""

from __future__ import annotations

import logging
from typing import Any

import kombu.exceptions
import redis
from flask import Flask, Response, g, jsonify
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from ..lifecycle import OutcomeUnknown

log = logging.getLogger("taskplane.api")

#: Errors that mean "the broker or result store cannot be reached right now".
UNAVAILABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
    ConnectionError,
    TimeoutError,
)

#: Werkzeug's statuses mapped to stable codes clients can switch on.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    414: "uri_too_long",
    417: "expectation_failed",
    422: "validation_failed",
    429: "too_many_requests",
    431: "header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "unavailable",
}


def envelope(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The one error body, for Flask's answers and for gunicorn's own (``gunicorn_conf``)."""
    return {"error": {"code": code, "message": message, "details": details}}


class ApiError(Exception):
    """Raise from a view to answer with the error envelope."""

    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> Response:
    g.error_code = code  # for the rejection counter; a bounded set of codes
    response = jsonify(envelope(code, message, details))
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def init_app(app: Flask, retry_after: int) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        headers = {}
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            headers["Allow"] = ", ".join(exc.valid_methods)
        message = exc.description or exc.name
        if status == 413:
            message = f"request body is larger than {app.config['MAX_CONTENT_LENGTH']} bytes"
        return error_response(status, HTTP_CODES.get(status, "error"), message, None, headers)

    def _unavailable(exc: Exception) -> Response:
        log.warning("redis unavailable: %s", type(exc).__name__)
        return error_response(
            503, "broker_unavailable", "the task broker is unreachable; nothing was accepted",
            None, {"Retry-After": str(retry_after)})

    for exc_type in UNAVAILABLE:
        app.register_error_handler(exc_type, _unavailable)

    @app.errorhandler(OutcomeUnknown)
    def _unknown(exc: OutcomeUnknown) -> Response:
        log.warning("redis did not confirm a change: %s", type(exc.cause).__name__)
        return error_response(
            503, "outcome_unknown",
            "Redis did not confirm the change in time: it may or may not have taken effect. "
            "Check the task (details.id), or repeat the request with the same "
            "Idempotency-Key: it returns the task if it exists and creates it if not.",
            {"id": exc.task_id or None}, {"Retry-After": str(retry_after)})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error", None)
