"""JSON Schemas of the API's bodies: the validator and the OpenAPI document both read these."""

from __future__ import annotations

import re
from typing import Any

from .. import broker, lifecycle, schedules
from ..settings import QUEUE_NAME_RE

#: Task ids are ours (UUIDs) but clients may send anything in a path: this bounds it.
TASK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
MAX_ARGS = 1000
MAX_IDEMPOTENCY_KEY = 255
#: Printable ASCII without spaces (a schedule's own keys hold spaces: no client can claim one).
IDEMPOTENCY_KEY_PATTERN = rf"^[!-~]{{1,{MAX_IDEMPOTENCY_KEY}}}$"
#: The largest page ``GET /v1/tasks`` returns, and the longest cursor and time it reads.
MAX_PAGE = 200
#: ``GET /v1/dead-letters``: the largest page and the furthest offset.
MAX_DEAD_LETTER_PAGE = 500
MAX_DEAD_LETTER_OFFSET = 1_000_000
MAX_CURSOR = 256  # a cursor this API makes is 80 characters for a UUID task id
MAX_TIMESTAMP = 40  # 2026-11-30T10:25:15.123456+00:00 is 32

#: ``submitted_after``/``submitted_before`` as ``routes._timestamp`` reads them: an
#: RFC 3339 time (Python's ``fromisoformat`` reads them all, and more) or epoch seconds.
EPOCH_PATTERN = r"^([0-9]+\.?[0-9]*|\.[0-9]+)$"
TIME_PARAMETER = {"anyOf": [
    {"type": "string", "format": "date-time", "maxLength": MAX_TIMESTAMP},
    {"type": "string", "pattern": EPOCH_PATTERN, "maxLength": MAX_TIMESTAMP}]}

TERMINAL_STATES = lifecycle.FINAL_STATES
STATES = lifecycle.STATES


def submit_options(max_countdown: int, queues: list[str]) -> dict[str, Any]:
    """The fields of a submission besides the task and its arguments, as the description
    shows them: only the queues this app knows (any other is a 422)."""
    options = dict(submit_schema(max_countdown)["properties"])
    del options["task"], options["args"], options["kwargs"]
    options["queue"] = {**options["queue"], "enum": queues}
    return options


