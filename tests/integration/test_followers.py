"""Followers at scale on a real stack (gunicorn under gevent, Redis, a Celery worker): one
subscription per process, per-tenant shares, clients that leave, and Redis going away."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from taskplane.client import Client
from tests.conftest import PARKED
from tests.support.follow import (
    close_all,
    followers_open,
    open_request,
    open_stream,
    pubsub_clients,
    read_to_end,
    read_until,
    status_of,
    task_channels,
)
from tests.support.scrape import scrape, total
from tests.support.services import TEST_TOKENS, Api, Process, RedisServer, start_worker, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(isolated_redis: RedisServer) -> Iterator[tuple[Api, Process, RedisServer]]:
    """An API of two processes with small follower bounds, and a worker, on their own Redis."""
    api = Api(isolated_redis.url, workers=2, QUEUES=PARKED, MAX_FOLLOWERS="400",
              MAX_FOLLOWERS_PER_TENANT="300")
    worker = start_worker(isolated_redis.url, name="followers", concurrency=2, QUEUES=PARKED,
                          WORKER_QUEUES="default")
    # the worker's broadcast (remote control) subscription may come just after it is ready:
    # tests count pub/sub clients against it, so it must be there first
    client = isolated_redis.client()
    wait_for(lambda: pubsub_clients(client) >= 1, 20, "the worker's broadcast subscription")
    yield api, worker, isolated_redis
    worker.stop()
    api.close()


def parked(api: Api, n: int, tenant: str = "acme") -> list[str]:
    return [api.submit("test.echo", tenant=tenant, kwargs={"value": i}, queue=PARKED)["id"]
            for i in range(n)]


def test_followers_share_one_subscription_per_process_and_all_wake(
        stack: tuple[Api, Process, RedisServer]) -> None:
    api, _, server = stack
    client = server.client()
    others = pubsub_clients(client)  # the worker's own (kombu's broadcast channel)
    task = {"id": parked(api, 1)[0]}  # it ends when revoked, once everyone follows it
    socks = [open_stream(api.base, task["id"]) for _ in range(60)]
    waits = [open_request(api.base, f"/v1/tasks/{task['id']}?wait=30") for _ in range(60)]
    wait_for(lambda: followers_open(api.base) == 120, 20, "120 followers open")
    # one channel, subscribed once per API process, however many follow it
    assert task_channels(client) == 1
    assert client.pubsub_numsub(f"celery-task-meta-{task['id']}")[0][1] <= 2
    assert pubsub_clients(client) - others <= 2
    started = time.monotonic()
    assert api.post("/v1/tasks", json={"task": "test.echo", "kwargs": {"value": 1}}).status_code \
        == 202
    assert time.monotonic() - started < 2  # submissions answer while they follow
    assert api.delete(f"/v1/tasks/{task['id']}").status_code == 202
    for sock in waits:
        status, headers, body = status_of(sock)
        assert (status, body["state"], headers["taskplane-wait"]) == (200, "REVOKED", "waited")
    for sock in socks:
        assert b'"state":"REVOKED"' in read_until(sock, b'"state":"REVOKED"')
    close_all(socks + waits)
    wait_for(lambda: followers_open(api.base) == 0 and task_channels(client) == 0, 5,
             "every follower gone")


def test_a_tenant_over_its_share_is_refused_and_the_others_are_not(
        isolated_redis: RedisServer) -> None:
    api = Api(isolated_redis.url, workers=1, QUEUES=PARKED, MAX_FOLLOWERS="5",
              MAX_FOLLOWERS_PER_TENANT="3")
    try:
        ours, theirs = parked(api, 1)[0], parked(api, 1, "globex")[0]
        mine = [open_stream(api.base, ours) for _ in range(3)]
        over = api.get(f"/v1/tasks/{ours}/events")
        assert over.status_code == 429 and over.headers["Retry-After"]
        assert over.json()["error"]["code"] == "too_many_tenant_followers"
        assert over.json()["error"]["details"] == {"limit": 3, "scope": "tenant"}
        wait_over = api.get(f"/v1/tasks/{ours}", params={"wait": 5})
        assert wait_over.status_code == 429
        # another tenant is unaffected by acme's streams
        other = [open_stream(api.base, theirs, "globex") for _ in range(2)]
        # the process is full (5): a stream is refused, a wait says honestly it did not wait
        full = api.get(f"/v1/tasks/{theirs}/events", tenant="globex")
        assert full.status_code == 429 and full.json()["error"]["code"] == "too_many_followers"
        started = time.monotonic()
        refused = api.get(f"/v1/tasks/{theirs}", params={"wait": 5}, tenant="globex")
        assert refused.status_code == 200 and refused.headers["Taskplane-Wait"] == "refused"
        assert refused.headers["Retry-After"] and time.monotonic() - started < 2
        samples = scrape(f"{api.base}/metrics")
        assert total(samples, "taskplane_api_followers_refused_total", reason="tenant") == 2
        assert total(samples, "taskplane_api_followers_refused_total", reason="process") == 2
        close_all(mine)
        wait_for(lambda: followers_open(api.base) == 2, 3, "acme's streams freed")
        assert api.get(f"/v1/tasks/{theirs}", params={"wait": 0.2},
                       tenant="globex").headers["Taskplane-Wait"] == "waited"
        close_all(other)
    finally:
        api.close()


def test_two_hundred_streams_dropped_at_once_are_freed_within_two_seconds(
        stack: tuple[Api, Process, RedisServer]) -> None:
    api, _, server = stack
    client = server.client()
    others = pubsub_clients(client)
    ids = parked(api, 100)
    open_stream(api.base, ids[0]).close()  # each process may keep its one pub/sub connection
    wait_for(lambda: followers_open(api.base) == 0, 5, "warm-up stream gone")
    baseline = pubsub_clients(client)
    socks = [open_stream(api.base, ids[i % 100]) for i in range(150)]
    socks += [open_request(api.base, f"/v1/tasks/{ids[i]}?wait=50") for i in range(50)]
    wait_for(lambda: followers_open(api.base) == 200, 10, "200 followers open")
    assert task_channels(client) == 100 and pubsub_clients(client) - others <= 2
    dropped = time.monotonic()
    close_all(socks)
    wait_for(lambda: followers_open(api.base) == 0 and task_channels(client) == 0, 2,
             "slots and subscriptions back at their baseline")
    freed = time.monotonic() - dropped
    assert pubsub_clients(client) == baseline
    samples = scrape(f"{api.base}/metrics")
    noticed = total(samples, "taskplane_api_follower_gone_detect_seconds_count")
    assert noticed >= 200, noticed
    assert total(samples, "taskplane_api_follower_gone_detect_seconds_bucket", le="1.0") \
        == noticed
    print(f"200 followers freed {freed:.2f}s after their clients left")


def _threads_and_fds(api: Api) -> tuple[dict[str, int], int]:
    """Threads of each of the API's worker processes (gunicorn's children), and their open
    files in all."""
    children = Path(f"/proc/{api.process.pid}/task/{api.process.pid}/children").read_text().split()
    threads, fds = {}, 0
    for pid in children:
        threads[pid] = len(os.listdir(f"/proc/{pid}/task"))
        fds += len(os.listdir(f"/proc/{pid}/fd"))
    return threads, fds


#: A gevent worker's threads: its own, and the one its resolver's thread pool starts at the
#: worker's first Redis connection (gevent runs ``getaddrinfo`` there). A worker that got
#: no request during the warm-up starts it later; that is not a thread left behind.
WORKER_THREADS = 2


def test_a_thousand_connect_close_cycles_leave_nothing_behind(
        isolated_redis: RedisServer) -> None:
    client = isolated_redis.client()
    others = len(client.client_list())  # before any API process connects
    api = Api(isolated_redis.url, workers=2, QUEUES=PARKED, API_REDIS_CONNECTIONS="3")
    try:
        ids = parked(api, 10)

        def cycles(n: int) -> None:
            for i in range(n):
                if i % 2:
                    open_stream(api.base, ids[i % 10]).close()
                else:
                    open_request(api.base, f"/v1/tasks/{ids[i % 10]}?wait=30").close()

        cycles(100)  # warm up: each process's subscription, connection pool and greenlets
        wait_for(lambda: followers_open(api.base) == 0, 5, "warm-up followers gone")
        before_threads, before_fds = _threads_and_fds(api)
        cycles(1000)
        wait_for(lambda: followers_open(api.base) == 0 and task_channels(client) == 0, 5,
                 "every follower of 1,000 cycles gone")
        threads, _ = _threads_and_fds(api)
        assert threads.keys() == before_threads.keys()  # no worker was replaced
        assert all(n <= max(before_threads[pid], WORKER_THREADS) for pid, n in threads.items()), \
            (before_threads, threads)
        wait_for(lambda: _threads_and_fds(api)[1] <= before_fds + 2, 5, "sockets closed")
        # per process at most its pool (API_REDIS_CONNECTIONS) and its one subscription
        assert len(client.client_list()) <= others + 2 * (3 + 1)
    finally:
        api.close()


def test_another_tenants_stream_is_404_without_taking_a_slot(
        stack: tuple[Api, Process, RedisServer]) -> None:
    api, _, _ = stack
    theirs = parked(api, 1, "globex")[0]
    for _ in range(5):
        assert api.get(f"/v1/tasks/{theirs}/events").status_code == 404
        assert api.get(f"/v1/tasks/{theirs}", params={"wait": 5}).status_code == 404
    assert followers_open(api.base) == 0
    assert api.get(f"/v1/tasks/{theirs}", params={"wait": 61}).status_code == 422


def test_redis_going_away_ends_followers_cleanly_and_clients_come_back() -> None:
    server = RedisServer(appendonly=True, appendfsync="always").start()  # restarts with data
    api = Api(server.url, workers=2, QUEUES=PARKED, RETRY_AFTER="1")
    try:
        ids = parked(api, 4)
        streams = [open_stream(api.base, ids[i % 4]) for i in range(8)]
        waits = [open_request(api.base, f"/v1/tasks/{ids[i]}?wait=50") for i in range(4)]
        wait_for(lambda: followers_open(api.base) == 12, 10, "12 followers open")
        results: dict[str, object] = {}

        def follow_with_client() -> None:  # the Python client rides the outage through
            tp = Client(api.base, TEST_TOKENS["acme"], timeout=5, max_retry_wait=1)
            results["wait"] = tp.wait(ids[0], timeout=60)

        def stream_with_client() -> None:
            tp = Client(api.base, TEST_TOKENS["acme"], timeout=5, max_retry_wait=1)
            results["events"] = [t.state for t in tp.events(ids[1])]

        riders = [threading.Thread(target=follow_with_client),
                  threading.Thread(target=stream_with_client)]
        for t in riders:
            t.start()
        wait_for(lambda: followers_open(api.base) == 14, 10, "the clients following")
        server.stop()
        for sock in streams:
            tail = read_until(sock, b"event: error")
            assert b"retry: 1000\nevent: error\ndata: " in tail
            assert b'"code":"broker_unavailable"' in tail
        for i, sock in enumerate(waits):
            status, headers, body = status_of(sock)
            assert status == 503 and headers["retry-after"] == "1"
            assert body["error"]["details"] == {"id": ids[i]}
        close_all(streams + waits)
        server.start()  # the same port and data directory
        worker = start_worker(server.url, name="after-outage", concurrency=2, QUEUES=PARKED,
                              WORKER_QUEUES=PARKED)
        try:
            for t in riders:
                t.join(60)
            assert results["wait"].state == "SUCCESS"  # type: ignore[attr-defined]
            assert results["events"][-1] == "SUCCESS"  # type: ignore[index]
        finally:
            worker.stop()
        log = api.process.log()
        assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]
    finally:
        api.close()
        server.close()


def test_a_wait_whose_client_left_stops_waiting(stack: tuple[Api, Process, RedisServer]) -> None:
    api, _, _ = stack
    task = parked(api, 1)[0]
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{api.base}/v1/tasks/{task}", params={"wait": 50}, timeout=(5, 1),
                     headers={"Authorization": f"Bearer {TEST_TOKENS['acme']}"})
    wait_for(lambda: followers_open(api.base, "wait") == 0, 2, "the wait given up")


def test_a_stopping_api_ends_its_followers_at_once(isolated_redis: RedisServer) -> None:
    """SIGTERM: streams close and waits answer (Taskplane-Wait: interrupted) within about a
    second, so gunicorn exits long before its 20 s graceful timeout."""
    api = Api(isolated_redis.url, workers=2, QUEUES=PARKED)
    try:
        # both workers past their boot: a SIGTERM before a worker's own handlers is lost
        wait_for(lambda: api.process.log().count("ready; followers detached") == 2, 30,
                 "both workers ready")
        task = parked(api, 1)[0]
        streams = [open_stream(api.base, task) for _ in range(10)]
        waits = [open_request(api.base, f"/v1/tasks/{task}?wait=50") for _ in range(10)]
        wait_for(lambda: followers_open(api.base) == 20, 10, "20 followers open")
        stopped = time.monotonic()
        api.process.send(signal.SIGTERM)
        for sock in waits:
            status, headers, body = status_of(sock)
            assert (status, headers["taskplane-wait"], body["state"]) == \
                (200, "interrupted", "PENDING")
            sock.close()  # else gunicorn keeps the idle keep-alive connection a while
        for sock in streams:
            # closed (a detached stream's body ends with its connection), and not as an outage
            assert b"event: error" not in read_to_end(sock)
            sock.close()
        answered = time.monotonic() - stopped
        api.process.proc.wait(15)
        assert answered < 3 and time.monotonic() - stopped < 10  # graceful_timeout is 20 s
    finally:
        api.close()


def test_under_gthread_followers_are_capped_by_threads_and_submits_still_answer(
        isolated_redis: RedisServer) -> None:
    """API_WORKER_CLASS=gthread: each follower holds a thread, so a process of 3 threads
    follows 2 at once and keeps one for everything else."""
    api = Api(isolated_redis.url, workers=1, threads=3, QUEUES=PARKED, API_WORKER_CLASS="gthread")
    try:
        task = parked(api, 1)[0]
        waits = [open_request(api.base, f"/v1/tasks/{task}?wait=30") for _ in range(2)]
        wait_for(lambda: followers_open(api.base) == 2, 10, "two followers open")
        started = time.monotonic()
        assert api.post("/v1/tasks", json={"task": "test.echo", "kwargs": {"value": 1}}
                        ).status_code == 202
        third = api.get(f"/v1/tasks/{task}", params={"wait": 5})
        assert third.status_code == 200, third.text
        assert third.headers["Taskplane-Wait"] == "refused" and third.json()["state"] == "PENDING"
        assert api.get(f"/v1/tasks/{task}/events").status_code == 429
        assert time.monotonic() - started < 3
        close_all(waits)  # gone clients free their threads too
        wait_for(lambda: followers_open(api.base) == 0, 2, "the gthread followers freed")
    finally:
        api.close()
