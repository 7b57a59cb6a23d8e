"""The per-task schemas of /openapi.json say exactly what the server accepts.

Random bodies, most of them near the boundary (arguments by position and by name, both,
neither, unknown ones, values of the wrong type, unknown queues and tasks, bounds
±1), are judged twice: by the description (plain JSON Schema 2020-12 over the whole
document) and by the server's own checks, in the order the views make them. The two
verdicts must be equal for every body: a fuzzer or a generated client that trusts the
description is never refused a body it allows, nor granted one it forbids.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from taskplane import schedules
from taskplane.api import create_app
from taskplane.api.schedules import _CREATE, _from_body
from taskplane.api.task_specs import positional_names
from taskplane.schedules import ScheduleError
from taskplane.settings import Settings

SETTINGS = Settings.from_env({"AUTH_DISABLED": "true", "TASK_MODULES": "tests.support.tasks",
                              "QUEUES": "parked"})
APP = create_app(SETTINGS)
CTX = APP.extensions["taskplane"]
DOC = APP.test_client().get("/openapi.json").get_json()
REGISTRY = CTX.runtime.registry
QUEUES = CTX.runtime.known_queues()
_REFS = Registry().with_resource("urn:doc", Resource(DOC, DRAFT202012))


def _validator(component: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"urn:doc#/components/schemas/{component}"},
                                           registry=_REFS)


SUBMIT, NEW_SCHEDULE, CHANGE = (_validator(c) for c in ("SubmitTask", "NewSchedule",
                                                         "ScheduleChange"))


def server_accepts_submission(body: dict[str, Any]) -> bool:
    """``routes.submit_task``'s checks, in its order, up to the enqueue."""
    if CTX.submit_validator.errors(body):
        return False
    spec = REGISTRY.get(body["task"])
    if spec is None:
        return False
    queue = body.get("queue") or spec.queue or SETTINGS.default_queue
    if queue not in QUEUES:
        return False
    return not spec.argument_errors(body.get("args", []), body.get("kwargs", {}))


def server_accepts_schedule(body: dict[str, Any]) -> bool:
    """``api/schedules.create_schedule``'s checks, in its order, up to the store."""
    if _CREATE.errors(body):
        return False
    try:
        schedules.check(_from_body(body, "acme", {"created_at": 0.0}), REGISTRY, QUEUES)
    except ScheduleError:
        return False
    return True


# --- bodies near the boundary --------------------------------------------------------

VALUES = st.one_of(st.sampled_from(["", "x", "PNG", "GIF", ";", "a,b\n1,2"]),
                   st.sampled_from([0, 1, -1, 1.5, 1800, 1801, 4096, 4097, None, True]),
                   st.just({"k": [1]}), st.just([1, 2]), st.text(max_size=3))
PARAMETERS = sorted({name for spec in REGISTRY for name in spec.schema.get("properties", {})})
TASK_NAMES = [spec.name for spec in REGISTRY]


@st.composite
def task_part(draw: st.DrawFn) -> dict[str, Any]:
    """A task name and its arguments: usually right, often one thing wrong."""
    name = draw(st.sampled_from([*TASK_NAMES, "no.such.task"]))
    spec = REGISTRY.get(name)
    names = list(spec.schema.get("properties", {})) if spec else []
    body: dict[str, Any] = {"task": name}
    if draw(st.booleans()):
        body["args"] = draw(st.lists(VALUES, max_size=4))
    if draw(st.booleans()) or not body.get("args"):
        pool = [*names, "unknown"] if names else PARAMETERS
        body["kwargs"] = draw(st.dictionaries(st.sampled_from(pool or ["unknown"]), VALUES,
                                              max_size=4))
    return body


