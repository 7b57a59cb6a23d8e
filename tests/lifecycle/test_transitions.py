"""Every transition of the lifecycle package (``lifecycle/scripts/*.lua``) against a real
Redis: what it writes when allowed, and that a refused one writes nothing. Each test takes milliseconds."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from celery import states
from celery.app.task import Context

from taskplane import broker, lifecycle
from taskplane.celery_app import (
    IdempotencyConflict,
    RateLimited,
    TenantCapReached,
    retry_dead_letter_task,
    revoke,
    submit,
)
from taskplane.lifecycle import Lifecycle, OutcomeUnknown, TaskRecord
from taskplane.runtime import TaskplaneCelery
from tests.lifecycle.conftest import QUEUE, TASK, TENANT, accept, make_app
from tests.support.services import RedisServer, free_port, wait_for


def waiting(client: redis.Redis) -> int:
    return sum(client.llen(key) for key in broker.queue_keys(QUEUE))


def snapshot(client: redis.Redis) -> dict[bytes, Any]:
    """Every key with its type and value: "nothing written" means this did not change."""
    out: dict[bytes, Any] = {}
    for key in client.keys("*"):
        kind = client.type(key)
        if kind == b"hash":
            out[key] = client.hgetall(key)
        elif kind == b"string":
            out[key] = client.get(key)
        elif kind == b"list":
            out[key] = client.lrange(key, 0, -1)
        elif kind == b"zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
    return out


def record(life: Lifecycle, task_id: str) -> TaskRecord:
    found, _ = life.read(task_id, with_result=False)
    assert found is not None
    return found


def result(app: TaskplaneCelery, task_id: str) -> dict[str, Any] | None:
    raw = app.backend.client.get(app.backend.get_key_for_task(task_id))
    return json.loads(raw) if raw else None


def open_ids(client: redis.Redis, tenant: str = TENANT) -> set[bytes]:
    return set(client.zrangebyscore(lifecycle.open_key(tenant), lifecycle.ABOVE_MARKS, "+inf"))


def success(app: TaskplaneCelery, task_id: str, value: Any = "done") -> lifecycle.ResultWrite:
    return app.backend.encode_state(task_id, value, states.SUCCESS)


# --- submit ----------------------------------------------------------------------------

def test_submit_writes_record_slot_and_message_in_one_step(app: TaskplaneCelery, life: Lifecycle,
                                                           client: redis.Redis) -> None:
    task_id = accept(app)
    rec = record(life, task_id)
    assert (rec.tenant, rec.task, rec.queue, rec.state) == (TENANT, TASK, QUEUE, "PENDING")
    assert open_ids(client) == {task_id.encode()}
    assert waiting(client) == 1
    assert 0 < client.ttl(lifecycle.record_key(task_id)) <= app.runtime.settings.task_record_ttl


def test_submit_of_an_existing_id_is_a_replay_not_a_second_message(
        app: TaskplaneCelery, life: Lifecycle, client: redis.Redis) -> None:
    task_id = accept(app)
    again = submit(app, tenant=TENANT, name=TASK, args=[], kwargs={"value": 1}, queue=QUEUE,
                   priority=5, task_id=task_id)
    assert again.replayed and again.task_id == task_id
    assert waiting(client) == 1


def test_cap_reached_writes_nothing(lifecycle_redis: RedisServer, client: redis.Redis) -> None:
    capped = make_app(lifecycle_redis, MAX_OPEN_TASKS_PER_TENANT="1")
    try:
        accept(capped)
        before = snapshot(client)
        with pytest.raises(TenantCapReached):
            accept(capped)
        assert snapshot(client) == before
        assert accept(capped, tenant="globex")  # the cap is per tenant
    finally:
        capped.close()


def test_rate_limit_is_taken_in_the_submit_step(lifecycle_redis: RedisServer,
                                                client: redis.Redis) -> None:
    limited = make_app(lifecycle_redis, RATE_LIMIT="0.01", RATE_LIMIT_BURST="2")
    try:
        accept(limited, rate_limited=True)
        accept(limited, rate_limited=True)
        records = set(client.keys("taskplane:task:*"))
        with pytest.raises(RateLimited) as refused:
            accept(limited, rate_limited=True)
        assert refused.value.retry_after > 1
        assert set(client.keys("taskplane:task:*")) == records and waiting(client) == 2
    finally:
        limited.close()


def test_rate_bucket_refills_at_the_rate_up_to_the_burst(life: Lifecycle,
                                                       client: redis.Redis) -> None:
    """The bucket (``lib.lua`` take_token, GCRA: one string, the time it is full again):
    ``burst`` tokens at once, then one per 1/rate seconds; a refusal says how long until
    the next token and takes none; the key lives only until the bucket is full again."""
    rate, burst = 20.0, 3
    assert [life.take_token(TENANT, rate, burst) for _ in range(burst)] == [0.0] * burst
    wait = life.take_token(TENANT, rate, burst)
    assert 0 < wait <= 1 / rate  # one token short: back within 1/rate
    assert client.type(lifecycle.rate_key(TENANT)) == b"string"
    assert 0 < client.pttl(lifecycle.rate_key(TENANT)) <= 1000 * burst / rate
    assert life.take_token("globex", rate, burst) == 0.0  # per tenant
    wait_for(lambda: life.take_token(TENANT, rate, burst) == 0.0, 2, "a token refilled")
    wait_for(lambda: not client.exists(lifecycle.rate_key(TENANT)), 2,
             "the key gone once the bucket is full")


def test_a_sets_ttl_is_set_once_a_period_not_at_every_write(
        app: TaskplaneCelery, life: Lifecycle, client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The open set and the listing and ended indexes get their TTL on the first write of a
    ``MARK_PERIOD`` (``lib.lua`` enter: a mark member scored -inf), not on every write;
    a set holds one mark, and neither listings nor the cap count it."""
    from taskplane.lifecycle import transitions

    period = 600  # lib.lua MARK_PERIOD
    clock = [1_000_000.0 * period + 1]
    monkeypatch.setattr(transitions, "time", type("Clock", (), {
        "time": staticmethod(lambda: clock[0])}))
    index, opened = lifecycle.tasks_index_key(TENANT), lifecycle.open_key(TENANT)
    first = accept(app)
    assert life.keep < client.ttl(index) <= life.keep + period
    assert life.open_age < client.ttl(opened) <= life.open_age + period
    client.expire(index, 100)
    client.expire(opened, 100)
    clock[0] += 1
    second = accept(app)  # the same period: no EXPIRE
    assert client.ttl(index) <= 100 and client.ttl(opened) <= 100
    clock[0] += period
    third = accept(app)  # the next period's first write sets them again
    assert client.ttl(index) > life.keep and client.ttl(opened) > life.open_age
    for key in (index, opened):
        assert len(client.zrangebyscore(key, "-inf", "-inf")) == 1, key  # one mark
    assert open_ids(client) == {first.encode(), second.encode(), third.encode()}
    page, _ = life.list_tasks(lifecycle.TaskQuery(TENANT), limit=10)
    assert [r.id for r, _ in page] == [third, second, first]
    ended = lifecycle.ended_index_key(TENANT, "SUCCESS")
    assert life.finish(first, "SUCCESS", tenant=TENANT).outcome == "done"
    assert life.keep < client.ttl(ended) <= life.keep + period
    assert client.zrangebyscore(ended, lifecycle.ABOVE_MARKS, "+inf") == [first.encode()]


