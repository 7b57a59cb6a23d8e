"""The follower dispatcher and the gone-client watch on their own, against a real Redis and
real sockets: exact subscriptions, churn, an outage, and a peer that leaves."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import redis

from taskplane.api.dispatch import Dispatcher
from taskplane.api.gone import GoneWatch
from tests.support.services import RedisServer, wait_for

pytestmark = pytest.mark.integration


def dispatcher(server: RedisServer) -> Dispatcher:
    client = redis.Redis.from_url(server.url, socket_timeout=2)
    return Dispatcher(client.connection_pool.make_connection, ready_timeout=2)


def test_a_follower_hears_a_change_published_right_after_it_joined(
        isolated_redis: RedisServer) -> None:
    d, client = dispatcher(isolated_redis), isolated_redis.client()
    for i in range(50):
        first = d.join(f"chan-{i}")
        d.leave(first)  # its UNSUBSCRIBE may still be in flight when the next one joins
        again = d.join(f"chan-{i}")
        client.publish(f"chan-{i}", "changed")
        assert again.next_change(2), i
        d.leave(again)
    wait_for(lambda: client.pubsub_channels("chan-*") == [], 2, "every channel unsubscribed")
    assert d.stats() == {"channels": 0, "followers": 0, "connected": 1}


def test_one_connection_serves_every_follower(isolated_redis: RedisServer) -> None:
    d, client = dispatcher(isolated_redis), isolated_redis.client()
    followers = [d.join(f"task-{i % 20}") for i in range(200)]
    assert len(client.client_list(_type="pubsub")) == 1
    assert all(n == 1 for _, n in client.pubsub_numsub(*[f"task-{i}" for i in range(20)]))
    client.publish("task-3", "x")
    wait_for(lambda: sum(f.event.is_set() for f in followers) == 10, 2, "task-3's followers woken")
    woken = [f for f in followers if f.next_change(0)]
    assert {f.channel for f in woken} == {b"task-3"} and len(woken) == 10
    for f in followers:
        d.leave(f)
    wait_for(lambda: client.pubsub_channels("task-*") == [], 2, "every channel unsubscribed")


def test_an_outage_wakes_every_follower_with_the_error_and_the_next_join_reconnects(
        isolated_redis: RedisServer) -> None:
    d = dispatcher(isolated_redis)
    followers = [d.join(f"t-{i}") for i in range(5)]
    errors: list[BaseException] = []

    def follow(f: object) -> None:
        try:
            f.next_change(30)  # type: ignore[attr-defined]
        except redis.ConnectionError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=follow, args=(f,)) for f in followers]
    for t in threads:
        t.start()
    started = time.monotonic()
    isolated_redis.stop()
    for t in threads:
        t.join(10)
    assert len(errors) == 5 and time.monotonic() - started < 5
    assert d.stats()["connected"] == 0
    with pytest.raises(redis.ConnectionError):
        d.join("t-0")
    refused = time.monotonic()
    with pytest.raises(redis.ConnectionError):  # just failed: refused at once, not retried
        d.join("t-0")
    assert time.monotonic() - refused < 0.1
    isolated_redis.start()

    def rejoin() -> object:
        try:
            return d.join("t-0")
        except redis.ConnectionError:
            return None

    again = wait_for(rejoin, 5, "a follower joining once Redis is back")
    isolated_redis.client().publish("t-0", "back")
    assert again.next_change(2)


def test_a_peer_that_leaves_is_noticed_within_a_second() -> None:
    watch = GoneWatch()
    ours, theirs = socket.socketpair()
    staying_ours, staying_theirs = socket.socketpair()
    noticed: list[float] = []
    watch.watch(ours, lambda seconds: noticed.append(seconds))
    kept = watch.watch(staying_ours, lambda seconds: noticed.append(-1))
    staying_theirs.sendall(b"GET /next HTTP/1.1\r\n")  # a pipelined request is not leaving
    left = time.monotonic()
    theirs.close()
    wait_for(lambda: noticed, 1, "the departed peer noticed")
    assert time.monotonic() - left < 1 and 0 <= noticed[0] < 1
    assert watch.watching() == 1
    watch.forget(kept)
    assert watch.watching() == 0
    for sock in (ours, staying_ours, staying_theirs):
        sock.close()
