"""Sequences the model check (``test_model.py``) found, shrunk, kept as plain tests.

Each names the guarantee it broke and the script that was fixed, so that a change that
brings the bug back fails here first, whatever the model search happens to try.
"""

from __future__ import annotations

import pytest
import redis

from taskplane import lifecycle
from taskplane.celery_app import retry_dead_letter_task
from taskplane.lifecycle import Lifecycle, TaskRecord
from taskplane.runtime import TaskplaneCelery
from tests.lifecycle.conftest import QUEUE, TASK, TENANT, accept

LETTER = {"task": TASK, "args": [], "kwargs": {"value": 1}, "error": {}, "reason": "failed"}


def runs(client: redis.Redis, task_id: str) -> tuple[int, int]:
    started, ended = client.hmget(lifecycle.record_key(task_id), "runs_started", "runs_ended")
    return int(started or 0), int(ended or 0)


def test_a_run_that_ends_after_a_dead_letter_retry_is_not_counted_on_the_new_record(
        app: TaskplaneCelery, life: Lifecycle, client: redis.Redis) -> None:
    """runs_started >= runs_ended (lib.lua ``may_end``). A task fails in its run's process:
    ``fail`` files the dead letter, and task_postrun counts the run's end a moment later.
    An operator's retry in between starts the record afresh (0 runs), and the late count
    made it 0 started, 1 ended: the next start reported -1 deaths."""
    task_id = accept(app)
    life.start(task_id, retries=0)
    assert life.fail(task_id, LETTER, tenant=TENANT).outcome == "done"
    read = life.dead_letter_raw(TENANT, task_id)
    assert read is not None
    assert retry_dead_letter_task(app, TENANT, task_id, read[0]).outcome == "queued"
    life.finish(task_id, "", tenant=TENANT, run_ended=True)  # the old run's task_postrun
    assert runs(client, task_id) == (0, 0)
    assert life.start(task_id, retries=0).died == 0


def test_a_redelivered_twin_ending_on_the_new_record_counts_once(
        app: TaskplaneCelery, life: Lifecycle, client: redis.Redis) -> None:
    """The same guarantee with the new life already running: an old run's end may stand
    in for the new run's, but ends never outnumber starts."""
    task_id = accept(app)
    life.start(task_id, retries=0)
    life.fail(task_id, LETTER, tenant=TENANT)  # the worker's main process: a time limit
    read = life.dead_letter_raw(TENANT, task_id)
    assert read is not None
    retry_dead_letter_task(app, TENANT, task_id, read[0])
    life.start(task_id, retries=0)
    life.finish(task_id, "", tenant=TENANT, run_ended=True)  # the twin of the old life
    life.finish(task_id, lifecycle.SUCCESS, tenant=TENANT, run_ended=True)  # the new run
    assert runs(client, task_id) == (1, 1)


def test_an_adopted_task_is_in_its_tenants_open_set(
        app: TaskplaneCelery, life: Lifecycle, client: redis.Redis) -> None:
    """A task sent around the API is adopted under the system tenant when it starts: it is
    then an unfinished task of that tenant, so ``GET /v1/tasks?state=STARTED`` of that
    tenant (which walks the open set) must find it."""
    adopt = TaskRecord(id="stock-1", tenant=lifecycle.SYSTEM_TENANT, task=TASK, queue=QUEUE,
                       priority=5, submitted_at=1.0)
    assert life.start("stock-1", retries=0, adopt=adopt).verdict == "unknown"
    members = client.zrange(lifecycle.open_key(lifecycle.SYSTEM_TENANT), 0, -1)
    assert b"stock-1" in members


def test_a_countdown_task_keeps_its_open_slot_while_its_record_lives(
        app: TaskplaneCelery, life: Lifecycle, client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A tenant's open set holds its unfinished tasks. A task submitted with a countdown
    has a record that lives TASK_RECORD_TTL + countdown; a later submission without one
    must not drop it from the open set once TASK_RECORD_TTL has passed. The scripts pruned
    by the caller's own record ttl; now by the longest an unfinished record lives
    (lib.lua has_room, submit.lua, retry_dead.lua). Found by reading the scripts while
    modelling them: the model check keeps Redis' clock and ours in step, so it cannot let
    days pass."""
    from taskplane.lifecycle import transitions

    clock = [1_000_000.0]
    monkeypatch.setattr(transitions, "time", type("Clock", (), {
        "time": staticmethod(lambda: clock[0])}))
    late = accept(app, countdown=3600.0)
    clock[0] += life.record_ttl + 60  # the countdown task is still due to run...
    assert client.exists(lifecycle.record_key(late))  # ...and its record lives
    accept(app)
    members = client.zrange(lifecycle.open_key(TENANT), 0, -1)
    assert late.encode() in members


def test_without_a_cap_the_open_set_is_pruned_on_one_submit_in_sixteen(
        life: Lifecycle, client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no cap (``MAX_OPEN_TASKS_PER_TENANT=0``) a submit has room whatever the open set
    holds, so it need not prune it: entries older than the longest an unfinished record
    lives go on one submit in 16 (chosen by its millisecond, as listing indexes are
    trimmed), not on every one (issue 29: a ZREMRANGEBYSCORE per submit, found by the
    benchmark's bare side)."""
    from taskplane.lifecycle import transitions

    clock = [2_000_000.0]
    monkeypatch.setattr(transitions, "time", type("Clock", (), {
        "time": staticmethod(lambda: clock[0])}))

    def submit(task_id: str) -> None:
        record = TaskRecord(id=task_id, tenant=TENANT, task=TASK, queue=QUEUE, priority=5,
                            submitted_at=clock[0])
        assert life.submit(record, ("test:pruned-queue", "{}"), cap=0).outcome == "created"

    opened = lifecycle.open_key(TENANT)
    submit("old-1")
    clock[0] += life.open_age + 60  # old-1's record is surely gone: its entry may go
    clock[0] += 0.001  # a millisecond that is not a trim tick (2_000_000.001... % 16 != 0)
    assert int(clock[0] * 1000) % 16 != 0
    submit("new-1")
    assert b"old-1" in client.zrange(opened, 0, -1)  # not pruned on this submit
    clock[0] = (int(clock[0] * 1000) // 16 + 1) * 16 / 1000  # the next trim tick
    submit("new-2")
    members = client.zrange(opened, 0, -1)
    assert b"old-1" not in members and b"new-1" in members and b"new-2" in members
    client.delete("test:pruned-queue")
