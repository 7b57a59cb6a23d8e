"""No token and no task argument is ever written to the logs, and clients cannot forge log lines.

Each test sends data carrying a unique marker (task arguments, results, failure
messages, bodies that are refused, tokens in every wrong place), waits until the API
and the worker have logged the requests and tasks concerned, then searches both logs
(``Process.log()`` of the session's gunicorn and Celery worker) for the marker. A
failure prints the log lines that hold it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from urllib.parse import unquote

import pytest
import requests

from tests.conftest import PARKED
from tests.support.services import TEST_TOKENS, Api, Process, wait_for

pytestmark = pytest.mark.security


def marker(kind: str) -> str:
    return f"tp{kind}{uuid.uuid4().hex}"


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def assert_not_logged(needles: Iterable[str], api: Api, worker: Process) -> None:
    found = []
    for name, text in (("api", api.process.log()), ("worker", worker.log())):
        for needle in needles:
            found += [f"{name}: {line[:300]}" for line in lines_with(text, needle)]
    assert not found, "logged:\n" + "\n".join(found)


def flush_api_log(api: Api) -> None:
    """Wait until the access log shows a request sent after everything before it.

    The access log names route templates, never raw paths, so the sentinel is one more
    line for an otherwise unused route and status.
    """
    line = "GET /v1/tasks/<task_id> 404"
    before = api.process.log().count(line)
    requests.get(f"{api.base}/v1/tasks/sentinel-{uuid.uuid4().hex}", timeout=10,
                 headers={"Authorization": f"Bearer {TEST_TOKENS['acme']}"})
    wait_for(lambda: api.process.log().count(line) > before, 10,
             "the sentinel in the API's access log")


def wait_worker_logged(worker: Process, task_ids: Iterable[str]) -> None:
    """Wait until the worker logged the end of each task's run."""
    ends = re.compile(r"\] (succeeded|raised|retry|Retry)|revoked|dead-lettered")
    for task_id in task_ids:
        wait_for(lambda tid=task_id: any(ends.search(line)
                                         for line in lines_with(worker.log(), tid)),
                 30, f"the worker's log of task {task_id}")


def test_task_arguments_never_reach_the_logs(api: Api, worker: Process) -> None:
    secret = marker("arg")
    ids = [
        api.submit("test.count", kwargs={"key": secret})["id"],  # result is a number
        api.submit("test.count", args=[secret + "-positional"])["id"],
        api.submit("test.slow", kwargs={"seconds": 0.2, "key": secret})["id"],
        api.submit("test.flaky", kwargs={"key": secret + "-flaky", "failures": 1})["id"],
    ]
    revoked = api.submit("test.echo", kwargs={"value": secret}, queue=PARKED)["id"]
    assert api.delete(f"/v1/tasks/{revoked}").status_code == 202
    # The worker's own word that each ran to the end (test.flaky after its retry): the API's
    # state is not used here, so this test does not depend on how retries are recorded.
    for task_id in ids:
        wait_for(lambda tid=task_id: f"{tid}] succeeded" in worker.log(), 60,
                 f"task {task_id} to succeed")
    flush_api_log(api)
    assert_not_logged([secret], api, worker)


def test_task_results_never_reach_the_logs(api: Api, worker: Process) -> None:
    """A result holds whatever the tenant sent; Celery's "succeeded in …: <result>" line would
    print it."""
    secret = marker("result")
    task_id = api.submit("test.echo", kwargs={"value": {"nested": [secret]}})["id"]
    api.wait_state(task_id, "SUCCESS")
    wait_worker_logged(worker, [task_id])
    flush_api_log(api)
    assert_not_logged([secret], api, worker)


def test_failed_and_dead_lettered_tasks_keep_their_arguments_out_of_the_logs(
        api: Api, worker: Process) -> None:
    """A task retried until it is dead-lettered: its arguments are kept in the dead letter
    (for the retry) but appear in no log line. What a task raises is its own message and
    is logged as the task wrote it (operators need it); Taskplane adds no arguments."""
    secret = marker("failure")
    task_id = api.submit("test.flaky", kwargs={"key": secret, "failures": 100})["id"]
    api.wait_state(task_id, "FAILURE", timeout=60)
    entry = wait_for(lambda: next((e for e in api.get("/v1/dead-letters?limit=500").json()["items"]
                                   if e["id"] == task_id), None), 30, "dead letter")
    assert entry["kwargs"]["key"] == secret  # kept where the tenant can retry it
    wait_worker_logged(worker, [task_id])
    flush_api_log(api)
    assert_not_logged([secret], api, worker)


