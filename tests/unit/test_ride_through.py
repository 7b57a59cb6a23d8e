"""The kombu and Celery internals the ride-through workaround leans on still have its shape.

``taskplane.broker`` subclasses kombu's Redis transport and ``taskplane.worker_probes``
reads Celery's worker state; neither is public API. When an upgrade changes what they
rely on, these fail first, naming the piece, instead of a worker crashing in production.
"""

from __future__ import annotations

import inspect
import weakref

from celery.worker import state
from celery.worker.request import Request
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from taskplane import broker, worker_probes


def test_kombu_redis_internals_the_workaround_overrides_or_calls() -> None:
    for name in ("restore_unacked_once", "restore_by_tag", "restore_visible", "_remove_from_indices",
                 "ack", "_flush"):
        assert callable(getattr(kombu_redis.QoS, name, None)), f"kombu QoS.{name} is gone"
    qos_init = inspect.getsource(virtual.QoS.__init__)
    for attribute in ("_delivered", "_dirty", "_on_collect"):
        assert attribute in qos_init, f"kombu QoS no longer keeps {attribute}"
    for name in ("_connparams", "_get_pool", "_disconnect_pools", "_close_clients"):
        assert callable(getattr(kombu_redis.Channel, name, None)), f"kombu Channel.{name} is gone"
    assert "asynchronous" in inspect.signature(kombu_redis.Channel._get_pool).parameters
    for attribute in ("_in_poll", "_in_listen"):
        assert hasattr(kombu_redis.Channel, attribute)
    for attribute in ("_avail_channels", "channels"):
        assert attribute in inspect.getsource(virtual.Transport.__init__)


def test_the_upstream_bug_is_still_there() -> None:
    """kombu builds a restore/ack client from ``connection.client``, which ``collect()`` sets
    to None. When this fails, kombu changed how it reconnects: check whether the workaround
    (``taskplane.broker``, "Riding through a lost connection") can go."""
    assert "self.connection.client" in inspect.getsource(kombu_redis.Channel._connparams)
    assert not hasattr(virtual.Transport, "_collect"), "kombu now has its own _collect"
    assert not hasattr(kombu_redis.Transport, "_collect"), "kombu's Redis now has _collect"


def test_taskplane_transport_is_what_the_worker_selects() -> None:
    from kombu.transport import resolve_transport

    assert resolve_transport(broker.TRANSPORT) is broker.RideThroughTransport
    assert broker.RideThroughTransport.Channel.QoS is broker.RideThroughQoS


def test_celery_worker_state_the_lease_renewer_reads() -> None:
    assert isinstance(state.active_requests, weakref.WeakSet)
    assert isinstance(Request.__dict__.get("message"), property)
    assert worker_probes.running_delivery_tags() == set()  # nothing runs in this process


def test_celery_command_the_worker_runs_returns_its_exit_code() -> None:
    """``worker.run`` calls the ``celery`` click command with ``standalone_mode=False`` so it
    gets the worker's exit code back (``app.worker_main`` drops it)."""
    import click
    from celery.bin.celery import celery as celery_command

    assert isinstance(celery_command, click.Group) and "worker" in celery_command.commands
    assert "standalone_mode" in inspect.signature(celery_command.main).parameters
    assert celery_command.main(args=["--help"], standalone_mode=False) == 0


def test_sweep_gate_waits_half_the_visibility_timeout_after_an_outage() -> None:
    gate = broker.SweepGate()
    assert not gate.allowed(30)  # just started: it cannot know Redis was not away
    assert gate.allowed(0)
    gate.unreachable()
    assert not gate.allowed(30) and not gate.allowed(0)
    gate.reachable()
    assert not gate.allowed(30)  # 15 s to go: every live worker renews meanwhile
    assert gate.allowed(0)


def test_channel_keeps_one_sync_client_per_pool() -> None:
    """kombu builds a client per ack and per delivery through ``_create_client``; the
    channel keeps one per pool instead, and a new pool (a reconnection) gets a new one."""
    assert "asynchronous" in inspect.signature(kombu_redis.Channel._create_client).parameters
    assert "_create_client()" in inspect.getsource(kombu_redis.Channel.conn_or_acquire)

    class Pool:
        pass

    built: list[object] = []

    class Base:
        def _create_client(self, asynchronous: bool = False) -> object:
            client = type("Client", (), {"connection_pool": self.pool, "asynchronous": asynchronous})()
            built.append(client)
            return client

    class Channel(broker.RideThroughChannelMixin, Base):
        def __init__(self) -> None:  # no kombu connection: only the cache is under test
            self.pool = Pool()

    channel = Channel()
    first = channel._create_client()
    assert channel._create_client() is first and len(built) == 1
    assert channel._create_client(asynchronous=True) is not first  # BRPOP's own, as kombu's
    channel.pool = Pool()
    assert channel._create_client() is not first


def test_lease_and_ack_bookkeeping_is_a_plain_pipeline() -> None:
    """kombu files a delivery's lease (``append``) and drops it (``_remove_from_indices``:
    ack, reject) through ``pipe_or_acquire``; Taskplane's gives them a pipeline without
    MULTI/EXEC (issue 29: two commands fewer each), and still uses a pipeline it is given."""
    import contextlib
    from collections.abc import Iterator

    import redis

    for name in ("append", "_remove_from_indices"):
        assert "pipe_or_acquire" in inspect.getsource(getattr(kombu_redis.QoS, name)), name
    client = redis.Redis(port=1)  # never connected: building a pipeline sends nothing

    class Channel:
        @contextlib.contextmanager
        def conn_or_acquire(self, given: object = None) -> Iterator[redis.Redis]:
            yield client

    qos = broker.RideThroughQoS.__new__(broker.RideThroughQoS)
    qos.channel = Channel()
    with qos.pipe_or_acquire() as pipe:
        assert isinstance(pipe, redis.client.Pipeline) and not pipe.transaction
    given = client.pipeline()
    with qos.pipe_or_acquire(given) as pipe:
        assert pipe is given