def test_the_cap_does_not_count_the_open_sets_mark(lifecycle_redis: RedisServer,
                                                   client: redis.Redis) -> None:
    capped = make_app(lifecycle_redis, MAX_OPEN_TASKS_PER_TENANT="2")
    try:
        accept(capped)
        accept(capped)  # the second of two: the mark is not a third
        assert client.zcard(lifecycle.open_key(TENANT)) == 3
        with pytest.raises(TenantCapReached):
            accept(capped)
    finally:
        capped.close()


def test_idempotency_key_replays_conflicts_and_restarts_after_expiry(
        app: TaskplaneCelery, life: Lifecycle, client: redis.Redis) -> None:
    first = accept(app, idempotency=("invoice-1", "fp-a"))
    assert accept(app, idempotency=("invoice-1", "fp-a")) == first
    assert waiting(client) == 1
    with pytest.raises(IdempotencyConflict) as conflict:
        accept(app, idempotency=("invoice-1", "fp-b"))
    assert conflict.value.task_id == first
    assert accept(app, tenant="globex", idempotency=("invoice-1", "fp-a")) != first  # per tenant
    client.delete(lifecycle.record_key(first))  # the first task's record expired
    fresh = accept(app, idempotency=("invoice-1", "fp-a"))
    assert fresh != first and accept(app, idempotency=("invoice-1", "fp-a")) == fresh


