"""Workers ride through Redis restarts, kills and stalls: same process, no duplicate, no loss.

Each fault hits a worker that holds a task running longer than the visibility timeout,
prefetched (reserved) tasks and a countdown task. Side effects are counted in Redis, so
"ran once" is measured, not inferred from a result. Every Redis here is the test's own,
on a free port.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
from kombu import Connection, Exchange, Queue

from taskplane import broker
from tests.support.scrape import scrape, total
from tests.support.services import (
    Api,
    Process,
    RedisServer,
    free_port,
    start_worker,
    wait_for,
)

pytestmark = pytest.mark.integration

V, H, R = 4, 1, 1  # VISIBILITY_TIMEOUT, LEASE_INTERVAL, UNACKED_RESTORE_INTERVAL
LIVENESS = 10  # LIVENESS_TIMEOUT: /livez must stay 200 throughout, so well above a probe gap
STALL = 8  # seconds of DEBUG SLEEP: past REDIS_TIMEOUT (2 s) and VISIBILITY_TIMEOUT
ENV = {"VISIBILITY_TIMEOUT": str(V), "LEASE_INTERVAL": str(H), "UNACKED_RESTORE_INTERVAL": str(R),
       "LIVENESS_TIMEOUT": str(LIVENESS)}
RENEWALS = "taskplane_lease_renewals_total"


def runs(server: RedisServer, key: str) -> int:
    return int(server.client().get(f"test:count:{key}") or 0)


def status(url: str) -> int:
    try:
        return requests.get(url, timeout=1).status_code
    except requests.RequestException:
        return 0  # no answer: what a kubelet probe counts as a failure


class ProbeWatch(threading.Thread):
    """Polls a worker's /livez every 0.2 s (pacing) and keeps every status it got."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.stop_event = threading.Event()
        self.livez: list[int] = []

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.livez.append(status(self.base + "/livez"))
            self.stop_event.wait(0.2)

    def finish(self) -> list[int]:
        self.stop_event.set()
        self.join(10)
        return self.livez


# --- the workaround at kombu level: fast, no worker ----------------------------------------


def _commands(client: redis.Redis, name: str) -> int:
    """How many ``name`` commands the server ran so far (``INFO commandstats``)."""
    return int(client.info("commandstats").get(f"cmdstat_{name}", {}).get("calls", 0))



def _queue_of(conn: Connection, name: str, messages: int) -> Any:
    """A direct queue ``name`` declared on ``conn``'s channel, holding ``messages`` published
    messages ``{"n": 0..}``."""
    channel = conn.default_channel
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)(channel)
    queue.declare()
    with conn.Producer(channel=channel) as producer:
        for n in range(messages):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key=name)
    return queue

def test_acks_go_in_batches_and_before_the_channel_closes() -> None:
    """With ``ack_batch_interval`` (the worker's ``ACK_BATCH_INTERVAL``) acks wait for each
    other: several messages acked within the interval leave ``unacked`` in one ZREM and one
    HDEL. Until then their leases are still renewed (``held_tags``), and closing the
    channel (a worker's warm or soft shutdown) sends what waits."""
    server = RedisServer().start()
    options = {**broker.transport_options(60, 5), broker.ACK_BATCH_OPTION: 0.5}
    conn = Connection(server.url, transport=broker.TRANSPORT, transport_options=options)
    client = server.client()
    try:
        queue = _queue_of(conn, "batched", 5)
        channel = conn.default_channel  # the queue's
        messages = [queue.get(no_ack=False) for _ in range(5)]
        assert all(m is not None for m in messages) and client.hlen("unacked") == 5
        zrem_before = _commands(client, "zrem")
        for m in messages[:3]:
            m.ack()  # type: ignore[union-attr]  # checked above
        tags = {m.delivery_tag for m in messages}  # type: ignore[union-attr]
        # acked, not yet sent: still leased (renewed), and the worker's slots are free
        assert client.hlen("unacked") == 5
        assert set(broker.held_tags(channel)) == tags
        assert len(channel.qos.unsent_acks()) == 3
        wait_for(lambda: client.hlen("unacked") == 2, 5, "the batch of three sent")
        assert _commands(client, "zrem") - zrem_before == 1  # one ZREM for the three
        assert client.zcard("unacked_index") == 2
        messages[3].ack()  # type: ignore[union-attr]
        assert client.hlen("unacked") == 2
        channel.close()  # what a worker's shutdown does: the waiting ack goes first
        assert client.hlen("unacked") == 0  # the held fifth one was handed back...
        assert client.llen("batched") == 1  # ...to its queue, as kombu does on close
    finally:
        conn.release()
        server.close()


