"""The OpenAPI 3.1 description of every route, built from the same schemas the views use.

A unit test checks that its paths and methods are exactly Flask's url map, so
the document cannot drift from the code; the fuzz tests read it to attack us.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..runtime import Runtime
from ..settings import Settings
from . import body, schemas
from .auth import MAX_TENANT_NAME
from .task_specs import task_spec_schemas

_ERRORS = {
    400: "Malformed JSON, or a malformed header.",
    401: "Missing, malformed or unknown bearer token.",
    403: "A tenant's token named a tenant (`?tenant=` is for operator tokens only), or a "
         "tenant's token asked for what only an operator may do (webhook endpoints).",
    404: "No such task, task type, dead letter or schedule (or it belongs to another tenant).",
    405: "Method not allowed on this path.",
    409: "Conflicts with the resource's state.",
    413: "Body larger than MAX_BODY_BYTES.",
    414: "Request line (path and query) longer than the server reads (8190 bytes).",
    415: "Body is not JSON.",
    422: "Valid JSON that breaks the schema; details name each field.",
    429: "Tenant over its request rate, its cap of unfinished tasks, its cap of schedules or "
         "its share of followers (`?wait`, event streams), or the API process holds "
         "MAX_FOLLOWERS; retry after Retry-After.",
    503: "Redis is unreachable (`broker_unavailable`: nothing was accepted), or it did not "
         "confirm a change in time (`outcome_unknown`: it may have taken effect; `details.id` "
         "names the task). Retry after Retry-After seconds, with the same Idempotency-Key.",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, ok: int, ok_schema: dict[str, Any], errors: tuple[int, ...],
        *, auth: bool = True, **extra: Any) -> dict[str, Any]:
    responses: dict[str, Any] = {str(ok): _json(ok_schema, "Success.")}
    codes = set(errors) | ({401, 429, 503} if auth else set())
    for code in sorted(codes):
        responses[str(code)] = _json(_ref("Error"), _ERRORS[code])
    if ok == 202:
        responses["202"]["headers"] = {"Location": {"schema": {"type": "string"}}}
    for code in (429, 503):
        if str(code) in responses:
            responses[str(code)]["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
    op: dict[str, Any] = {"summary": summary, "responses": responses, **extra}
    if not auth:
        op["security"] = []
    return op


def _event_stream(op: dict[str, Any]) -> dict[str, Any]:
    """Each event of the stream: ``event: state`` with a Task, as JSON, in ``data``."""
    event = {"type": "object", "required": ["data"], "properties": {
        "event": {"enum": ["state", "error"]},
        "id": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": _ref("Task")}}}
    op["responses"]["200"] = {
        "description": "`event: state` with the Task as JSON `data`, each time it changes; "
                       "the stream ends when the task has ended (or after MAX_EVENT_STREAM s). "
                       "If Redis goes away it sends `event: error` (its `data` names the task "
                       "and `retry_after`) and ends; `retry:` and `id:` let a client reconnect "
                       "with Last-Event-ID.",
        "content": {"text/event-stream": {"schema": event}}}
    return op


#: ``?tenant=`` where an operator names one tenant (``auth.py``); a tenant's token gets 403.
_TENANT = {"name": "tenant", "in": "query", "required": False,
           "schema": {"type": "string", "minLength": 1, "maxLength": MAX_TENANT_NAME},
           "description": "Operators only: just this tenant's."}

_TASK_ID = {"name": "task_id", "in": "path", "required": True,
            "schema": {"type": "string", "maxLength": 128}}


def openapi_document(settings: Settings, runtime: Runtime) -> dict[str, Any]:
    """The description of this app: its settings' bounds, its registry's task types and
    its known queues (a deployment with its own ``TASK_MODULES`` describes its tasks)."""
    queues = runtime.known_queues()
    submit_components, submit_union = task_spec_schemas(
        runtime.registry, "SubmitTask", schemas.submit_options(settings.max_countdown, queues))
    schedule_components, schedule_union = task_spec_schemas(
        runtime.registry, "NewSchedule", schemas.schedule_options(queues), required=["name"],
        constraints=schemas.CRON_OR_EVERY)
    items = lambda ref: {"type": "object", "required": ["items"],  # noqa: E731
                         "properties": {"items": {"type": "array", "items": _ref(ref)}}}
    paths: dict[str, Any] = {
        "/v1/tasks": {"get": _op(
            "The caller's tasks, newest first (cursor-paginated)", 200,
            {"type": "object", "required": ["items", "next"], "properties": {
                "items": {"type": "array", "items": _ref("Task")},
                "next": {"type": ["string", "null"],
                         "description": "Pass as `cursor` for the next page; null at the end. "
                                        "A page may hold fewer than `limit` tasks."}}},
            (403, 414, 422), parameters=[
                _TENANT,
                {"name": "state", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": list(schemas.STATES)}},
                {"name": "task", "in": "query", "required": False,
                 "schema": {"type": "string", "minLength": 1, "maxLength": 200}},
                {"name": "queue", "in": "query", "required": False,
                 "schema": {"type": "string", "minLength": 1, "maxLength": 200}},
                {"name": "submitted_after", "in": "query", "required": False,
                 "schema": schemas.TIME_PARAMETER, "description": "ISO 8601 or epoch seconds"},
                {"name": "submitted_before", "in": "query", "required": False,
                 "schema": schemas.TIME_PARAMETER, "description": "ISO 8601 or epoch seconds"},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": schemas.MAX_PAGE}},
                {"name": "cursor", "in": "query", "required": False,
                 "schema": {"type": "string", "minLength": 1, "maxLength": schemas.MAX_CURSOR,
                            "pattern": "^[A-Za-z0-9_-]+$"},
                 "description": "The `next` of the previous page (opaque: no other value "
                                "is accepted)."},
            ]), "post": _op(
            "Submit a task", 202, _ref("Task"), (400, 404, 409, 413, 415, 422),
            requestBody=_body(settings, "SubmitTask"),
            parameters=[{"name": "Idempotency-Key", "in": "header", "required": False,
                         "schema": {"type": "string", "minLength": 1,
                                    "maxLength": schemas.MAX_IDEMPOTENCY_KEY,
                                    "pattern": schemas.IDEMPOTENCY_KEY_PATTERN}}],
        )},
        "/v1/tasks/{task_id}": {
            "get": _op("A task's state, result or error", 200, _ref("Task"), (404, 422),
                       parameters=[_TASK_ID, {
                           "name": "wait", "in": "query", "required": False,
                           "schema": {"type": "number", "minimum": 0,
                                      "maximum": settings.max_wait},
                           "description": "Answer as soon as the task has ended, or after "
                                          "this many seconds with its state then. The "
                                          "answer's Taskplane-Wait header says whether it "
                                          "waited (`waited`), found no room to (`refused`) "
                                          "or was cut short by a shutdown (`interrupted`)."}]),
            "delete": _op("Revoke a task", 202, _ref("Task"), (404, 409, 422), parameters=[
                _TASK_ID,
                {"name": "terminate", "in": "query", "required": False,
                 "schema": {"type": "boolean"},
                 "description": "Also stop the task if it is running."},
            ]),
        },
        "/v1/tasks/{task_id}/events": {"get": _event_stream(_op(
            "Server-Sent Events of the task's state and progress until it ends", 200,
            {"type": "string"}, (404,), parameters=[_TASK_ID]))},
        "/v1/task-types": {"get": _op("The task registry", 200, items("TaskType"), ())},
        "/v1/queues": {"get": _op("Waiting and reserved messages per queue", 200,
                                  items("Queue"), ())},
        "/v1/dead-letters": {"get": _op(
            "Tasks that failed for good", 200,
            {**items("DeadLetter"), "properties": {
                "items": {"type": "array", "items": _ref("DeadLetter")},
                "total": {"type": "integer"}, "limit": {"type": "integer"},
                "offset": {"type": "integer"}}},
            (403, 422), parameters=[
                _TENANT,
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1,
                            "maximum": schemas.MAX_DEAD_LETTER_PAGE}},
                {"name": "offset", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 0,
                            "maximum": schemas.MAX_DEAD_LETTER_OFFSET}},
            ])},
        "/v1/dead-letters/{task_id}/retry": {"post": _op(
            "Enqueue a dead letter again under its id", 202, _ref("Task"), (404, 409),
            parameters=[_TASK_ID])},
        **_schedule_paths(settings),
        **_workflow_paths(),
        "/start_task/{data}": {"get": _op(
            "The blog post's enqueue route (long_running_task)", 200,
            {"type": "object", "required": ["task_id", "message"],
             "properties": {"task_id": {"type": "string"}, "message": {"type": "string"}}},
            (404, 422), parameters=[{"name": "data", "in": "path", "required": True,
                                     "schema": {"type": "string"}}])},
        "/task_status/{task_id}": {"get": _op(
            "The blog post's status route", 200,
            {"type": "object", "required": ["state"],
             "properties": {"state": {"type": "string"}, "status": {"type": "string"},
                            "result": {}}},
            (404,), parameters=[_TASK_ID])},
        "/healthz": {"get": _op("Liveness: the process serves requests", 200,
                                {"type": "object"}, (), auth=False)},
        "/readyz": {"get": _op("Readiness: Redis answers", 200, {"type": "object"}, (503,),
                               auth=False)},
        "/metrics": {"get": {
            "summary": "Prometheus metrics of this API pod", "security": [],
            "responses": {"200": {"description": "Prometheus text exposition.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": _op("This document", 200, {"type": "object"}, (),
                                     auth=False)},
    }
    _name_operations(paths)
    _link(paths["/v1/tasks"]["post"], "202", "id", "task_id",
          ("getTask", "revokeTask", "taskEvents", "retryDeadLetter"))
    _link(paths["/v1/dead-letters/{task_id}/retry"]["post"], "202", "id", "task_id",
          ("getTask", "revokeTask"))
    _link(paths["/v1/schedules"]["post"], "201", "name", "name",
          ("getSchedule", "changeSchedule", "deleteSchedule"))
    return {
        "openapi": "3.1.0",
        "info": {"title": "Taskplane API", "version": __version__,
                 "description": "Submit Python background tasks to Celery workers on Redis."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "SubmitTask": submit_union,
                **submit_components,
                "Task": schemas.TASK,
                "TaskType": schemas.TASK_TYPE,
                "Queue": schemas.QUEUE,
                "DeadLetter": schemas.DEAD_LETTER,
                "Error": schemas.ERROR,
                "NewSchedule": schedule_union,
                **schedule_components,
                "ScheduleChange": schemas.schedule_change_schema(
                    queues, [spec.name for spec in runtime.registry]),
                "TimeZone": schemas.time_zone_schema(),
                "Schedule": schemas.SCHEDULE,
            },
        },
    }


#: ``operationId`` of each operation: the names links use, and generated clients' names.
OPERATION_IDS = {
    ("/v1/tasks", "get"): "listTasks", ("/v1/tasks", "post"): "submitTask",
    ("/v1/tasks/{task_id}", "get"): "getTask", ("/v1/tasks/{task_id}", "delete"): "revokeTask",
    ("/v1/tasks/{task_id}/events", "get"): "taskEvents",
    ("/v1/task-types", "get"): "listTaskTypes", ("/v1/queues", "get"): "listQueues",
    ("/v1/dead-letters", "get"): "listDeadLetters",
    ("/v1/dead-letters/{task_id}/retry", "post"): "retryDeadLetter",
    ("/v1/schedules", "get"): "listSchedules", ("/v1/schedules", "post"): "createSchedule",
    ("/v1/schedules/{name}", "get"): "getSchedule",
    ("/v1/schedules/{name}", "patch"): "changeSchedule",
    ("/v1/schedules/{name}", "delete"): "deleteSchedule",
    ("/start_task/{data}", "get"): "startTaskLegacy",
    ("/task_status/{task_id}", "get"): "taskStatusLegacy",
    ("/healthz", "get"): "healthz", ("/readyz", "get"): "readyz", ("/metrics", "get"): "metrics",
    ("/openapi.json", "get"): "openapi",
    ("/v1/workflows", "post"): "submitWorkflow", ("/v1/workflows", "get"): "listWorkflows",
    ("/v1/workflows/{workflow_id}", "get"): "getWorkflow",
    ("/v1/workflows/{workflow_id}", "delete"): "cancelWorkflow",
    ("/v1/workflows/{workflow_id}/deliveries", "get"): "workflowDeliveries",
    ("/v1/workflows/{workflow_id}/events", "get"): "workflowEvents",
    ("/v1/tasks/{task_id}/deliveries", "get"): "taskDeliveries",
    ("/v1/webhook-deliveries/dead", "get"): "listDeadDeliveries",
    ("/v1/webhook-endpoints", "get"): "listWebhookEndpoints",
    ("/v1/webhook-endpoints/{tenant}", "put"): "setWebhookEndpoint",
    ("/v1/webhook-endpoints/{tenant}", "delete"): "deleteWebhookEndpoint",
    ("/v1/webhook-deliveries/dead/{delivery_id}/retry", "post"): "retryDeadDelivery",
}


def _name_operations(paths: dict[str, Any]) -> None:
    for path, operations in paths.items():
        for method, operation in operations.items():
            operation["operationId"] = OPERATION_IDS[(path, method)]


def _link(operation: dict[str, Any], status: str, field: str, parameter: str,
          targets: tuple[str, ...]) -> None:
    """OpenAPI links: the ``field`` of the response names ``parameter`` of each target, so
    clients and stateful fuzzers follow a created resource to its routes."""
    operation["responses"][status]["links"] = {
        target[0].upper() + target[1:]: {
            "operationId": target, "parameters": {parameter: f"$response.body#/{field}"}}
        for target in targets}


_SCHEDULE_TENANT = {"name": "tenant", "in": "query", "required": False,
                    "schema": {"type": "string", "maxLength": MAX_TENANT_NAME},
                    "description": "Operators only (a tenant's token naming a tenant is 403): "
                                   "the tenant whose schedule this is (default: the schedules "
                                   "declared in code; when creating, the operator's own name)."}
_SCHEDULE_NAME = {"name": "name", "in": "path", "required": True,
                  "schema": {"type": "string", "maxLength": 64}}


def _body(settings: Settings, ref: str) -> dict[str, Any]:
    """A required JSON body, with the limits ``api/body.py`` enforces before any schema:
    its size (413) and its nesting (400), as extensions a schema cannot express."""
    return {"required": True, "content": {"application/json": {"schema": _ref(ref)}},
            "x-max-body-bytes": settings.max_body_bytes, "x-max-json-depth": body.MAX_DEPTH}


def _schedule_paths(settings: Settings) -> dict[str, Any]:
    """``/v1/schedules``: a tenant's periodic schedules (``api/schedules.py``)."""
    created = _op("Create a periodic schedule (checked in full: 422 names the field)", 201,
                  _ref("Schedule"), (400, 403, 409, 413, 415, 422),
                  requestBody=_body(settings, "NewSchedule"), parameters=[_SCHEDULE_TENANT])
    created["responses"]["201"]["headers"] = {"Location": {"schema": {"type": "string"}}}
    deleted = _op("Delete a schedule", 204, {}, (403, 404, 409, 422),
                  parameters=[_SCHEDULE_NAME, _SCHEDULE_TENANT])
    deleted["responses"]["204"] = {"description": "Deleted."}
    return {
        "/v1/schedules": {
            "get": _op("The caller's schedules", 200,
                       {"type": "object", "required": ["items"], "properties": {
                           "items": {"type": "array", "items": _ref("Schedule")}}}, (403, 422),
                       parameters=[_TENANT]),
            "post": created,
        },
        "/v1/schedules/{name}": {
            "get": _op("A schedule with its last and next fire and its last task", 200,
                       _ref("Schedule"), (403, 404, 422),
                       parameters=[_SCHEDULE_NAME, _SCHEDULE_TENANT]),
            "patch": _op("Change a schedule (checked in full)", 200, _ref("Schedule"),
                         (400, 403, 404, 409, 413, 415, 422),
                         parameters=[_SCHEDULE_NAME, _SCHEDULE_TENANT],
                         requestBody=_body(settings, "ScheduleChange")),
            "delete": deleted,
        },
    }


