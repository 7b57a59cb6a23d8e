"""Fuzz the API from its own OpenAPI document with schemathesis, through a real gunicorn.

The document is read from ``GET /openapi.json`` of a running API; schemathesis
generates requests for every operation, both valid ones (positive mode) and ones
that break the document (negative mode), all with a valid bearer token. Every
response must be:

* not a 5xx;
* a status code the document lists for the operation, with a documented content
  type and headers, and a body matching the documented schema.

Path ids are sometimes swapped for ids of real tasks (succeeded, failed and
dead-lettered, waiting, running, delayed, revoked, and another tenant's), so requests
reach past "no such task". Task names and their arguments need no such help: the
document describes each registered task type's body (``api/task_specs.py``).

The stack is the test's own (Redis, worker, gunicorn): fuzzed submissions may
sleep, fail or kill their pool process without disturbing other tests.

``FUZZ_EXAMPLES`` bounds the generated cases of the whole run (default 1200),
split evenly over the operations and the two modes; ``make chaos`` uses
thousands. Problems are collected, not raised at the first one, so a failing run
lists every distinct problem with a curl command that reproduces it.

schemathesis' pytest integration for schemas that come from a fixture
(``schemathesis.pytest.from_fixture``) sets pytest's private ``Node._nodeid``,
which pytest 9.2 no longer has; these tests use its documented
``APIOperation.as_strategy`` with Hypothesis' ``@given`` instead.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.errors import FailureGroup

from tests.security.helpers import FuzzStats, bearer
from tests.support.services import Api, Process, RedisServer, start_worker, wait_for

pytestmark = pytest.mark.security

#: Generated cases of the whole run, over every operation and both modes.
BUDGET = int(os.environ.get("FUZZ_EXAMPLES", "1200"))
AUTH = bearer("acme")
#: What "conforms" means: no 5xx, and status, content type, headers and body as documented.
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance"]
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


@dataclass
class FuzzStack:
    redis: RedisServer
    worker: Process
    api: Api
    #: Real tasks of tenant acme (the fuzzing tenant) by state when seeded, and one of globex.
    seeded: dict[str, str] = field(default_factory=dict)
    session: requests.Session = field(default_factory=requests.Session)


def _seed(api: Api) -> dict[str, str]:
    """Tasks in every state, so fuzzed ids sometimes name a real one."""
    done = api.submit("test.echo", kwargs={"value": {"nested": ["ü", 1.5, None, {"k": True}]}})
    failed = api.submit("test.fail", kwargs={"message": "planned"})
    report = api.submit("reports.summary", kwargs={"csv": "city,temp\nOslo,3\nRome,17"})
    waiting = api.submit("test.echo", kwargs={"value": 1}, queue="parked")
    revoked = api.submit("test.echo", kwargs={"value": 2}, queue="parked")
    delayed = api.submit("test.echo", kwargs={"value": 3}, countdown=3600, priority=9)
    running = api.submit("test.slow", kwargs={"seconds": 600})
    other = api.submit("test.echo", tenant="globex", kwargs={"value": "globex's"})
    assert api.delete(f"/v1/tasks/{revoked['id']}").status_code == 202
    api.wait_state(done["id"], "SUCCESS")
    api.wait_state(failed["id"], "FAILURE")
    api.wait_state(report["id"], "SUCCESS")
    api.wait_state(running["id"], ("STARTED", "PROGRESS"))
    api.wait_state(other["id"], "SUCCESS", tenant="globex")
    wait_for(lambda: api.get("/v1/dead-letters").json()["total"] >= 1, 30, "a dead letter")
    return {"succeeded": done["id"], "failed": failed["id"], "report": report["id"],
            "waiting": waiting["id"], "revoked": revoked["id"], "delayed": delayed["id"],
            "running": running["id"], "other tenant's": other["id"]}


@pytest.fixture(scope="module")
def fuzz_stack() -> Iterator[FuzzStack]:
    redis = RedisServer().start()
    worker = api = None
    try:
        worker = start_worker(redis.url, name="fuzz", concurrency=3, WORKER_QUEUES="default",
                              QUEUES="parked", WORKER_METRICS_PORT="0")
        # Waits and event streams short enough for the fuzzer's read timeout.
        api = Api(redis.url, QUEUES="parked", MAX_WAIT="1", MAX_EVENT_STREAM="2")
        stack = FuzzStack(redis, worker, api)
        stack.seeded = _seed(api)
        yield stack
        stack.session.close()
    finally:
        if api is not None:
            api.close()
        if worker is not None:
            worker.stop()
        redis.close()


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_stack: FuzzStack) -> schemathesis.BaseSchema:
    base = fuzz_stack.api.base
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", timeout=10)
    # The token is a fixed header of every case; schemathesis generates no Authorization
    # of its own (test_auth_matrix covers bad tokens), so every request gets past the door.
    schema.config.update(base_url=base, request_timeout=30, headers=AUTH)
    schema.config.generation.update(with_security_parameters=False)
    schema.config.checks.update(included_check_names=CHECKS)
    ids = list(fuzz_stack.seeded.values())

    @schema.hook
    def flatmap_path_parameters(context: Any, path_parameters: Any) -> Any:
        if not isinstance(path_parameters, dict) or "task_id" not in path_parameters:
            return st.just(path_parameters)
        real = st.sampled_from(ids).map(lambda i: {**path_parameters, "task_id": i})
        return st.one_of(st.just(path_parameters), real)

    return schema


def _describe(case: schemathesis.Case, response: schemathesis.Response | None, problem: str) -> str:
    text = f"{problem.strip()}\n  request:  {case.as_curl_command()}"
    if response is not None:
        body = textwrap.shorten(response.content.decode("utf-8", "replace"), 600, placeholder=" ...")
        content_type = ", ".join(response.headers.get("content-type", []))
        text += f"\n  response: {response.status_code} {content_type}  {body}"
    return text


@dataclass
class Run:
    """What one test sent and found; added to the session's :class:`FuzzStats`."""

    stats: FuzzStats
    problems: dict[tuple[str, str], str] = field(default_factory=dict)
    server_errors: int = 0

    def problem(self, case: schemathesis.Case, response: schemathesis.Response | None,
                title: str, detail: str) -> None:
        key = (case.operation.label, title[:200])
        if key not in self.problems:
            self.problems[key] = _describe(case, response, detail)
            self.stats.problems.setdefault(key, self.problems[key])

    def check(self, case: schemathesis.Case, session: requests.Session) -> None:
        self.stats.requests += 1
        try:
            response = case.call(session=session, timeout=30)
        except requests.RequestException as exc:  # no answer at all is as bad as a 5xx
            self.stats.server_errors += 1
            self.server_errors += 1
            self.problem(case, None, f"no response: {type(exc).__name__}", repr(exc))
            return
        statuses = self.stats.statuses
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            self.stats.server_errors += 1
            self.server_errors += 1
        try:
            case.validate_response(response)
        except FailureGroup as group:
            failures: list[BaseException] = list(group.exceptions)
        except AssertionError as failure:  # a single check failure
            failures = [failure]
        else:
            return
        if any(type(f).__name__ != "ServerError" for f in failures):
            self.stats.nonconforming += 1
        for failure in failures:
            title = getattr(failure, "title", type(failure).__name__)
            message = getattr(failure, "message", "")
            self.problem(case, response, f"{title}: {message}", f"{title}\n{failure}")


