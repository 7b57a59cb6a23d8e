"""A worker's ending of a task that no replica confirmed is run again until one does (or
its patience runs out) before the worker acks: an ending only the master had would, lost in
a failover, leave the task STARTED with its message unacked, and it would run again though
no worker died. Against a real Redis without replicas, so ``WAIT`` never confirms."""

from __future__ import annotations

import redis

from taskplane.lifecycle import Lifecycle, record_key
from taskplane.runtime import TaskplaneCelery
from tests.lifecycle.conftest import TENANT, accept


def _patient(app: TaskplaneCelery, client: redis.Redis, seen: list[bool]) -> Lifecycle:
    """The lifecycle as a worker holds it (not strict), asking one replica of a Redis
    that has none."""
    return Lifecycle(client, record_ttl=60, result_ttl=60, idempotency_ttl=60,
                     dead_letter_ttl=60, result_key=app.runtime.lifecycle.result_key,
                     acks=1, ack_timeout=0.05, strict_acks=False, on_ack=seen.append,
                     ack_patience=0.5)


def test_an_unconfirmed_ending_is_repeated_until_patience_runs_out_and_counted_once(
        app: TaskplaneCelery, client: redis.Redis) -> None:
    seen: list[bool] = []
    life = _patient(app, client, seen)
    task_id = accept(app)
    life.start(task_id, 0)
    outcome = life.finish(task_id, "SUCCESS", tenant=TENANT, run_ended=True)
    assert outcome.outcome == "done"  # the first run's reply: it did the work
    assert len(seen) >= 3 and not any(seen), seen  # WAIT asked again and again
    record = client.hgetall(record_key(task_id))
    assert record[b"state"] == b"SUCCESS"
    assert record[b"runs_ended"] == b"1"  # the repeats found it ended: nothing counted twice


def test_counting_a_run_end_alone_is_not_repeated(
        app: TaskplaneCelery, client: redis.Redis) -> None:
    seen: list[bool] = []
    life = _patient(app, client, seen)
    task_id = accept(app)
    life.start(task_id, 0)
    assert seen == [False]  # a start waits for a replica too, once: logged, and it runs
    seen.clear()
    life.finish(task_id, "", tenant=TENANT, run_ended=True)
    assert seen == [False]  # logged, not repeated: it ends no task