def submit_schema(max_countdown: int) -> dict[str, Any]:
    """The shape the server checks first (the task and its arguments are checked next,
    against the registry); the description's per-task schemas narrow it to each task."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["task"],
        "properties": {
            "task": {"type": "string", "minLength": 1, "maxLength": 200,
                     "description": "Registered task name (see GET /v1/task-types)."},
            "args": {"type": "array", "items": {}, "maxItems": MAX_ARGS,
                     "description": "Positional arguments."},
            "kwargs": {"type": "object", "maxProperties": MAX_ARGS,
                       "description": "Keyword arguments."},
            "queue": {"type": "string", "pattern": QUEUE_NAME_RE.pattern,
                      "description": "Queue to use instead of the task's default."},
            "countdown": {"type": "number", "minimum": 0, "maximum": max_countdown,
                          "description": "Seconds to wait before the task may run."},
            "priority": {"type": "integer", "minimum": broker.MIN_PRIORITY,
                         "maximum": broker.MAX_PRIORITY,
                         "description": f"0-9, 9 most urgent; default {broker.DEFAULT_PRIORITY}."},
        },
    }


ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {},
            },
        },
    },
}

TIMESTAMP = {"type": "string", "format": "date-time"}

TASK: dict[str, Any] = {  # declared so: DEAD_LETTER indexes into it
    "type": "object",
    "required": ["id", "task", "state", "retries", "submitted_at", "links"],
    "properties": {
        "id": {"type": "string"},
        "task": {"type": "string"},
        "state": {"type": "string", "enum": list(STATES)},
        "queue": {"type": "string"},
        "priority": {"type": "integer"},
        "result": {"description": "The task's return value (state SUCCESS)."},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
        "progress": {
            "type": "object",
            "properties": {"percent": {"type": "number"}, "message": {"type": "string"}},
        },
        "retries": {"type": "integer"},
        "submitted_at": TIMESTAMP,
        "eta": TIMESTAMP,
        "started_at": TIMESTAMP,
        "finished_at": TIMESTAMP,
        "links": {"type": "object", "properties": {"self": {"type": "string"}}},
    },
}

TASK_TYPE = {
    "type": "object",
    "required": ["name", "queue", "schema"],
    "properties": {
        "name": {"type": "string"},
        "description": {"type": "string"},
        "queue": {"type": "string"},
        "schema": {"type": "object"},
        "time_limit": {"type": ["integer", "null"]},
        "soft_time_limit": {"type": ["integer", "null"]},
        "max_retries": {"type": "integer"},
    },
}

QUEUE = {
    "type": "object",
    "required": ["name", "waiting", "reserved", "scheduled"],
    "properties": {
        "name": {"type": "string"},
        "waiting": {"type": "integer", "description": "Messages in the queue, all priorities."},
        "reserved": {"type": "integer",
                     "description": "Delivered to a worker, not yet acknowledged."},
        "scheduled": {"type": "integer",
                      "description": "Held by a worker until a future countdown/ETA; not backlog."},
        "oldest_age_seconds": {"type": "number"},
    },
}

DEAD_LETTER = {
    "type": "object",
    "required": ["id", "task", "error", "reason", "failed_at"],
    "properties": {
        "id": {"type": "string"},
        "task": {"type": "string"},
        "queue": {"type": "string"},
        "priority": {"type": "integer"},
        "args": {"type": "array", "items": {}},
        "kwargs": {"type": "object"},
        "error": TASK["properties"]["error"],
        "reason": {"type": "string"},
        "retries": {"type": "integer"},
        "submitted_at": TIMESTAMP,
        "failed_at": TIMESTAMP,
    },
}


# --- periodic schedules (api/schedules.py) ---------------------------------------------

def schedule_schema(*, create: bool) -> dict[str, Any]:
    """The body of ``POST /v1/schedules`` (``create``) or of ``PATCH /v1/schedules/<name>``
    (every field optional; ``name`` comes from the path). The time zone, the cron
    expression and the arguments are checked beyond the schema (``schedules.check``)."""
    properties: dict[str, Any] = {
        "task": {"type": "string", "minLength": 1, "maxLength": 200,
                 "description": "Registered task name (see GET /v1/task-types)."},
        "args": {"type": "array", "items": {}, "maxItems": MAX_ARGS},
        "kwargs": {"type": "object", "maxProperties": MAX_ARGS},
        "cron": {"type": ["string", "null"], "minLength": 1, "maxLength": 200,
                 "description": "Five-field cron expression, in `timezone`; or give `every`."},
        "every": {"type": ["integer", "null"], "minimum": schedules.MIN_EVERY,
                  "maximum": schedules.MAX_EVERY,
                  "description": "Seconds between ticks, on a grid from the Unix epoch."},
        "timezone": {"type": "string", "minLength": 1, "maxLength": 64,
                     "description": "IANA time zone of `cron` (default UTC)."},
        "queue": {"type": ["string", "null"], "pattern": QUEUE_NAME_RE.pattern},
        "priority": {"type": "integer", "minimum": broker.MIN_PRIORITY,
                     "maximum": broker.MAX_PRIORITY},
        "enabled": {"type": "boolean"},
        "overlap": {"enum": list(schedules.OVERLAP),
                    "description": "forbid: skip a tick while the previous run is unfinished; "
                                   "replace: revoke it first."},
        "catch_up": {"enum": list(schedules.CATCH_UP),
                     "description": "What to fire of the ticks missed while no scheduler ran."},
    }
    if create:
        properties = {"name": {"type": "string", "pattern": schedules.NAME_PATTERN},
                      **properties}
    return {"type": "object", "additionalProperties": False,
            "required": ["name", "task"] if create else [], "properties": properties}


#: Non-null ``cron`` and ``every`` together, which no schedule may have.
_BOTH = {"required": ["cron", "every"], "properties": {
    "cron": {"type": "string"}, "every": {"type": "integer"}}}
#: A schedule fires on ``cron`` or ``every``: exactly one of them is given (not null).
#: Written with ``not`` (neither both nor none), which client generators skip, rather
#: than a ``oneOf`` they would turn into two body types.
CRON_OR_EVERY = {"not": {"anyOf": [_BOTH, {"not": {"anyOf": [
    {"required": ["cron"], "properties": {"cron": {"type": "string"}}},
    {"required": ["every"], "properties": {"every": {"type": "integer"}}}]}}]}}


def time_zone_schema() -> dict[str, Any]:
    """The zones this server's tz database knows (``schedules.time_zones``), each with a
    unique ``x-enum-varnames`` name: ``GMT+0``, ``GMT-0`` and ``GMT0`` would otherwise all
    become one generated constant, and a generator refuse the enum."""
    zones = sorted(schedules.time_zones())
    names = [zone.upper().replace("/", "_").replace("+", "_PLUS_").replace("-", "_MINUS_")
             for zone in zones]
    names = [re.sub(r"[^A-Z0-9_]", "_", name) for name in names]
    assert len(set(names)) == len(names), "two time zones share a constant name"
    return {"type": "string", "enum": zones, "x-enum-varnames": names,
            "description": "An IANA time zone this server knows."}


def schedule_options(queues: list[str]) -> dict[str, Any]:
    """The fields of a new schedule besides the task and its arguments, as the description
    shows them: known queues and time zones, cron's syntax as ``format: cron``."""
    options = dict(schedule_schema(create=True)["properties"])
    del options["task"], options["args"], options["kwargs"]
    options["queue"] = {"enum": [*queues, None],
                        "description": "Queue to use instead of the task's default."}
    options["timezone"] = {"$ref": "#/components/schemas/TimeZone",
                           "description": options["timezone"]["description"]}
    options["cron"] = {**options["cron"], "format": "cron"}
    return options