def test_tasks_in_every_state_conform(fuzz_stack: FuzzStack,
                                     fuzz_schema: schemathesis.BaseSchema) -> None:
    """The seeded tasks (every state, and another tenant's) read through both task routes:
    deterministic, where the fuzzing only meets them by chance."""
    run = Run(FuzzStats())
    for path in ("/v1/tasks/{task_id}", "/task_status/{task_id}"):
        operation = fuzz_schema[path]["GET"]
        for state, task_id in fuzz_stack.seeded.items():
            before = set(run.problems)
            run.check(operation.Case(path_parameters={"task_id": task_id}, headers=AUTH),
                      fuzz_stack.session)
            for key in set(run.problems) - before:
                run.problems[key] = f"task seeded {state}: {run.problems[key]}"
    report = "\n\n".join(f"[{op}] {text}" for (op, _), text in run.problems.items())
    if run.problems:
        pytest.fail(f"{len(run.problems)} problems:\n\n{report}", pytrace=False)


@pytest.mark.parametrize("mode", MODES, ids=[m.value for m in MODES])
def test_fuzz_every_operation(mode: GenerationMode, fuzz_stack: FuzzStack,
                              fuzz_schema: schemathesis.BaseSchema, fuzz_stats: FuzzStats) -> None:
    fuzz_stats.ran = True
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    assert len(operations) >= 10, "the document lost its operations"
    per_operation = max(1, math.ceil(BUDGET / (len(operations) * len(MODES))))
    run = Run(fuzz_stats)
    for operation in operations:

        @settings(max_examples=per_operation, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), print_blob=False)
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case: schemathesis.Case) -> None:
            run.check(case, fuzz_stack.session)

        try:
            fuzz()
        except Unsatisfiable:
            # Negative mode: the operation has nothing that can be made invalid
            # (no parameters, no body), so there is no case to send.
            assert mode is GenerationMode.NEGATIVE, operation.label
    report = "\n\n".join(f"[{op}] {text}" for (op, _), text in run.problems.items())
    if run.problems or run.server_errors:
        pytest.fail(f"{fuzz_stats.line()}; {len(run.problems)} distinct problems in {mode.value} "
                    f"mode:\n\n{report}", pytrace=False)