def test_acks_waiting_for_their_batch_survive_a_lost_connection() -> None:
    """A connection lost while acks wait for their batch: they become pending acks, keep
    their leases, and are sent on reconnection (``settle_detached``), so the finished
    tasks are not handed out again."""
    server = RedisServer(appendonly=True).start()
    options = {**broker.transport_options(60, 5), broker.ACK_BATCH_OPTION: 5.0}
    conn = Connection(server.url, transport=broker.TRANSPORT, transport_options=options)
    try:
        queue = _queue_of(conn, "batchlost", 2)
        done = [queue.get(no_ack=False) for _ in range(2)]
        for m in done:
            m.ack()  # type: ignore[union-attr]  # both acked, the batch not sent yet
        assert server.client().hlen("unacked") == 2
        server.stop(signal.SIGTERM)
        conn.collect()  # Celery's consumer on a connection loss
        tags = {m.delivery_tag for m in done}  # type: ignore[union-attr]
        assert set(broker.held_tags(None)) == tags  # still leased while Redis is away
        server.start()
        client = server.client()
        assert client.hlen("unacked") == 2
        assert broker.settle_detached(lambda tag: False) == 0  # acks, not requeues
        assert client.hlen("unacked") == 0 and client.llen("batchlost") == 0
        assert broker.held_tags(None) == []
    finally:
        conn.release()
        server.close()



def test_detached_channel_keeps_held_messages_and_settles_them() -> None:
    """A lost connection leaves held messages leased (not requeued behind the worker's back);
    on reconnection the ones it dropped go back to the queue and the ones it still runs are
    acknowledged through a fresh client, where kombu's own channel has no client left."""
    server = RedisServer(appendonly=True).start()
    conn = Connection(server.url, transport=broker.TRANSPORT,
                      transport_options=broker.transport_options(60, 5))
    try:
        queue = _queue_of(conn, "ridethrough", 3)
        running, dropped, finished = (queue.get(no_ack=False) for _ in range(3))
        assert running is not None and dropped is not None and finished is not None
        assert server.client().hlen("unacked") == 3

        server.stop(signal.SIGTERM)
        conn.collect()  # what Celery's consumer does on a connection loss
        conn.close()
        finished.ack()  # a task that ends while Redis is away: deferred, not raised
        held = {running.delivery_tag, dropped.delivery_tag, finished.delivery_tag}
        assert set(broker.held_tags(None)) == held  # all three keep their leases
        server.start()
        client = server.client()
        assert client.hlen("unacked") == 3 and client.llen("ridethrough") == 0

        requeued = broker.settle_detached(lambda tag: tag == running.delivery_tag)
        assert requeued == 1  # dropped; finished is acknowledged now
        assert client.llen("ridethrough") == 1 and client.hlen("unacked") == 1
        assert broker.held_tags(None) == [running.delivery_tag]
        running.ack()  # a task that ran across the outage finishes afterwards
        assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
        assert broker.held_tags(None) == []
        broker.settle_detached(lambda tag: False)  # settled channels leave the registry
    finally:
        conn.release()
        server.close()


# --- the unpatched behaviour and the exit code --------------------------------------------


def _send_slow(url: str, seconds: float, key: str) -> None:
    """Put one ``test.slow`` message on ``default`` as Celery's own producer writes it."""
    from celery import Celery

    app = Celery("sender", broker=url, set_as_current=False)
    app.conf.broker_transport_options = broker.transport_options(60, 5)
    try:
        app.send_task("test.slow", kwargs={"seconds": seconds, "key": key}, queue="default")
    finally:
        app.close()


