"""A JSON Schema compiled once: a fast verdict for every request, detailed errors for bad ones.

Every submission is checked against two schemas (the request body's and the task's
arguments'), so the check sits on the hot path. ``jsonschema_rs`` (Rust) gives the verdict
in well under a microsecond; ``jsonschema`` (Python), ~15 µs a check, explains a refusal,
field by field, in the messages clients and tests already know. Where the two disagree on
validity, the Rust verdict stands: its ``pattern`` follows ECMA-262, the regex dialect
JSON Schema specifies (Python's ``re`` lets ``\\d`` match any Unicode digit, for one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jsonschema
import jsonschema_rs


class CompiledSchema:
    """``errors(instance)``: ``[]`` when valid, else one ``{field, message}`` per failure."""

    def __init__(self, schema: Mapping[str, Any], root: str) -> None:
        document = dict(schema)
        cls = jsonschema.validators.validator_for(document)
        cls.check_schema(document)
        self.root = root
        self._explain = cls(document)
        self._verdict = jsonschema_rs.validator_for(document)

    def is_valid(self, instance: Any) -> bool:
        try:
            return bool(self._verdict.is_valid(instance))
        except (ValueError, TypeError, OverflowError):  # a value Rust cannot hold: ask Python
            return bool(self._explain.is_valid(instance))

    def errors(self, instance: Any) -> list[dict[str, str]]:
        if self.is_valid(instance):
            return []
        found = sorted(self._explain.iter_errors(instance), key=lambda e: list(e.absolute_path))
        if found:
            return [describe_error(e, self.root) for e in found]
        # Only the ECMA-262 dialect refuses it (see the module docstring): say so in its words.
        return [_describe_rust_error(e, self.root) for e in self._verdict.iter_errors(instance)]


def describe_error(err: jsonschema.ValidationError, root: str) -> dict[str, str]:
    """A schema error as ``{field, message}``; a missing property is named as the field."""
    path = ".".join(str(p) for p in err.absolute_path)
    if err.validator == "required" and "'" in err.message:
        path = ".".join(filter(None, [path, err.message.split("'")[1]]))
    return {"field": path or root, "message": _short(err.message)}


def _describe_rust_error(err: Any, root: str) -> dict[str, str]:
    path = ".".join(str(p) for p in err.instance_path)
    return {"field": path or root, "message": _short(err.message)}


def _short(message: str) -> str:
    return message if len(message) <= 200 else message[:197] + "..."
