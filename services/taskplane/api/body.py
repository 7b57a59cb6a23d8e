"""Reading a JSON request body strictly: size, media type, encoding, syntax, shape.

Each failure has its own status so a client knows what to fix: 413 too large,
415 not JSON, 400 not valid UTF-8 JSON (NaN and Infinity included: they are not
JSON), 422 valid JSON of the wrong shape.
"""

from __future__ import annotations

import json
import math
from typing import Any

from flask import current_app, request

from ..schema import CompiledSchema
from .errors import ApiError

#: Nesting deeper than this is refused before Python's recursion limit is near.
MAX_DEPTH = 64


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 overflows to infinity, which JSON cannot carry
        raise ValueError(f"number {text[:40]} is out of range")
    return value


#: Digits an integer may have: far beyond any field's range, far below the point where
#: Python refuses to convert one (``sys.set_int_max_str_digits``, 4300).
MAX_INT_DIGITS = 400


def _bounded_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise ValueError(f"number {text[:40]}... is out of range")
    return int(text)


def json_body() -> Any:
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type",
                       "send the body as JSON with 'Content-Type: application/json'",
                       {"content_type": request.content_type})
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None:
        raw = request.get_data(cache=True)  # Flask refused a larger Content-Length (413)
    else:
        # A chunked body has no length to refuse up front, and Flask's stream would stop
        # quietly at the limit: read one byte past it from the server's own stream.
        raw = request.environ["wsgi.input"].read(limit + 1)
    if len(raw) > limit:
        raise ApiError(413, "payload_too_large", f"request body is larger than {limit} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "malformed_json", "body is not valid UTF-8",
                       {"position": exc.start}) from None
    if text.count("[") + text.count("{") > MAX_DEPTH and _too_deep(text):
        raise ApiError(400, "malformed_json", f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float,
                          parse_int=_bounded_int)
    except (ValueError, RecursionError) as exc:
        details = {"line": exc.lineno, "column": exc.colno} if isinstance(
            exc, json.JSONDecodeError) else None
        message = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise ApiError(400, "malformed_json", f"body is not valid JSON: {message}",
                       details) from None


def _too_deep(text: str) -> bool:
    """Cheap bracket-depth scan (strings skipped) so deep nesting never reaches the parser."""
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def validate(instance: Any, schema: CompiledSchema, what: str) -> None:
    """422 naming every failing field of ``instance``."""
    errors = schema.errors(instance)
    if errors:
        raise ApiError(422, "validation_failed", f"{what} is invalid", {"fields": errors})