@st.composite
def submissions(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(task_part())
    if draw(st.booleans()):
        body["queue"] = draw(st.sampled_from([*QUEUES, "nowhere", "Bad Name"]))
    if draw(st.booleans()):
        body["priority"] = draw(st.sampled_from([0, 9, 10, -1, 1.0, 4.5, "5"]))
    if draw(st.booleans()):
        body["countdown"] = draw(st.sampled_from([0, 5335.4, SETTINGS.max_countdown,
                                                  SETTINGS.max_countdown + 1, -0.5]))
    return body


@st.composite
def new_schedules(draw: st.DrawFn) -> dict[str, Any]:
    body = {"name": draw(st.sampled_from(["nightly", "Bad Name"])), **draw(task_part())}
    if draw(st.booleans()):
        body["cron"] = draw(st.sampled_from(["*/5 * * * *", None]))
    if draw(st.booleans()):
        body["every"] = draw(st.sampled_from([60, 0, 60.0, None, schedules.MAX_EVERY + 1]))
    if draw(st.booleans()):
        body["timezone"] = draw(st.sampled_from(["Europe/Berlin", "UTC", "Mars/Olympus"]))
    if draw(st.booleans()):
        body["queue"] = draw(st.sampled_from([*QUEUES, None, "nowhere"]))
    if draw(st.booleans()):
        body["priority"] = draw(st.sampled_from([0, 9, 10, 3.0]))
    return body


CHECK = settings(max_examples=400, derandomize=True, deadline=None, database=None,
                 suppress_health_check=list(HealthCheck))


@CHECK
@given(submissions())
def test_submission_schema_and_server_agree(body: dict[str, Any]) -> None:
    assert SUBMIT.is_valid(body) == server_accepts_submission(body), body


@CHECK
@given(new_schedules())
def test_new_schedule_schema_and_server_agree(body: dict[str, Any]) -> None:
    assert NEW_SCHEDULE.is_valid(body) == server_accepts_schedule(body), body


# --- the examples the issue names -------------------------------------------------------

@pytest.mark.parametrize(("body", "valid"), [
    ({"task": "long_running_task", "priority": 1.0, "countdown": 5335.4}, False),  # no data
    ({"task": "long_running_task", "args": ["hello"], "kwargs": {"seconds": 3}}, True),
    ({"task": "long_running_task", "args": ["a"], "kwargs": {"data": "b"}}, False),
    ({"task": "long_running_task", "args": ["a", 1, 2]}, False),
    ({"task": "test.fail"}, True),
    ({"task": "test.echo", "kwargs": {"value": None}}, True),
])
def test_named_submissions(body: dict[str, Any], valid: bool) -> None:
    assert SUBMIT.is_valid(body) is valid
    assert server_accepts_submission(body) is valid


def test_cron_and_every_together_are_refused_by_both() -> None:
    body = {"name": "n", "task": "test.fail", "cron": "* * * * *", "every": 60}
    assert not NEW_SCHEDULE.is_valid(body) and not server_accepts_schedule(body)
    assert not CHANGE.is_valid({"cron": "* * * * *", "every": 60})
    assert CHANGE.is_valid({"cron": "* * * * *", "every": None})


# --- the document itself ---------------------------------------------------------------

def test_every_task_type_of_the_app_has_its_schema_and_mapping() -> None:
    schemas = DOC["components"]["schemas"]
    for union in ("SubmitTask", "NewSchedule"):
        mapping = schemas[union]["discriminator"]["mapping"]
        assert set(mapping) == set(TASK_NAMES)
        assert {"test.echo", "long_running_task"} <= set(mapping)  # TASK_MODULES and builtins
        for name, target in mapping.items():
            member = schemas[target.rsplit("/", 1)[1]]
            assert member["properties"]["task"]["const"] == name
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_the_description_follows_the_apps_own_registry() -> None:
    """Built from the app's runtime registry when asked, not from a module global."""
    app = create_app(Settings.from_env({"AUTH_DISABLED": "true"}))
    registry = app.extensions["taskplane"].runtime.registry
    doc = app.test_client().get("/openapi.json").get_json()
    mapping = doc["components"]["schemas"]["SubmitTask"]["discriminator"]["mapping"]
    assert set(mapping) == {spec.name for spec in registry}


def test_bounds_come_from_the_servers_constants() -> None:
    from taskplane import broker
    from taskplane.api import schemas

    paths = DOC["paths"]
    limit = next(p for p in paths["/v1/tasks"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == schemas.MAX_PAGE
    cursor = next(p for p in paths["/v1/tasks"]["get"]["parameters"] if p["name"] == "cursor")
    assert cursor["schema"]["minLength"] == 1
    member = DOC["components"]["schemas"]["SubmitTask.test.echo"]["properties"]
    assert member["countdown"]["maximum"] == SETTINGS.max_countdown
    assert (member["priority"]["minimum"], member["priority"]["maximum"]) == (
        broker.MIN_PRIORITY, broker.MAX_PRIORITY)
    assert member["queue"]["enum"] == QUEUES
    body = paths["/v1/tasks"]["post"]["requestBody"]
    assert body["x-max-body-bytes"] == SETTINGS.max_body_bytes
    assert body["x-max-json-depth"] == 64


def test_positional_names_follow_the_signature() -> None:
    assert positional_names(REGISTRY.get("long_running_task")) == ["data", "seconds"]
    assert positional_names(REGISTRY.get("images.thumbnail")) == ["image_b64", "max_size",
                                                                  "format"]


@pytest.mark.parametrize("raw", ["5", "5.", ".5", "1700000000.25", "1.2.3", ".", "abc",
                                 "\u0661\u0662", "1e5", "-5", "2026-12-04"])
def test_epoch_seconds_as_described_and_as_read(raw: str) -> None:
    """Epoch seconds: the description's pattern and ``routes._timestamp`` agree (strings
    that are no number are an ISO 8601 time or nothing, the ``date-time`` branch)."""
    import re

    from taskplane.api import routes, schemas

    described = re.fullmatch(schemas.EPOCH_PATTERN, raw) is not None
    with APP.test_request_context(f"/v1/tasks?submitted_after={raw}"):
        problems: list[dict[str, str]] = []
        value = routes._timestamp("submitted_after", problems)
    read_as_number = value is not None and raw != "2026-12-04"
    assert described == read_as_number, (raw, value)


def test_no_registered_task_describes_no_valid_body() -> None:
    from taskplane.api.task_specs import task_spec_schemas

    components, union = task_spec_schemas([], "SubmitTask", {})
    assert components == {}
    jsonschema.Draft202012Validator.check_schema(union)
    assert not jsonschema.Draft202012Validator(union).is_valid({"task": "anything"})


def test_operation_ids_are_unique_and_links_name_real_operations() -> None:
    ids = [op["operationId"] for ops in DOC["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    links = [(link, target) for ops in DOC["paths"].values() for op in ops.values()
             for response in op["responses"].values()
             for link, target in response.get("links", {}).items()]
    assert {target["operationId"] for _, target in links} >= {
        "getTask", "revokeTask", "getSchedule", "changeSchedule", "deleteSchedule"}
    assert {target["operationId"] for _, target in links} <= set(ids)


def _own_registry() -> Any:
    """Tasks with a signature the built-ins do not have, registered on their own."""
    from taskplane.tasks.registry import TaskSpec

    def only_positional(a: int, /, b: int = 0) -> None: ...
    def open_schema(x: str, y: object = None) -> None: ...
    def keyword_only(*, k: str) -> None: ...

    specs = [
        TaskSpec(name="t.posonly", func=only_positional, description="", schema={
            "type": "object", "additionalProperties": False, "required": ["a"],
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}),
        TaskSpec(name="t.open", func=open_schema, description="", schema={
            "type": "object", "additionalProperties": True, "required": ["x"],
            "properties": {"x": {"type": "string"}}}),
        TaskSpec(name="t.kwonly", func=keyword_only, description="", schema={
            "type": "object", "additionalProperties": False, "required": ["k"],
            "properties": {"k": {"type": "string"}}}),
    ]
    for spec in specs:
        object.__setattr__(spec, "contract", __import__("taskplane.schema", fromlist=["x"])
                           .CompiledSchema(spec.schema, "kwargs"))
    return specs


@pytest.mark.parametrize(("task", "args", "kwargs"), [
    ("t.posonly", [1], {}), ("t.posonly", [], {"a": 1}), ("t.posonly", [1, 2], {}),
    ("t.posonly", [1], {"b": 2}), ("t.posonly", [], {}), ("t.posonly", [1, 2, 3], {}),
    ("t.open", ["s"], {"y": 1}), ("t.open", ["s", 2], {}), ("t.open", [], {"x": "s", "z": 1}),
    ("t.open", [1], {}), ("t.open", ["s"], {"x": "t"}), ("t.open", [], {"y": 1}),
    ("t.kwonly", [], {"k": "v"}), ("t.kwonly", ["v"], {}), ("t.kwonly", [], {}),
])
def test_unusual_signatures_are_described_as_bound(task: str, args: list[Any],
                                                   kwargs: dict[str, Any]) -> None:
    from taskplane.api.task_specs import task_spec_schemas

    specs = {spec.name: spec for spec in _own_registry()}
    components, union = task_spec_schemas(specs.values(), "S", {})
    doc = {"components": {"schemas": {**components, "S": union}}}
    registry = Registry().with_resource("urn:own", Resource(doc, DRAFT202012))
    validator = jsonschema.Draft202012Validator(
        {"$ref": "urn:own#/components/schemas/S"}, registry=registry)
    body = {"task": task, "args": args, "kwargs": kwargs}
    accepted = not specs[task].argument_errors(args, kwargs)
    assert validator.is_valid(body) is accepted, (body, accepted)


def test_a_workflow_body_with_its_own_webhook_is_valid_by_the_description() -> None:
    """The server takes ``notify`` on a chain or a group (``workflows._TOP_KEYS``): so does
    the description, and a member's spec is the per-task union."""
    body = "/paths/~1v1~1workflows/post/requestBody/content/application~1json/schema"
    validator = jsonschema.Draft202012Validator({"$ref": f"urn:doc#{body}"}, registry=_REFS)
    notify = {"url": "https://hooks.example.com/in", "secret": "whsec_" + "A" * 32}
    step = {"task": "test.echo", "kwargs": {"value": 1}}
    assert validator.is_valid({"chain": [step, step], "notify": notify})
    assert validator.is_valid({"group": [step], "then": step, "notify": notify})
    assert not validator.is_valid({"chain": [step], "notify": {"url": "x"}})
    assert not validator.is_valid({"chain": [{"task": "no.such.task"}]})


def test_an_array_argument_without_items_is_described_with_any_items() -> None:
    """``{"type": "array"}`` means any items; generators need it said (``"items": {}``),
    or openapi-python-client drops the task's whole model."""
    kwargs = DOC["components"]["schemas"]["SubmitTask.test.collect.kwargs"]
    assert kwargs["properties"]["results"] == {"type": "array", "items": {}}
    args = DOC["components"]["schemas"]["SubmitTask.test.collect.args"]
    assert args["prefixItems"][0] == {"type": "array", "items": {}}