_TENANT = {"name": "tenant", "in": "path", "required": True, "schema": {"type": "string"}}
_ATTEMPTS = {"type": "object", "properties": {"items": {"type": "array", "items": {
    "type": "object", "properties": {"at": {"type": "number"}, "status": {"type": "integer"},
                                     "latency_ms": {"type": "number"},
                                     "error": {"type": "string"}}}}}}
_WORKFLOW_ID = {"name": "workflow_id", "in": "path", "required": True,
                "schema": {"type": "string", "pattern": schemas.TASK_ID_PATTERN}}
_MEMBER = {"type": "object", "required": ["id", "state", "links"], "properties": {
    "id": {"type": "string"}, "state": {"type": "string"}, "links": {"type": "object"}}}
_WORKFLOW = {"type": "object", "required": ["id", "kind", "state", "links"], "properties": {
    "id": {"type": "string"}, "kind": {"type": "string", "enum": ["chain", "group"]},
    "on": {"type": "string", "enum": ["success", "complete"]},
    "state": {"type": "string", "enum": ["RUNNING", "SUCCESS", "FAILURE", "REVOKED"]},
    "total": {"type": "integer"}, "progress": {"type": "integer", "minimum": 0, "maximum": 100},
    "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
    "steps": {"type": "array", "items": _MEMBER},
    "members": {"type": "array", "items": _MEMBER},
    "then": {"type": "array", "items": _MEMBER},
    "callback": {"type": ["string", "null"]}, "reason": {"type": "string"},
    "links": {"type": "object"}}}