def test_refused_submissions_are_not_logged(api: Api, worker: Process) -> None:
    secret = marker("refused")
    bodies = [
        {"task": "test.echo", "kwargs": {"value": secret, "unexpected": secret}},  # 422 arguments
        {"task": "test.echo", "kwargs": {"value": secret}, "queue": f"q{secret}"},  # 422 queue
        {"task": f"no.such.{secret}", "kwargs": {"value": secret}},  # 404
        {"task": "test.echo", "kwargs": {"value": secret}, "countdown": -1},  # 422
    ]
    for body in bodies:
        assert api.post("/v1/tasks", json=body).status_code in (404, 422)
    raw = [f'{{"task": "test.echo", "kwargs": {{"value": "{secret}"}}'.encode(),  # malformed
           f'{{"task": "test.echo", "kwargs": {{"value": "{secret}", "n": NaN}}}}'.encode()]
    for data in raw:
        assert api.post("/v1/tasks", data=data,
                        headers={"Content-Type": "application/json"}).status_code == 400
    assert api.post("/v1/tasks", data=json.dumps(bodies[0]),
                    headers={"Content-Type": "text/plain"}).status_code == 415
    assert api.post("/v1/tasks", json=bodies[0], tenant=None,
                    headers={"Authorization": "Bearer nope"}).status_code == 401
    flush_api_log(api)
    assert_not_logged([secret], api, worker)


def test_tokens_never_reach_the_logs(api: Api, worker: Process) -> None:
    """Wrong, malformed and misplaced tokens, and the real ones, appear in no log line."""
    token = marker("token")
    authorizations = [f"Bearer {token}", f"bearer {token}", f"Basic {token}", token,
                      f"Bearer {token} extra", f"Token {token}", f"Bearer {token}" + "x" * 2000]
    for authorization in authorizations:
        for path in ("/v1/queues", f"/v1/tasks/{uuid.uuid4()}", "/v1/dead-letters"):
            r = requests.get(api.base + path, headers={"Authorization": authorization}, timeout=10)
            assert r.status_code == 401
    # A client that puts its token where tokens do not go: the query string, other headers.
    requests.get(f"{api.base}/v1/queues?access_token={token}&token={token}", timeout=10)
    requests.get(f"{api.base}/v1/queues", timeout=10,
                 headers={"X-Api-Key": token, "Cookie": f"session={token}",
                          "Proxy-Authorization": f"Bearer {token}"})
    # Valid tokens too, on every kind of request.
    for tenant in TEST_TOKENS:
        api.get("/v1/queues", tenant=tenant)
        api.post("/v1/tasks", tenant=tenant, json={"task": "test.echo", "kwargs": {"value": 1},
                                                   "queue": PARKED})
    flush_api_log(api)
    assert_not_logged([token, *TEST_TOKENS.values()], api, worker)


def test_seed_route_data_never_reaches_the_logs(api: Api, worker: Process) -> None:
    """``GET /start_task/<data>`` carries a task argument in its path, which the access log
    prints."""
    secret = marker("seeddata")
    r = api.get(f"/start_task/{secret}")
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    assert api.delete(f"/v1/tasks/{task_id}?terminate=true").status_code in (202, 409)
    flush_api_log(api)
    assert_not_logged([secret], api, worker)


@pytest.mark.parametrize("encoded", ["%0A", "%0D%0A", "%0D", "%00", "%1B[2J", "%E2%80%A8"],
                         ids=["lf", "crlf", "cr", "nul", "ansi-escape", "line-separator"])
def test_clients_cannot_forge_log_lines(api: Api, worker: Process, encoded: str) -> None:
    """Control characters sent percent-encoded in a path are not written raw to the log:
    a client must not be able to start a log line of its choosing."""
    forged = marker("forged")
    path = f"/v1/tasks/x{encoded}{forged}%20%22GET%20/v1/queues%22%20200"
    r = requests.get(api.base + path, timeout=10,
                     headers={"Authorization": f"Bearer {TEST_TOKENS['acme']}"})
    assert r.status_code == 404
    flush_api_log(api)
    raw = api.process.log_path.read_bytes()
    injected = unquote(encoded).encode() + forged.encode()
    bad = [line for line in raw.split(b"\n") if forged.encode() in line
           and (line.startswith(forged.encode()) or injected in line)]
    assert not bad, f"control characters reached the log raw: {bad[:3]!r}"