def test_kombus_own_transport_still_crashes_and_the_worker_exits_non_zero() -> None:
    """Without the workaround (kombu's Redis transport put back), a Redis restart under a
    running late-ack task is an "Unrecoverable error": the upstream bug. Should this start
    failing, kombu fixed it and ``taskplane.broker``'s workaround can go. The worker then
    exits non-zero, so Kubernetes and compose restart it (it used to exit 0)."""
    server = RedisServer(appendonly=True).start()
    # Two pool processes: the consumer keeps a BRPOP outstanding while one task runs,
    # which is the state in which kombu's close after collect() crashes.
    worker = start_worker(server.url, name="plain", concurrency=2,
                          TASK_MODULES="tests.support.tasks,tests.support.plain_kombu",
                          WORKER_METRICS_PORT="0", **ENV)
    try:
        assert "RideThroughTransport" not in worker.log()
        _send_slow(server.url, 5, "plain")  # a warm shutdown lets it finish first
        wait_for(lambda: runs(server, "plain") == 1, 20, "the task running")
        server.stop(signal.SIGTERM)
        server.start()
        wait_for(lambda: not worker.alive(), 45, "the worker to stop on kombu's crash")
        assert worker.proc.returncode not in (0, None), worker.proc.returncode
        log = worker.log()
        assert "Unrecoverable error" in log and "'hostname'" in log, log[-3000:]
    finally:
        worker.stop(signal.SIGKILL)
        server.close()


# --- the probe port ------------------------------------------------------------------------


def test_probe_port_answers_from_the_start_and_a_taken_one_stops_the_worker() -> None:
    server = RedisServer()  # not started yet: the worker's first connection waits for it
    port = free_port()
    worker = start_worker(server.url, name="early", concurrency=1, wait=False,
                          WORKER_METRICS_PORT=str(port), **ENV)
    base = f"http://127.0.0.1:{port}"
    taken: Process | None = None
    try:
        wait_for(lambda: status(base + "/livez") == 200, 15, "/livez while starting")
        assert status(base + "/readyz") == 503
        assert requests.get(base + "/livez", timeout=1).json()["status"] == "starting"

        started = time.monotonic()
        taken = start_worker(server.url, name="taken", concurrency=1, wait=False,
                             WORKER_METRICS_PORT=str(port), **ENV)
        wait_for(lambda: not taken.alive(), 20, "a worker whose probe port is taken to exit")
        assert taken.proc.returncode not in (0, None)
        last = taken.log().strip().splitlines()[-1]
        assert f":{port}" in last and "WORKER_METRICS_PORT" in last, last
        print(f"\nworker with a taken port exited {taken.proc.returncode} after "
              f"{time.monotonic() - started:.1f}s: {last}")

        server.start()
        wait_for(lambda: status(base + "/readyz") == 200, 60, "/readyz once consuming")
        assert status(base + "/livez") == 200
    finally:
        worker.stop()
        if taken is not None:
            taken.stop()
        server.close()


# --- the three faults --------------------------------------------------------------------


def _stall(server: RedisServer, seconds: int) -> threading.Thread:
    client = redis.Redis.from_url(server.url, socket_timeout=seconds + 10)
    thread = threading.Thread(target=client.execute_command, args=("DEBUG", "SLEEP", seconds),
                              daemon=True)
    thread.start()
    return thread


@pytest.fixture
def aof_redis() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True, appendfsync="everysec", debug_commands=True).start()
    yield server
    server.close()