def _workflow_stream(op: dict[str, Any]) -> dict[str, Any]:
    """As :func:`_event_stream`, each event's data a workflow's summary."""
    op = _event_stream(op)
    schema = op["responses"]["200"]["content"]["text/event-stream"]["schema"]
    schema["properties"]["data"]["contentSchema"] = _WORKFLOW
    op["responses"]["200"]["description"] = (
        "`event: state` with the workflow's summary as JSON `data`, each time it changes; "
        "the stream ends when the workflow has ended (or after MAX_EVENT_STREAM s).")
    return op


def _workflow_paths() -> dict[str, Any]:
    """``/v1/workflows``: a chain, or a group with a callback (``taskplane.workflows``)."""
    spec = _ref("SubmitTask")
    # the workflow's own webhook: the same shape as a task's (``workflow.completed``...)
    notify = schemas.submit_schema(0)["properties"]["notify"]
    body = {"oneOf": [
        {"type": "object", "required": ["chain"], "additionalProperties": False,
         "properties": {"chain": {"type": "array", "minItems": 1, "items": spec},
                        "notify": notify}},
        {"type": "object", "required": ["group"], "additionalProperties": False,
         "properties": {
             "group": {"type": "array", "minItems": 1, "items": spec},
             "notify": notify,
             "then": {"oneOf": [spec, {"type": "object", "required": ["chain"], "properties": {
                 "chain": {"type": "array", "minItems": 1, "items": spec}}}]},
             "on": {"type": "string", "enum": ["success", "complete"]}}},
    ]}
    return {
        "/v1/workflows": {
            "post": _op("Submit a chain, or a group with a callback, as one step", 202,
                        _WORKFLOW, (400, 409, 413, 415, 422),
                        requestBody={"required": True,
                                     "content": {"application/json": {"schema": body}}},
                        parameters=[{"name": "Idempotency-Key", "in": "header",
                                     "required": False,
                                     "schema": {"type": "string",
                                                "maxLength": schemas.MAX_IDEMPOTENCY_KEY}}]),
            "get": _op("The caller's workflows, newest first", 200,
                       {"type": "object", "properties": {
                           "items": {"type": "array", "items": _WORKFLOW},
                           "next": {"type": ["string", "null"]}}}, (422,),
                       parameters=[
                           {"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1,
                                       "maximum": schemas.MAX_PAGE}},
                           {"name": "cursor", "in": "query", "required": False,
                            "schema": {"type": "string",
                                       "pattern": "^[0-9]{1,12}(\\.[0-9]{1,12})?$"},
                            "description": "The `next` of the previous page."}]),
        },
        "/v1/workflows/{workflow_id}/events": {"get": _workflow_stream(_op(
            "Server-Sent Events of the workflow's state, counts and progress until it ends",
            200, {"type": "string"}, (404,), parameters=[_WORKFLOW_ID]))},
        "/v1/workflows/{workflow_id}/deliveries": {"get": _op(
            "The workflow's webhook delivery attempts", 200, _ATTEMPTS, (404,),
            parameters=[_WORKFLOW_ID])},
        "/v1/tasks/{task_id}/deliveries": {"get": _op(
            "The task's webhook delivery attempts", 200, _ATTEMPTS, (404,),
            parameters=[_TASK_ID])},
        "/v1/webhook-endpoints": {"get": _op(
            "Registered per-tenant webhook endpoints the caller may see (no secrets)", 200,
            {"type": "object", "properties": {"items": {"type": "array", "items": {
                "type": "object", "properties": {"tenant": {"type": "string"},
                                                 "url": {"type": "string"}}}}}}, ())},
        "/v1/webhook-endpoints/{tenant}": {
            "put": _op("Operators: register a tenant's webhook endpoint", 200,
                       {"type": "object"}, (400, 403, 413, 415, 422), parameters=[_TENANT],
                       requestBody={"required": True, "content": {"application/json": {
                           "schema": {"type": "object", "required": ["url", "secret"],
                                      "additionalProperties": False, "properties": {
                                          "url": {"type": "string"},
                                          "secret": {"type": "string"}}}}}}),
            "delete": {**_op("Operators: remove a tenant's webhook endpoint", 204, {},
                             (403, 404), parameters=[_TENANT]), "responses": {
                **_op("", 204, {}, (403, 404))["responses"],
                "204": {"description": "Removed."}}},
        },
        "/v1/webhook-deliveries/dead": {"get": _op(
            "Webhook deliveries that failed for WEBHOOK_RETRY_PERIOD", 200,
            {"type": "object", "properties": {"items": {"type": "array", "items": {
                "type": "object", "properties": {
                    "id": {"type": "string"}, "kind": {"type": "string"},
                    "subject": {"type": "string"}, "state": {"type": "string"},
                    "died_at": schemas.TIMESTAMP}}}}}, ())},
        "/v1/webhook-deliveries/dead/{delivery_id}/retry": {"post": _op(
            "Send a dead webhook delivery again, with a fresh retry period", 202,
            {"type": "object"}, (404,), parameters=[
                {"name": "delivery_id", "in": "path", "required": True,
                 "schema": {"type": "string"},
                 "description": "{kind}:{id}:{state}, as the dead list names it."}])},
        "/v1/workflows/{workflow_id}": {
            "get": _op("A workflow's state, counts, progress and members", 200, _WORKFLOW,
                       (404,), parameters=[_WORKFLOW_ID]),
            "delete": _op("Cancel a workflow: revoke every member not yet started", 202,
                          _WORKFLOW, (404, 422), parameters=[
                              _WORKFLOW_ID,
                              {"name": "terminate", "in": "query", "required": False,
                               "schema": {"type": "boolean"},
                               "description": "Also stop the members that are running."}]),
        },
    }