def schedule_change_schema(queues: list[str], tasks: list[str]) -> dict[str, Any]:
    """``PATCH /v1/schedules/<name>`` as described: each field as in a new schedule, never
    both ``cron`` and ``every``. The change is then checked merged into the schedule it
    changes (its arguments against its task), which no schema of the body alone can say."""
    schema = schedule_schema(create=False)
    options = schedule_options(queues)
    schema["properties"] = {**schema["properties"],
                            **{k: v for k, v in options.items() if k in schema["properties"]}}
    schema["properties"]["task"] = {**schema["properties"]["task"], "enum": tasks}
    schema["not"] = _BOTH
    return schema


SCHEDULE = {
    "type": "object",
    "required": ["name", "task", "enabled", "overlap", "catch_up", "next_fire_at", "links"],
    "properties": {
        **schedule_schema(create=True)["properties"],
        "source": {"enum": ["api", "code"]},
        "next_fire_at": {"type": ["string", "null"], "format": "date-time"},
        "last_tick_at": {"type": ["string", "null"], "format": "date-time",
                         "description": "The newest tick handled (fired, skipped or missed)."},
        "last_fired_at": {"type": ["string", "null"], "format": "date-time"},
        "last_task": {"type": ["object", "null"], "properties": {
            "id": {"type": "string"}, "state": {"type": "string"},
            "links": {"type": "object"}}},
        "fires": {"type": "integer"},
        "skipped": {"type": "integer"},
        "missed": {"type": "integer"},
        "links": {"type": "object", "properties": {"self": {"type": "string"}}},
    },
}