def test_submit_notices_a_key_that_changed_since_it_was_read(app: TaskplaneCelery, life: Lifecycle,
                                                             client: redis.Redis) -> None:
    first = accept(app, idempotency=("k", "fp"))
    ikey = lifecycle.idempotency_key(TENANT, "k")
    keys = [lifecycle.record_key("new"), lifecycle.open_key(TENANT), QUEUE,
            *lifecycle.listing_keys(TENANT), ikey]
    stale = life._store.run("submit", keys, ["new", 60, 0, 0, 0, 1, "fp", 60, "", "msg", 60,
                                             "tenant", TENANT])
    assert stale[0] == b"stale" and stale[1] == first.encode()
    assert not client.exists(lifecycle.record_key("new"))


# --- start, progress, retry ------------------------------------------------------------

def test_start_marks_started_counts_runs_and_stores_started(app: TaskplaneCelery,
                                                            life: Lifecycle) -> None:
    task_id = accept(app)
    started = app.backend.encode_state(task_id, {"pid": 1, "hostname": "w"}, states.STARTED)
    run = life.start(task_id, retries=0, started=started)
    assert run.verdict == "run" and run.died == 0
    assert record(life, task_id).state == "STARTED"
    assert result(app, task_id)["status"] == "STARTED"
    # a redelivery after the process died under the first run: one death counted
    assert life.start(task_id, retries=0, started=started).died == 1


@pytest.mark.parametrize("ending", ["revoke", "SUCCESS", "FAILURE"])
def test_start_refuses_revoked_and_finished_tasks(app: TaskplaneCelery, life: Lifecycle,
                                                  client: redis.Redis, ending: str) -> None:
    task_id = accept(app)
    if ending == "revoke":
        life.revoke(task_id, TENANT, terminate=False)
    elif ending == "SUCCESS":
        life.start(task_id, retries=0)
        life.finish(task_id, states.SUCCESS, tenant=TENANT, result=success(app, task_id))
    else:
        life.start(task_id, retries=0)
        life.fail(task_id, {"task": TASK, "args": [], "kwargs": {}, "error": {}, "reason": "x"},
                  tenant=TENANT)
    before = snapshot(client)
    started = app.backend.encode_state(task_id, {"pid": 1, "hostname": "w"}, states.STARTED)
    verdict = life.start(task_id, retries=0, started=started).verdict
    assert verdict == ("REVOKED" if ending == "revoke" else ending)
    assert snapshot(client) == before


def test_progress_and_retry_never_land_on_a_finished_task(app: TaskplaneCelery,
                                                          life: Lifecycle) -> None:
    task_id = accept(app)
    life.start(task_id, retries=0)
    progress = app.backend.encode_state(task_id, {"percent": 50}, "PROGRESS")
    assert life.write(task_id, progress)
    retry = app.backend.encode_state(task_id, None, states.RETRY)
    assert life.write(task_id, retry, ["state", "RETRY", "retries", "1"])
    assert record(life, task_id).retries == 1 and record(life, task_id).state == "RETRY"
    life.start(task_id, retries=1)
    life.finish(task_id, states.SUCCESS, tenant=TENANT, result=success(app, task_id))
    assert not life.write(task_id, progress)
    assert not life.write(task_id, retry, ["state", "RETRY", "retries", "2"])
    assert result(app, task_id)["status"] == "SUCCESS" and record(life, task_id).retries == 1


# --- finish, fail, revoke ----------------------------------------------------------------