@pytest.mark.parametrize("fault", ["restart", "sigkill", "stall"])
def test_worker_rides_through_redis_fault(aof_redis: RedisServer, fault: str) -> None:
    """Clean restart (SHUTDOWN via SIGTERM, same port, Redis away 5 s: longer than the
    leases last), SIGKILL + restart from the AOF (``everysec``), or an 8 s stall (``DEBUG
    SLEEP``), while the worker runs a task longer than VISIBILITY_TIMEOUT and holds two
    prefetched tasks and a countdown task; in the restart and the stall an idle peer worker
    sweeps for expired leases meanwhile."""
    port = free_port()
    worker = start_worker(aof_redis.url, name=f"ride-{fault}", concurrency=1,
                          WORKER_PREFETCH_MULTIPLIER="3", WORKER_METRICS_PORT=str(port), **ENV)
    api = Api(aof_redis.url, workers=1, **ENV)
    base = f"http://127.0.0.1:{port}"
    watch = ProbeWatch(base)
    peer: Process | None = None
    try:
        # Longer than VISIBILITY_TIMEOUT, and still running once the gap is over.
        seconds = 3 * V if fault == "sigkill" else 4 * V
        long_task = api.submit("test.slow", kwargs={"seconds": seconds, "key": "long"})
        api.wait_state(long_task["id"], "PROGRESS")
        # The countdown first: held for its ETA it raises the prefetch limit by one, so
        # both plain tasks are reserved too.
        delayed = api.submit("test.count", kwargs={"key": "delayed"}, countdown=2 * V)
        reserved = [api.submit("test.count", kwargs={"key": f"reserved{i}"}) for i in range(2)]
        wait_for(lambda: aof_redis.client().hlen("unacked") == 4, 10,
                 "one running, two reserved and one countdown task held by the worker")
        if fault in ("restart", "stall"):
            # A second, idle worker sweeps for expired leases too: when Redis is back after
            # more than VISIBILITY_TIMEOUT, every lease looks expired, and a sweep that ran
            # before the holder renewed would hand the running task to the peer to run again.
            peer = start_worker(aof_redis.url, name="ride-peer", concurrency=1, **ENV)
        watch.start()
        pid = worker.pid

        gap_started = time.monotonic()
        if fault == "stall":
            stall = _stall(aof_redis, STALL)
            wait_for(lambda: status(base + "/readyz") != 200, 10, "/readyz failing in the stall")
            stall.join(STALL + 10)
        else:
            aof_redis.stop(signal.SIGTERM if fault == "restart" else signal.SIGKILL)
            wait_for(lambda: "Connection to broker lost" in worker.log(), 10,
                     "the worker noticing the lost connection")
            if fault == "restart":
                time.sleep(V + 1)  # the fault window: Redis away longer than the leases last
            aof_redis.start()
        wait_for(lambda: status(base + "/readyz") == 200, 30, "/readyz healthy again")
        gap = time.monotonic() - gap_started
        after_gap = total(scrape(base + "/metrics"), RENEWALS)
        wait_for(lambda: total(scrape(base + "/metrics"), RENEWALS) > after_gap, 4 * H,
                 "lease renewals rising after the gap", interval=0.2)

        finished = [api.wait_state(t["id"], ("SUCCESS", "FAILURE"), timeout=60)
                    for t in (long_task, *reserved, delayed)]
        livez = watch.finish()
        assert [b["state"] for b in finished] == ["SUCCESS"] * 4, finished
        assert {k: runs(aof_redis, k) for k in ("long", "reserved0", "reserved1", "delayed")} \
            == {"long": 1, "reserved0": 1, "reserved1": 1, "delayed": 1}
        assert worker.alive() and worker.pid == pid, worker.log()[-3000:]
        assert livez and set(livez) == {200}, livez
        wait_for(lambda: aof_redis.client().hlen("unacked") == 0, 10, "nothing left unacked")
        # Still consuming: a task sent after the fault runs too, on this worker alone.
        if peer is not None:
            peer.stop()
        after = api.submit("test.count", kwargs={"key": "after"})
        assert api.wait_state(after["id"], "SUCCESS")["result"] == 1
        assert "Unrecoverable error" not in worker.log()
        print(f"\n{fault}: gap {gap:.1f}s, /livez 200 x{len(livez)}, every task ran once")
        assert worker.stop() == 0, "a worker stopped on purpose (SIGTERM) exits 0"
    finally:
        watch.stop_event.set()
        api.close()
        worker.stop()
        if peer is not None:
            peer.stop()

