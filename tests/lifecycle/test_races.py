"""Transitions raced by real threads on their own connections: the guarantees hold under
any interleaving Redis chooses, not just the one a sequential test happens to take."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import redis
from celery import states

from taskplane import broker
from taskplane.celery_app import retry_dead_letter_task, revoke, submit
from taskplane.lifecycle import Lifecycle
from taskplane.runtime import TaskplaneCelery
from tests.lifecycle.conftest import QUEUE, TASK, TENANT, accept

RACERS = 8


def race(*calls: Callable[[], Any]) -> list[Any]:
    """Run ``calls`` at once (a barrier lines them up); return their results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def waiting(client: redis.Redis) -> int:
    return sum(client.llen(key) for key in broker.queue_keys(QUEUE))


def test_concurrent_dead_letter_retries_enqueue_once(app: TaskplaneCelery, life: Lifecycle,
                                                     client: redis.Redis) -> None:
    for _ in range(10):
        task_id = accept(app)
        client.delete(*broker.queue_keys(QUEUE))
        life.start(task_id, retries=0)
        life.fail(task_id, {"task": TASK, "args": [], "kwargs": {"value": 1}, "error": {},
                            "reason": "failed"}, tenant=TENANT)
        read = life.dead_letter_raw(TENANT, task_id)
        assert read is not None
        retry = partial(retry_dead_letter_task, app, TENANT, task_id, read[0])
        outcomes = [t.outcome for t in race(*[retry] * RACERS)]
        assert sorted(outcomes) == ["gone"] * (RACERS - 1) + ["queued"]
        assert waiting(client) == 1


def test_concurrent_submits_with_one_key_make_one_task(app: TaskplaneCelery, life: Lifecycle,
                                                       client: redis.Redis) -> None:
    for n in range(10):
        keyed = partial(submit, app, tenant=TENANT, name=TASK, args=[], kwargs={"value": 1},
                        queue=QUEUE, priority=5, idempotency=(f"key-{n}", "fp"))
        results = [(a.task_id, a.replayed) for a in race(*[keyed] * RACERS)]
        assert len({task_id for task_id, _ in results}) == 1
        assert sorted(replayed for _, replayed in results) == [False] + [True] * (RACERS - 1)
        assert waiting(client) == n + 1


def test_revoke_racing_start_never_revokes_a_task_that_then_runs(app: TaskplaneCelery,
                                                                 life: Lifecycle) -> None:
    seen = set()
    for _ in range(60):
        task_id = accept(app)
        start, stop = race(partial(life.start, task_id, retries=0),
                           partial(revoke, app, task_id, TENANT, terminate=False))
        started, revoked = start.verdict, stop.outcome
        # Either the revoke came first (the run is refused) or the start did (the revoke is
        # refused as running): never both "revoked" and "run".
        assert (started, revoked) in (("REVOKED", "revoked"), ("run", "running"))
        seen.add((started, revoked))
    assert seen  # both orders are legal; which ones occurred depends on the scheduler


def test_a_success_is_never_overwritten_by_racing_endings(app: TaskplaneCelery,
                                                          life: Lifecycle) -> None:
    backend = app.backend
    for _ in range(30):
        task_id = accept(app)
        life.start(task_id, retries=0)
        letters_before = life.dead_letters(TENANT, 100, 0)[0]
        endings = race(
            partial(life.finish, task_id, states.SUCCESS, tenant=TENANT,
                    result=backend.encode_state(task_id, "ok", states.SUCCESS)),
            partial(life.revoke, task_id, TENANT, terminate=True,
                    result=backend.encode_state(task_id, None, states.REVOKED)),
            partial(life.fail, task_id, {"task": TASK, "args": [], "kwargs": {}, "error": {},
                                         "reason": "x"}, tenant=TENANT,
                    result=backend.encode_state(task_id, None, states.FAILURE)),
            partial(life.write, task_id, backend.encode_state(task_id, None, states.RETRY),
                    ["state", "RETRY"]),
        )
        outcomes = [e.outcome for e in endings[:3]]
        winners = [o for o in outcomes if o in ("done", "revoked")]
        assert len(winners) == 1, outcomes  # exactly one ending wins
        record, raw = life.read(task_id, with_result=True)
        assert record is not None and raw is not None
        final = backend.decode_result(raw)["status"]
        assert record.state == final  # record and result agree on the one ending
        failed = outcomes[2] == "done"
        assert (final == states.FAILURE) == failed
        # a dead letter exists exactly when FAILURE won
        assert life.dead_letters(TENANT, 100, 0)[0] == letters_before + failed