def test_finish_writes_result_record_and_slot_together_once(app: TaskplaneCelery, life: Lifecycle,
                                                            client: redis.Redis) -> None:
    task_id = accept(app)
    life.start(task_id, retries=0)
    done = life.finish(task_id, states.SUCCESS, tenant="wrong-hint", result=success(app, task_id))
    assert done.outcome == "done"
    rec = record(life, task_id)
    assert rec.state == "SUCCESS" and rec.finished_at is not None
    assert result(app, task_id)["result"] == "done"
    assert open_ids(client) == set()
    assert client.ttl(lifecycle.record_key(task_id)) <= app.runtime.settings.result_expires
    again = life.finish(task_id, states.REVOKED, tenant=TENANT,
                        result=app.backend.encode_state(task_id, None, states.REVOKED))
    assert (again.outcome, again.previous) == ("final", "SUCCESS")
    assert result(app, task_id)["status"] == "SUCCESS"
    life.finish(task_id, "", tenant=TENANT, run_ended=True)  # counts the run only
    assert client.hget(lifecycle.record_key(task_id), "runs_ended") == b"1"


def test_fail_files_the_dead_letter_with_the_record(app: TaskplaneCelery, life: Lifecycle,
                                                    client: redis.Redis) -> None:
    task_id = accept(app)
    life.start(task_id, retries=2)
    letter = {"id": task_id, "task": TASK, "args": [], "kwargs": {"value": 1},
              "error": {"type": "ValueError", "message": "é"}, "reason": "failed",
              "failed_at": 1.5}
    assert life.fail(task_id, letter).outcome == "done"  # no tenant hint: found from the record
    entry = life.dead_letter(TENANT, task_id)
    assert entry is not None
    assert entry["args"] == [] and entry["kwargs"] == {"value": 1}  # an empty list stays a list
    assert (entry["tenant"], entry["queue"], entry["priority"], entry["retries"]) == (
        TENANT, QUEUE, 5, 2)
    assert entry["submitted_at"] == pytest.approx(record(life, task_id).submitted_at)
    assert record(life, task_id).state == "FAILURE" and open_ids(client) == set()
    assert life.dead_letters(TENANT, 10, 0) == (1, [entry])
    assert life.dead_letter("globex", task_id) is None
    assert life.fail(task_id, letter).outcome == "final"
    assert life.dead_letters(TENANT, 10, 0)[0] == 1


def test_unserialisable_arguments_still_file_a_dead_letter(app: TaskplaneCelery,
                                                           life: Lifecycle) -> None:
    task_id = accept(app)
    letter = {"task": TASK, "args": [object()], "kwargs": {}, "error": {}, "reason": "failed"}
    assert life.fail(task_id, letter, tenant=TENANT).outcome == "done"
    entry = life.dead_letter(TENANT, task_id)
    assert entry is not None and entry["args"] == [] and "not kept" in entry["reason"]


def test_revoke_ends_a_waiting_task_and_frees_its_slot(app: TaskplaneCelery, life: Lifecycle,
                                                       client: redis.Redis) -> None:
    task_id = accept(app)
    outcome = revoke(app, task_id, TENANT, terminate=False)
    assert (outcome.outcome, outcome.previous) == ("revoked", "PENDING")
    assert record(life, task_id).state == "REVOKED" and open_ids(client) == set()
    assert result(app, task_id)["status"] == "REVOKED"
    assert revoke(app, task_id, TENANT, terminate=True).outcome == "final"


def test_revoke_leaves_a_running_task_alone_unless_terminate(app: TaskplaneCelery,
                                                             life: Lifecycle,
                                                             client: redis.Redis) -> None:
    task_id = accept(app)
    life.start(task_id, retries=0)
    before = snapshot(client)
    assert life.revoke(task_id, TENANT, terminate=False).outcome == "running"
    assert snapshot(client) == before
    assert life.revoke(task_id, "globex", terminate=True).outcome == "tenant"
    assert snapshot(client) == before
    outcome = life.revoke(task_id, TENANT, terminate=True,
                          result=app.backend.encode_state(task_id, None, states.REVOKED))
    assert (outcome.outcome, outcome.previous) == ("revoked", "STARTED")
    # the run ends after all: its SUCCESS does not replace REVOKED
    life.finish(task_id, states.SUCCESS, tenant=TENANT, result=success(app, task_id),
                run_ended=True)
    assert record(life, task_id).state == "REVOKED" and result(app, task_id)["status"] == "REVOKED"


# --- retry from the dead letters ---------------------------------------------------------

