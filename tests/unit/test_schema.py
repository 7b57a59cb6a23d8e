"""The compiled schema: the Rust verdict decides, Python's jsonschema explains refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from celery import Celery

from taskplane.runtime import TaskplaneCelery
from taskplane.schema import CompiledSchema

SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["n"],
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9},
                   "code": {"type": "string", "pattern": "^\\d+$"}},
}


def test_valid_instances_have_no_errors() -> None:
    schema = CompiledSchema(SCHEMA, "kwargs")
    assert schema.errors({"n": 3}) == [] and schema.errors({"n": 3.0, "code": "12"}) == []


def test_refusals_name_every_field_in_jsonschema_words() -> None:
    errors = CompiledSchema(SCHEMA, "kwargs").errors({"n": True, "extra": 1})
    assert {e["field"] for e in errors} == {"n", "kwargs"}
    assert any("is not of type 'integer'" in e["message"] for e in errors)
    missing = CompiledSchema(SCHEMA, "kwargs").errors({})
    assert missing == [{"field": "n", "message": "'n' is a required property"}]


def test_numbers_rust_cannot_hold_are_judged_exactly() -> None:
    schema = CompiledSchema(SCHEMA, "kwargs")
    assert schema.errors({"n": 10**30}) and schema.errors({"n": -(10**30)})


def test_pattern_follows_ecma_262_as_json_schema_specifies() -> None:
    """Python's ``\\d`` matches any Unicode digit; JSON Schema's (ECMA-262) only 0-9. The
    Rust verdict stands, and the refusal is explained in its words."""
    errors = CompiledSchema(SCHEMA, "kwargs").errors({"n": 1, "code": "\u0661\u0662"})
    assert len(errors) == 1 and errors[0]["field"] == "code"


def test_now_is_celerys_now_without_the_detour() -> None:
    ours, stock = TaskplaneCelery(set_as_current=False), Celery(set_as_current=False)
    for app in (ours, stock):
        app.conf.update(timezone="UTC", enable_utc=True)
    a, b = ours.now(), stock.now()
    assert a.tzinfo is not None and a.utcoffset() == b.utcoffset() == timedelta(0)
    assert abs(a - b) < timedelta(seconds=5) and abs(a - datetime.now(UTC)) < timedelta(seconds=5)
