"""Signed webhooks delivered by real workers to a real receiver that verifies each
signature with the reference Standard Webhooks package: delivered once on success,
retried with the same webhook-id after a 500, never following a redirect, dead after the
retry period and retryable over the API; a workflow's completion too."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from tests.support.scrape import scrape, value
from tests.support.services import Api, RedisServer, free_port, start_worker, wait_for

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"integration-secret-of-32-bytes!!").decode()
LOOPBACK = {"WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_ALLOW_HTTP": "true",
            "WEBHOOK_RETRY_PERIOD": "4", "WEBHOOK_TIMEOUT": "1"}


class Receiver:
    """A webhook receiver on loopback: verifies every request, answers per path."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.failures: dict[str, int] = {}  # path -> 500s still to answer
        self.lock = threading.Lock()
        verifier = Webhook(SECRET)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                event = verifier.verify(body, headers)  # raises on a bad signature
                with outer.lock:
                    outer.received.append({"path": self.path, "id": headers["webhook-id"],
                                           "event": event})
                    left = outer.failures.get(self.path, 0)
                    if left:
                        outer.failures[self.path] = left - 1
                if self.path == "/hang":
                    time.sleep(3)  # past WEBHOOK_TIMEOUT
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", "/ok")
                elif left:
                    self.send_response(500)
                else:
                    self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.received if r["path"] == path]


METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, Receiver]]:
    redis_server = RedisServer().start()
    worker = start_worker(redis_server.url, name="hooks", concurrency=2,
                          WORKER_METRICS_PORT=str(METRICS_PORT),
                          PROMETHEUS_MULTIPROC_DIR=str(tmp_path_factory.mktemp("hooks")),
                          **LOOPBACK)
    api = Api(redis_server.url, workers=1, **LOOPBACK)
    receiver = Receiver()
    yield api, receiver
    receiver.server.shutdown()
    api.close()
    worker.stop()
    redis_server.close()


def notify(receiver: Receiver, path: str) -> dict[str, str]:
    return {"url": receiver.url + path, "secret": SECRET}


def test_a_tasks_ending_is_delivered_once_signed(stack: tuple[Api, Receiver]) -> None:
    api, receiver = stack
    task = api.submit("test.echo", kwargs={"value": [1, {}]}, notify=notify(receiver, "/ok"))
    api.wait_state(task["id"], "SUCCESS")
    (got,) = wait_for(lambda: receiver.at("/ok"), 20, "the delivery")
    assert got["event"]["type"] == "task.succeeded"
    assert got["event"]["data"]["id"] == task["id"]
    assert got["event"]["data"]["result"] == [1, {}]
    attempts = wait_for(lambda: api.get(f"/v1/tasks/{task['id']}/deliveries").json()["items"],
                        10, "the attempt recorded")
    assert [a["status"] for a in attempts] == [200]
    assert attempts[0]["latency_ms"] >= 0
    url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
    wait_for(lambda: value(scrape(url), "taskplane_webhook_deliveries_total",
                           outcome="delivered") >= 1, 10, "the delivery counted")
    samples = scrape(url)
    assert ("taskplane_webhook_deliveries_total", frozenset({("outcome", "dead")})) in {
        (name, frozenset((k, v) for k, v in labels if k == "outcome"))
        for name, labels in samples}  # every outcome's series exists from the start
    assert value(samples, "taskplane_webhook_delivery_seconds_count") >= 1


def test_a_failed_delivery_is_retried_with_the_same_webhook_id(
        stack: tuple[Api, Receiver]) -> None:
    api, receiver = stack
    receiver.failures["/flaky"] = 1
    task = api.submit("test.fail", notify=notify(receiver, "/flaky"))
    api.wait_state(task["id"], "FAILURE")
    got = wait_for(lambda: (r := receiver.at("/flaky")) and len(r) >= 2 and r, 30,
                   "a retried delivery")
    assert len({r["id"] for r in got}) == 1
    assert got[0]["event"]["type"] == "task.failed"
    assert got[0]["event"]["data"]["error"]["type"] == "ValueError"
    attempts = wait_for(lambda: (a := api.get(f"/v1/tasks/{task['id']}/deliveries")
                                 .json()["items"]) and len(a) == 2 and a, 10, "two attempts")
    assert [a["status"] for a in attempts] == [500, 200]


def test_a_redirect_is_not_followed_and_the_delivery_dies_then_is_retried(
        stack: tuple[Api, Receiver]) -> None:
    api, receiver = stack
    before_ok = len(receiver.at("/ok"))
    task = api.submit("test.echo", kwargs={"value": 1}, notify=notify(receiver, "/redirect"))
    member = f"task:{task['id']}:SUCCESS"

    def dead() -> bool:
        return member in {d["id"] for d in api.get("/v1/webhook-deliveries/dead").json()["items"]}
    wait_for(dead, 40, "the delivery dead after WEBHOOK_RETRY_PERIOD")
    assert len(receiver.at("/ok")) == before_ok  # the redirect was never followed
    statuses = {a["status"] for a in api.get(f"/v1/tasks/{task['id']}/deliveries").json()["items"]}
    assert statuses == {302}
    assert api.get("/v1/webhook-deliveries/dead", tenant="globex").json()["items"] == [] or \
        member not in {d["id"] for d in api.get("/v1/webhook-deliveries/dead",
                                                tenant="globex").json()["items"]}
    sent = len(receiver.at("/redirect"))
    assert api.post(f"/v1/webhook-deliveries/dead/{member}/retry").status_code == 202
    assert api.post(f"/v1/webhook-deliveries/dead/{member}/retry").status_code == 404
    wait_for(lambda: len(receiver.at("/redirect")) > sent, 20, "the retried delivery")


def test_a_workflow_announces_its_completion(stack: tuple[Api, Receiver]) -> None:
    api, receiver = stack
    answer = api.post("/v1/workflows", json={
        "chain": [{"task": "test.echo", "kwargs": {"value": 1}}, {"task": "test.echo"}],
        "notify": notify(receiver, "/workflow")})
    assert answer.status_code == 202, answer.text
    (got,) = wait_for(lambda: receiver.at("/workflow"), 30, "workflow.completed")
    assert got["event"]["type"] == "workflow.completed"
    assert got["event"]["data"]["id"] == answer.json()["id"]
    assert got["event"]["data"]["state"] == "SUCCESS"
    assert json.dumps(got["event"]).count("whsec_") == 0  # the secret never travels


def test_a_hanging_receiver_costs_a_worker_the_timeout_only(stack: tuple[Api, Receiver]) -> None:
    api, receiver = stack
    task = api.submit("test.echo", kwargs={"value": 1}, notify=notify(receiver, "/hang"))
    attempts = wait_for(lambda: api.get(f"/v1/tasks/{task['id']}/deliveries").json()["items"],
                        20, "the first attempt recorded")
    first = attempts[0]
    assert first["status"] == 0 and "timed out" in first["error"].lower()
    assert 900 <= first["latency_ms"] < 2900  # WEBHOOK_TIMEOUT (1 s), not the 3 s hang
    # meanwhile the worker keeps delivering
    other = api.submit("test.echo", kwargs={"value": 2}, notify=notify(receiver, "/meanwhile"))
    api.wait_state(other["id"], "SUCCESS")
    wait_for(lambda: receiver.at("/meanwhile"), 20, "another delivery")