def test_retry_dead_requeues_under_the_same_id_once(app: TaskplaneCelery, life: Lifecycle,
                                                    client: redis.Redis) -> None:
    task_id = accept(app)
    client.delete(*broker.queue_keys(QUEUE))
    life.start(task_id, retries=0)
    app.backend.mark_as_failure(task_id, ValueError("x"), request=Context(
        id=task_id, task=TASK, args=[], kwargs={"value": 1}))  # the worker's path
    assert result(app, task_id)["status"] == "FAILURE"
    read = life.dead_letter_raw(TENANT, task_id)
    assert read is not None
    assert retry_dead_letter_task(app, TENANT, task_id, read[0]).outcome == "queued"
    rec = record(life, task_id)
    assert rec.state == "PENDING" and rec.started_at is None and rec.tenant == TENANT
    assert result(app, task_id) is None  # the old FAILURE does not show through
    assert life.dead_letter(TENANT, task_id) is None and life.dead_letters(TENANT, 10, 0)[0] == 0
    assert waiting(client) == 1 and open_ids(client) == {task_id.encode()}
    # the message is kept until the task starts, as submit keeps it (reconcile.lua)
    kept = client.hmget(lifecycle.record_key(task_id), "message", "list")
    assert kept[1] is not None and client.lrange(kept[1], 0, -1) == [kept[0]]
    before = snapshot(client)
    assert retry_dead_letter_task(app, TENANT, task_id, read[0]).outcome == "gone"
    assert snapshot(client) == before


def test_retry_dead_refuses_a_dead_letter_that_changed(app: TaskplaneCelery, life: Lifecycle,
                                                       client: redis.Redis) -> None:
    task_id = accept(app)
    life.fail(task_id, {"task": TASK, "args": [], "kwargs": {}, "error": {}, "reason": "a"},
              tenant=TENANT)
    stale = client.get(lifecycle.dead_key(task_id)).decode().replace('"a"', '"b"')
    before = snapshot(client)
    assert retry_dead_letter_task(app, TENANT, task_id, stale).outcome == "changed"
    assert snapshot(client) == before


# --- reads and unknown outcomes ----------------------------------------------------------

def test_visible_state_prefers_the_record_once_it_is_final() -> None:
    rec = TaskRecord(id="x", tenant="t", task="t", queue="q", priority=5, submitted_at=0.0)
    assert lifecycle.visible_state(rec, None) == "PENDING"
    assert lifecycle.visible_state(rec, {"status": "PROGRESS"}) == "PROGRESS"
    rec.state = "REVOKED"
    assert lifecycle.visible_state(rec, {"status": "SUCCESS"}) == "REVOKED"


def test_never_sent_matches_redis_py_connect_errors() -> None:
    """Pins redis-py's wording: a refused connection is known not to have sent anything."""
    dead = redis.Redis(port=free_port(), socket_connect_timeout=1)
    with pytest.raises(redis.ConnectionError) as refused:
        dead.ping()
    assert lifecycle.never_sent(refused.value)
    assert not lifecycle.never_sent(redis.ConnectionError("Connection closed by server."))
    assert not lifecycle.never_sent(redis.TimeoutError("Timeout reading from socket"))


def test_a_change_redis_did_not_confirm_is_an_unknown_outcome() -> None:
    server = RedisServer(debug_commands=True).start()
    try:
        app = make_app(server, REDIS_TIMEOUT="0.3")
        accept(app)  # Redis knows the script: the stalled call is the script itself
        task_id = "sleepy"
        stall = server.stall(2)
        with pytest.raises(OutcomeUnknown) as unknown:
            submit(app, tenant=TENANT, name=TASK, args=[], kwargs={"value": 1}, queue=QUEUE,
                   priority=5, task_id=task_id, idempotency=("key", "fp"))
        assert unknown.value.task_id == task_id
        stall.recv(16)
        stall.close()
        # it did happen: the same key finds the one task
        again = submit(app, tenant=TENANT, name=TASK, args=[], kwargs={"value": 1}, queue=QUEUE,
                       priority=5, idempotency=("key", "fp"))
        assert again.replayed and again.task_id == task_id
        app.close()
    finally:
        server.close()


