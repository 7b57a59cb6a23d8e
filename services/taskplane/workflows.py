"""Workflows: the shape of ``POST /v1/workflows`` bodies, and their messages.

Two bodies, after Celery's canvas:

* ``{"chain": [spec, ...]}``: run the steps in order; each step's result is the next
  step's first argument (as ``celery.chain``). A step that fails for good stops the
  chain; the steps after it end REVOKED.
* ``{"group": [spec, ...], "then": spec | {"chain": [spec, ...]}, "on": "success" |
  "complete"}``: run the members in parallel, then ``then`` once with the list of their
  results in member order (``on: complete``: of their outcomes, ``{"state", "result"}``
  or ``{"state", "error"}``), after every member succeeded (``success``, the default)
  or ended (``complete``).

A ``spec`` is the body of ``POST /v1/tasks``. Nesting stops there: a ``then`` chain's
steps are specs, and a member is never itself a group or chain (422), so the depth of a
workflow is at most two. This module is pure: :func:`parse` names every problem with its
path (``group[3].kwargs.seconds``); :func:`held_stage` turns a message into the form
the lifecycle holds until the stage before it ends.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from . import broker
from .lifecycle import HeldStage
from .lifecycle.workflow_state import BODY_SLOT, NOW_SLOT, TAG_SLOT

#: Message header naming the workflow a task is a member of: the worker then passes the
#: member's result to the ending script, which keeps it for the next stage.
WORKFLOW_HEADER = "taskplane_workflow"
ON_VALUES = ("success", "complete")
_TOP_KEYS = {"chain": {"chain", "notify"}, "group": {"group", "then", "on", "notify"}}


class TooLarge(Exception):
    """A group or chain over its limit (413)."""

    def __init__(self, field: str, limit: int, size: int) -> None:
        super().__init__(f"{field} has {size} entries; at most {limit}")
        self.field, self.limit, self.size = field, limit, size


class Invalid(Exception):
    """A malformed body (422): ``problems`` is a list of ``{field, message}``."""

    def __init__(self, problems: list[dict[str, str]]) -> None:
        super().__init__(f"{len(problems)} problems")
        self.problems = problems


@dataclass(frozen=True)
class Step:
    """One member as submitted: its path in the body, its spec, and whether it takes the
    stage before's outcome as its first argument."""

    path: str
    spec: dict[str, Any]
    stage: int
    position: int
    takes_input: bool


@dataclass(frozen=True)
class Plan:
    kind: str  # chain | group
    on: str
    steps: list[Step]
    notify: Any = None

    @property
    def callback_path(self) -> str | None:
        return next((s.path for s in self.steps if s.stage == 1), None) \
            if self.kind == "group" else None


def parse(body: Any, max_group: int, max_chain: int) -> Plan:
    """The plan of a workflow body; :class:`Invalid` or :class:`TooLarge` if it has none."""
    if not isinstance(body, dict):
        raise Invalid([{"field": "body", "message": "a JSON object"}])
    kinds = [k for k in ("chain", "group") if k in body]
    if len(kinds) != 1:
        raise Invalid([{"field": "body", "message": "exactly one of 'chain' or 'group'"}])
    kind = kinds[0]
    unknown = sorted(set(body) - _TOP_KEYS[kind])
    if unknown:
        raise Invalid([{"field": k, "message": f"not allowed in a {kind} workflow"}
                       for k in unknown])
    on = body.get("on", "success")
    if on not in ON_VALUES:
        raise Invalid([{"field": "on", "message": "one of success, complete"}])
    first = _specs(body[kind], kind, max_group if kind == "group" else max_chain)
    if kind == "chain":
        steps = [Step(p, s, i, 0, i > 0) for i, (p, s) in enumerate(first)]
        return Plan(kind, on, steps, body.get("notify"))
    steps = [Step(p, s, 0, i, False) for i, (p, s) in enumerate(first)]
    then = body.get("then")
    if "then" in body and then is None:
        raise Invalid([{"field": "then", "message": "a spec or {\"chain\": [...]}"}])
    if then is not None:
        if isinstance(then, dict) and "chain" in then:
            if set(then) != {"chain"}:
                raise Invalid([{"field": "then", "message": "a spec or {\"chain\": [...]}"}])
            rest = _specs(then["chain"], "then.chain", max_chain)
        else:
            if isinstance(then, dict) and "group" in then:
                raise Invalid([{"field": "then.group", "message": "a group cannot nest"}])
            rest = [("then", then)]
        steps += [Step(p, s, i + 1, 0, True) for i, (p, s) in enumerate(rest)]
    return Plan(kind, on, steps, body.get("notify"))


def _specs(value: Any, field: str, limit: int) -> list[tuple[str, Any]]:
    if not isinstance(value, list):
        raise Invalid([{"field": field, "message": "a list of task specs"}])
    if not value:
        raise Invalid([{"field": field, "message": "must not be empty"}])
    if len(value) > limit:
        raise TooLarge(field, limit, len(value))
    problems = [{"field": f"{field}[{i}]", "message": "a member cannot be a group or chain"}
                for i, spec in enumerate(value)
                if isinstance(spec, dict) and ("group" in spec or "chain" in spec)]
    if problems:
        raise Invalid(problems)
    return [(f"{field}[{i}]", spec) for i, spec in enumerate(value)]


def held_stage(push: tuple[str, str]) -> HeldStage:
    """A message as ``celery_app.task_message`` made it, in the form a workflow holds:
    the body as plain JSON (no ``body_encoding``: kombu then reads it as is) replaced by
    :data:`BODY_SLOT`, the enqueue time by :data:`NOW_SLOT` and the delivery tag by
    :data:`TAG_SLOT` (each push gets its own), so the ending script
    splices the stage's outcome in as the first argument (``[[`` + input + rest) without
    decoding anything."""
    queue_key, raw = push
    envelope = json.loads(raw)
    body = base64.b64decode(envelope["body"]).decode()
    if not body.startswith("[["):
        raise ValueError("a task body starts with its argument list")
    envelope["body"] = BODY_SLOT.strip('"')
    envelope["properties"].pop("body_encoding", None)
    envelope["properties"]["delivery_tag"] = TAG_SLOT.strip('"')
    envelope["headers"][broker.ENQUEUED_AT_HEADER] = NOW_SLOT.strip('"')
    rest = body[2:] if body.startswith("[[]") else ", " + body[2:]
    return HeldStage(queue_key, json.dumps(envelope), rest)
