"""The run lease behind Sentinel (``start.lua`` ``hold``, ``renew_runs.lua``): a second
start of a task another live run holds is refused and writes nothing; it goes ahead once
the lease lapses (the worker died), the run ended, or the task waits for a retry. A single
node (no lease) starts a redelivery at once, as before. Against a real Redis."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from celery import states

from taskplane import lifecycle
from taskplane.lifecycle import Lifecycle, RunLeases, record_key, transitions
from taskplane.runtime import TaskplaneCelery
from taskplane.settings import Settings
from tests.lifecycle.conftest import TENANT, accept
from tests.lifecycle.test_transitions import snapshot

#: The lease of these tests, in seconds (the worker's is VISIBILITY_TIMEOUT - LEASE_INTERVAL).
LEASE = 30.0


def leased(app: TaskplaneCelery, client: redis.Redis, lease: float = LEASE) -> Lifecycle:
    """The lifecycle as an HA worker holds it, with a run lease of ``lease`` seconds."""
    return Lifecycle(client, record_ttl=60, result_ttl=60, idempotency_ttl=60,
                     dead_letter_ttl=60, result_key=app.runtime.lifecycle.result_key,
                     run_lease=lease)


def age_lease(client: redis.Redis, task_id: str, seconds: float) -> None:
    """Make the run's last renewal ``seconds`` old (what a dead worker's silence does)."""
    client.hset(record_key(task_id), "run_seen", repr(time.time() - seconds))


def test_a_second_start_while_a_live_run_holds_the_lease_is_refused_and_writes_nothing(
        app: TaskplaneCelery, client: redis.Redis) -> None:
    life = leased(app, client)
    task_id = accept(app)
    first = life.start(task_id, retries=0)
    assert first.verdict == "run" and first.runs
    assert client.hget(record_key(task_id), "run_seen") is not None
    before = snapshot(client)
    second = life.start(task_id, retries=0, started=app.backend.encode_state(
        task_id, {"pid": 2, "hostname": "other"}, states.STARTED))
    assert second.verdict == "running" and not second.runs
    assert 0 < second.wait <= LEASE  # when to look again: the lease's end
    assert snapshot(client) == before  # no run counted, no STARTED result of its own


def test_the_start_goes_ahead_once_the_lease_lapses_counting_the_dead_run(
        app: TaskplaneCelery, client: redis.Redis) -> None:
    life = leased(app, client)
    task_id = accept(app)
    life.start(task_id, retries=0)
    age_lease(client, task_id, LEASE - 5)
    assert life.start(task_id, retries=0).verdict == "running"  # renewed 25 s ago: alive
    age_lease(client, task_id, LEASE + 1)
    again = life.start(task_id, retries=0)
    assert again.verdict == "run" and again.died == 1  # the silent worker's run died
    assert life.start(task_id, retries=0).verdict == "running"  # and the new run holds it


def test_a_start_repeated_after_a_lost_reply_runs_and_counts_its_run_once(
        app: TaskplaneCelery, client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's client sends a start again when the reply was lost (a failover right
    after the write reached a replica): it finds its own run, not another's."""
    life = leased(app, client)
    task_id = accept(app)
    token = uuid.uuid4()
    monkeypatch.setattr(transitions.uuid, "uuid4", lambda: token)  # the same call, again
    assert life.start(task_id, retries=0).verdict == "run"
    again = life.start(task_id, retries=0)
    assert again.verdict == "run" and again.died == 0
    assert client.hget(record_key(task_id), "runs_started") == b"1"
    monkeypatch.undo()
    assert life.start(task_id, retries=0).verdict == "running"  # another start's


def test_a_renewal_keeps_the_lease_and_never_touches_an_ended_or_missing_record(
        app: TaskplaneCelery, client: redis.Redis) -> None:
    life, leases = leased(app, client), RunLeases(client)
    running, ended, waiting = accept(app), accept(app), accept(app)
    for task_id in (running, ended):
        life.start(task_id, retries=0)
        age_lease(client, task_id, LEASE + 1)
    life.finish(ended, states.SUCCESS, tenant=TENANT, run_ended=True)
    assert leases.renew([running, ended, waiting, "gone"]) == 1
    assert life.start(running, retries=0).verdict == "running"  # renewed: alive again
    assert not client.exists(record_key("gone"))  # no record brought to life
    assert client.hget(record_key(waiting), "run_seen") is None
    assert client.hget(record_key(ended), "state") == b"SUCCESS"


def test_a_run_that_ended_or_a_retry_does_not_hold_the_task(
        app: TaskplaneCelery, client: redis.Redis) -> None:
    life = leased(app, client)
    # the run ended without ending the task (its message acked): a new delivery may start
    task_id = accept(app)
    life.start(task_id, retries=0)
    life.finish(task_id, "", tenant=TENANT, run_ended=True)
    assert life.start(task_id, retries=0).verdict == "run"
    # the run asked for a retry (RETRY stored): the retry's message starts at once
    retried = accept(app)
    life.start(retried, retries=0)
    life.write(retried, app.backend.encode_state(retried, None, states.RETRY),
               ["state", lifecycle.RETRY, "retries", "1"])
    assert life.start(retried, retries=1).verdict == "run"
    # an ended task is refused as before, lease or not
    life.finish(retried, states.SUCCESS, tenant=TENANT, run_ended=True)
    assert life.start(retried, retries=1).verdict == "SUCCESS"


def test_without_a_lease_a_redelivery_starts_at_once_and_no_lease_is_written(
        life: Lifecycle, app: TaskplaneCelery, client: redis.Redis) -> None:
    assert life.run_lease == 0  # a single node: nothing a failover could hand out twice
    task_id = accept(app)
    life.start(task_id, retries=0)
    assert client.hget(record_key(task_id), "run_seen") is None
    assert life.start(task_id, retries=0).died == 1


def test_an_adopted_task_holds_its_lease_too(app: TaskplaneCelery, client: redis.Redis) -> None:
    life = leased(app, client)
    adopt = lifecycle.TaskRecord(id="stock", tenant=lifecycle.SYSTEM_TENANT, task="test.echo",
                                 queue="lifecycle", priority=5, submitted_at=time.time())
    assert life.start("stock", retries=0, adopt=adopt).verdict == "unknown"
    assert life.start("stock", retries=0, adopt=adopt).verdict == "running"


def test_the_lease_is_on_only_with_acknowledged_writes_and_lapses_before_the_visibility(
        ) -> None:
    single = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert single.run_lease == 0
    ha = Settings.from_env({"REDIS_URL": "sentinel://127.0.0.1:26379/0",
                            "REDIS_SENTINEL_MASTER": "m", "VISIBILITY_TIMEOUT": "60",
                            "LEASE_INTERVAL": "10"})
    assert ha.run_lease == 50
    off = Settings.from_env({"REDIS_URL": "sentinel://127.0.0.1:26379/0",
                             "REDIS_SENTINEL_MASTER": "m", "REDIS_MIN_REPLICAS_ACK": "0"})
    assert off.run_lease == 0