def test_start_adopts_a_task_sent_around_the_api(app: TaskplaneCelery, life: Lifecycle,
                                                 client: redis.Redis) -> None:
    adopt = TaskRecord(id="foreign", tenant=lifecycle.SYSTEM_TENANT, task=TASK, queue=QUEUE,
                       priority=5, submitted_at=1.0)
    assert life.start("foreign", retries=0, adopt=adopt).verdict == "unknown"
    rec = record(life, "foreign")
    assert (rec.tenant, rec.state, rec.task) == (lifecycle.SYSTEM_TENANT, "STARTED", TASK)
    assert client.ttl(lifecycle.record_key("foreign")) > 0
    # from then on it is a task like any other: it ends once, and a failure is a dead letter
    life.fail("foreign", {"task": TASK, "args": [], "kwargs": {}, "error": {}, "reason": "x"},
              tenant=lifecycle.SYSTEM_TENANT, run_ended=True)
    assert life.dead_letter(lifecycle.SYSTEM_TENANT, "foreign") is not None
    assert life.start("foreign", retries=0, adopt=adopt).verdict == "FAILURE"


def test_a_workers_revoke_adopts_a_task_no_worker_started(app: TaskplaneCelery, life: Lifecycle,
                                                          client: redis.Redis) -> None:
    """A worker hearing ``celery control revoke`` for a task sent around the API that has
    no record yet (no worker took it: its name and queue are unknown): a REVOKED record
    under the system tenant, in the listings, holding no tenant slot; a worker that
    receives the message later skips it."""
    system = lifecycle.SYSTEM_TENANT
    unknown = TaskRecord(id="stock", tenant=system, task="", queue="", priority=5,
                         submitted_at=1.0)
    assert life.finish("stock", states.REVOKED, tenant=system).outcome == "missing"  # no adopt
    assert not client.exists(lifecycle.record_key("stock"))
    assert life.finish("stock", states.REVOKED, tenant=system, adopt=unknown).outcome == "adopted"
    rec = record(life, "stock")
    assert (rec.tenant, rec.state, rec.task) == (system, "REVOKED", "")
    assert rec.finished_at is not None
    assert 0 < client.ttl(lifecycle.record_key("stock")) <= app.runtime.settings.result_expires
    for key in (lifecycle.tasks_index_key(system), *lifecycle.ended_index_keys(system, "REVOKED")):
        assert client.zscore(key, "stock") is not None, key
    assert client.sismember(lifecycle.listing_keys(system)[1], lifecycle.tasks_index_key(system))
    assert not client.zscore(lifecycle.open_key(system), "stock")
    assert life.finish("stock", states.REVOKED, tenant=system, adopt=unknown).outcome == "final"
    assert life.start("stock", retries=0, adopt=unknown).verdict == "REVOKED"


def test_a_workers_revoke_adopts_with_the_name_and_queue_it_knows(
        app: TaskplaneCelery, life: Lifecycle, client: redis.Redis) -> None:
    system = lifecycle.SYSTEM_TENANT
    known = TaskRecord(id="stock2", tenant=system, task=TASK, queue=QUEUE, priority=5,
                       submitted_at=1.0)
    write = app.backend.encode_state("stock2", {"x": 1}, states.REVOKED)
    assert life.finish("stock2", "", adopt=known).outcome == "missing"  # a run's end adopts none
    ended = life.finish("stock2", states.REVOKED, tenant=system, result=write, adopt=known)
    assert ended.outcome == "adopted"
    assert record(life, "stock2").state == "REVOKED" and result(app, "stock2")["status"] == "REVOKED"
    index, registry = lifecycle.listing_keys(system)
    assert client.zscore(index, "stock2") is not None
    assert client.sismember(registry, index)  # an operator's listing merges it
    page, _ = life.list_tasks(lifecycle.TaskQuery(None), limit=10)
    assert "stock2" in {r.id for r, _ in page}
    assert life.finish("stock2", states.REVOKED, tenant=system, adopt=known).outcome == "final"
    accepted = accept(app)  # a task with a record: adopt changes nothing
    assert life.finish(accepted, states.REVOKED, tenant=TENANT, adopt=known).outcome == "done"
    assert record(life, accepted).tenant == TENANT


def test_every_dead_letter_is_in_the_operators_index_until_retried(
        app: TaskplaneCelery, life: Lifecycle) -> None:
    ids = {tenant: accept(app, tenant=tenant) for tenant in (TENANT, "globex")}
    for tenant, task_id in ids.items():
        life.fail(task_id, {"task": TASK, "args": [], "kwargs": {}, "error": {}, "reason": "x"},
                  tenant=tenant)
    total, entries = life.dead_letters(None, 10, 0)
    assert total == 2 and {e["id"] for e in entries} == set(ids.values())
    assert life.dead_letters("globex", 10, 0)[0] == 1
    read = life.dead_letter_raw(TENANT, ids[TENANT])
    assert read is not None
    assert retry_dead_letter_task(app, TENANT, ids[TENANT], read[0]).outcome == "queued"
    assert [e["id"] for e in life.dead_letters(None, 10, 0)[1]] == [ids["globex"]]


def test_submit_enters_the_task_in_every_listing_index(app: TaskplaneCelery, life: Lifecycle,
                                                       client: redis.Redis) -> None:
    task_id = accept(app)
    index, registry = lifecycle.listing_keys(TENANT)
    assert client.zscore(index, task_id) is not None
    assert client.smembers(registry) == {index.encode()}
    assert not client.exists(lifecycle.tasks_index_key(None))  # no every-tenant index
    query = lifecycle.TaskQuery(tenant=TENANT, task=TASK)
    rows, _ = life.list_tasks(query, 10)
    assert [record.id for record, _ in rows] == [task_id]
    assert life.list_tasks(lifecycle.TaskQuery(tenant=TENANT, task="other"), 10) == ([], None)


def test_an_operators_listing_merges_every_tenants_index_in_order(
        app: TaskplaneCelery, life: Lifecycle, client: redis.Redis) -> None:
    """No index of every tenant's tasks is written (issue 29): an operator's listing merges
    the registered tenants' indexes, newest first across them, page by page with the same
    cursor, each task once, also from the index earlier versions wrote while it lives; a
    registered index that expired leaves the registry."""
    ids = [accept(app, tenant=("acme", "globex", "initech")[n % 3]) for n in range(7)]
    legacy = "legacy-task"
    client.hset(lifecycle.record_key(legacy), mapping={
        "tenant": "umbrella", "state": "PENDING", "task": TASK, "queue": QUEUE,
        "submitted_at": "1.0"})
    client.zadd(lifecycle.tasks_index_key(None), {legacy: 1.0, ids[0]: 2.0})  # an old version's
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = life.list_tasks(lifecycle.TaskQuery(None), limit=3, cursor=cursor)
        seen += [r.id for r, _ in page]
        if cursor is None or not page:
            break
    assert seen == [*reversed(ids), legacy]
    done, _ = life.list_tasks(lifecycle.TaskQuery(None, state="PENDING"), limit=20)
    assert len(done) == 8
    registry = lifecycle.listing_keys(TENANT)[1]
    client.delete(lifecycle.tasks_index_key("initech"))
    life.list_tasks(lifecycle.TaskQuery(None), limit=1)
    assert lifecycle.tasks_index_key("initech").encode() not in client.smembers(registry)


def test_submit_keeps_the_message_on_the_record_only_where_a_reconcile_pass_runs(
        app: TaskplaneCelery, lifecycle_redis: RedisServer, client: redis.Redis) -> None:
    """The copy is for ``reconcile.lua`` alone (issue 29: a 1-2 kB write per task, and a
    record too big for Redis' compact hash encoding): kept with ``RECONCILE_INTERVAL`` set
    (``auto`` behind Sentinel), not on a single node's default, and dropped at start."""
    assert app.runtime.settings.reconcile_seconds == 0
    plain = accept(app)
    assert client.hmget(lifecycle.record_key(plain), "message", "list") == [None, None]
    assert client.object("encoding", lifecycle.record_key(plain)) == b"listpack"
    reconciling = make_app(lifecycle_redis, RECONCILE_INTERVAL="10")
    try:
        kept = accept(reconciling)
        message, queue_list = client.hmget(lifecycle.record_key(kept), "message", "list")
        assert queue_list is not None and message is not None
        assert json.loads(message)["headers"]["id"] == kept
        assert message in client.lrange(queue_list, 0, -1)
        assert reconciling.runtime.lifecycle.start(kept, 0).verdict == "run"
        assert client.hmget(lifecycle.record_key(kept), "message", "list") == [None, None]
    finally:
        reconciling.close()
