"""Faults 1, 2, 3 and 6: worker processes that die, are killed, are told to stop, or run bad tasks.

Each test starts its own redis-server (broker), a ledger redis-server the chaos tasks count
their runs in, one gunicorn and its Celery workers, with a short VISIBILITY_TIMEOUT
(harness.CHAOS_ENV). "completed" is the API's SUCCESS; "duplicated" the tasks whose body
was entered more than once (at-least-once: a run cut short is run again); "lost" the
accepted (202) tasks that did not end SUCCESS.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.chaos.harness import (
    RESTORE_INTERVAL,
    SCALE,
    VISIBILITY_TIMEOUT,
    Stack,
    Submitter,
    children,
    work,
)
from tests.support.services import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(150 + 90 * SCALE)]


def tally(s: Stack, keys: list[str], task_ids: list[str]) -> dict[str, int]:
    """completed / duplicated / lost / double-completions of ``keys`` (ids in the same order)."""
    states = s.api_states(task_ids)
    started, done = s.ledger.started(), s.ledger.done()
    completed = sum(1 for t in task_ids if states[t].get("state") == "SUCCESS")
    return {
        "accepted": len(keys),
        "completed": completed,
        "duplicated": sum(1 for k in keys if started.get(k, 0) > 1),
        "lost": len(keys) - completed,
        "double_completions": sum(1 for k in keys if done.get(k, 0) > 1),
    }


def drained(s: Stack) -> bool:
    q = s.queue()
    return q["waiting"] == 0 and q["reserved"] == 0 and s.unacked() == 0


def test_fault_1_pool_child_sigkill_mid_task(stack, summary) -> None:
    """A pool process SIGKILLed while it runs a task, several times during a stream of tasks.

    acks_late + reject_on_worker_lost: the main process sees the child die, hands the task
    back to the queue at once, and forks a new child. Every accepted task ends SUCCESS;
    each task cut short runs again (counted as duplicated, the price of at-least-once).
    """
    n, kills, seconds = 30 * SCALE, 3 * SCALE, 0.4
    s = stack()
    worker = s.start_worker("f1", concurrency=2)
    s.start_api()
    assert s.api is not None
    sub = Submitter(s.api.base, work(seconds), target=n, prefix="f1", threads=1,
                    pace=0.15).start()  # a stream about as fast as the worker runs it
    killed: dict[str, int] = {}

    def victim() -> tuple[int, str] | None:
        for pid in children(worker.pid):
            key = s.ledger.running_key(pid)
            if key and key not in killed and s.ledger.client.hget("chaos:started", key) == b"1":
                return pid, key
        return None

    for i in range(kills):
        # Spread the kills over the stream: the i-th once (i+1)/(kills+1) of it is accepted.
        wait_for(lambda i=i: sub.accepted_count() >= n * (i + 1) // (kills + 1), 60,
                 f"{n * (i + 1) // (kills + 1)} tasks accepted")
        pid, key = wait_for(victim, 30, "a pool process in the middle of a task")
        os.kill(pid, signal.SIGKILL)
        killed[key] = pid
    sub.join(60 + 5 * n * seconds)
    keys = sorted(sub.accepted)
    s.ledger.wait_done(keys, 30 + 2 * n * seconds, "every accepted task to finish")
    wait_for(lambda: drained(s), 30, "queue drained and nothing unacknowledged")
    t = tally(s, keys, [sub.accepted[k].task_id for k in keys])
    started = s.ledger.started()
    rerun = sum(1 for k in killed if started.get(k, 0) >= 2)
    summary(1, "worker-child-sigkill", accepted=t["accepted"], completed=t["completed"],
            duplicated=t["duplicated"], lost=t["lost"], kills=len(killed),
            killed_tasks_rerun=rerun, double_completions=t["double_completions"],
            http=sub.statuses())
    assert sub.statuses() == {202: n}
    assert t["lost"] == 0
    assert rerun >= 1, "no kill landed mid-task: the fault was not exercised"
    assert worker.alive()


def test_fault_2_whole_worker_sigkill(stack, summary) -> None:
    """A whole worker (main process and pool) SIGKILLed while it runs two tasks and holds two more.

    Nobody hands its tasks back: they stay in ``unacked`` with a lease nobody renews. Another
    worker's sweep restores them once the lease is VISIBILITY_TIMEOUT old (checked every
    UNACKED_RESTORE_INTERVAL), so they start again within about V + R of the kill.
    """
    n, seconds = 8 * SCALE, 1.0
    s = stack()
    doomed = s.start_worker("f2doomed", concurrency=2, WORKER_PREFETCH_MULTIPLIER="2")
    s.start_api()
    assert s.api is not None
    sub = Submitter(s.api.base, work(seconds), target=n, prefix="f2", threads=2).start()
    sub.join(60)

    def holding() -> bool:
        running = [p for p in children(doomed.pid) if s.ledger.running_key(p)]
        return len(running) == 2 and s.unacked() == 4

    wait_for(holding, 30, "the doomed worker running two tasks and holding two more")
    held = set(s.unacked_task_ids())
    killed_at = time.time()
    doomed.stop(signal.SIGKILL)  # the whole process group, no goodbye
    s.start_worker("f2rescuer", concurrency=2)
    keys = sorted(sub.accepted)
    s.ledger.wait_done(keys, 60 + 2 * n * seconds, "every accepted task to finish")
    wait_for(lambda: drained(s), 30, "queue drained and nothing unacknowledged")
    t = tally(s, keys, [sub.accepted[k].task_id for k in keys])
    by_id = {a.task_id: k for k, a in sub.accepted.items()}
    last_start = s.ledger.last_start()
    delays = sorted(last_start[by_id[i]] - killed_at for i in held)
    summary(2, "worker-sigkill", accepted=t["accepted"], completed=t["completed"],
            duplicated=t["duplicated"], lost=t["lost"], held_at_kill=len(held),
            redelivered_after_s=f"{delays[0]:.1f}-{delays[-1]:.1f}",
            bound_s=VISIBILITY_TIMEOUT + RESTORE_INTERVAL,
            double_completions=t["double_completions"])
    assert t["lost"] == 0
    assert len(held) == 4
    # Lease renewed at most LEASE_INTERVAL before the kill, restored by a sweep within
    # V + R; the slack covers a task slot freeing up on a loaded 2-core machine.
    assert delays[-1] <= VISIBILITY_TIMEOUT + RESTORE_INTERVAL + 2 * seconds + 5


def test_fault_3_worker_sigterm_while_busy(stack, summary) -> None:
    """SIGTERM to a busy worker's main process, as Kubernetes sends on scale-down.

    REMAP_SIGTERM=SIGQUIT makes it Celery's soft shutdown: the worker stops consuming,
    waits WORKER_SOFT_SHUTDOWN_TIMEOUT (here 2 s) for running tasks, acknowledging those that
    finish (the 1 s task), then hands the unfinished (the 4 s task) and the prefetched ones
    back to the queue. Right after it exits nothing is left in ``unacked``; a second worker
    runs everything handed back.
    """
    grace, n_short = 2.0, 10 * SCALE
    s = stack()
    a = s.start_worker("f3a", concurrency=2, WORKER_PREFETCH_MULTIPLIER="2",
                       WORKER_SOFT_SHUTDOWN_TIMEOUT=str(grace), REMAP_SIGTERM="SIGQUIT")
    s.start_api()
    api = s.api
    assert api is not None
    long_ = api.submit("chaos.work", kwargs={"key": "f3-long", "seconds": 4})
    medium = api.submit("chaos.work", kwargs={"key": "f3-medium", "seconds": 1})
    sub = Submitter(api.base, work(0.2), target=n_short, prefix="f3", threads=2)

    def both_running() -> bool:
        running = {s.ledger.running_key(p) for p in children(a.pid)}
        return running == {"f3-long", "f3-medium"}

    wait_for(both_running, 30, "the long and the medium task running on worker A")
    sub.start().join(60)  # queued behind them; A prefetches two of these
    wait_for(lambda: s.unacked() == 4, 10, "worker A holding two running and two prefetched")
    term_at = time.monotonic()
    a.send(signal.SIGTERM)  # the main process only, as the kubelet does
    wait_for(lambda: not a.alive(), grace + 30, "worker A to exit after its soft shutdown")
    shutdown_s = time.monotonic() - term_at
    left_unacked = s.unacked()
    done_on_a = s.ledger.done()
    waiting_after = s.queue()["waiting"]
    b = s.start_worker("f3b", concurrency=2)
    keys = ["f3-long", "f3-medium", *sorted(sub.accepted)]
    ids = [long_["id"], medium["id"], *(sub.accepted[k].task_id for k in sorted(sub.accepted))]
    s.ledger.wait_done(keys, 60 + n_short, "every task to finish on worker B")
    wait_for(lambda: drained(s), 30, "queue drained and nothing unacknowledged")
    t = tally(s, keys, ids)
    summary(3, "worker-sigterm", accepted=t["accepted"], completed=t["completed"],
            duplicated=t["duplicated"], lost=t["lost"], shutdown_s=round(shutdown_s, 1),
            grace_s=grace, unacked_after_exit=left_unacked, waiting_after_exit=waiting_after,
            finished_during_grace=sorted(k for k in done_on_a if k in keys),
            double_completions=t["double_completions"])
    assert t["lost"] == 0
    assert left_unacked == 0, "messages stuck in unacked after a soft shutdown"
    assert done_on_a.get("f3-medium") == 1, "the task that fits the grace period must finish"
    assert s.ledger.done().get("f3-medium") == 1, "a task acknowledged on A must not run again"
    assert shutdown_s <= grace + 15
    assert b.alive()


FAULTY = {  # task → error type the API must show
    "chaos.hang": "TimeLimitExceeded",
    "chaos.fail": "ValueError",
    "chaos.selfkill": "PoisonedTask",
    "chaos.unserializable": "EncodeError",
}


def test_fault_6_misbehaving_tasks(stack, summary) -> None:
    """Tasks that overrun their hard limit, raise, kill their own process, return non-JSON.

    Each ends FAILURE with its error type visible through the API and is filed as a dead
    letter (the self-killing one after MAX_DELIVERIES=3 runs, as poisoned); the worker's
    main process survives and keeps serving healthy tasks sent during and after them.
    """
    s = stack()
    worker = s.start_worker("f6", concurrency=2, MAX_DELIVERIES="3")
    s.start_api(MAX_DELIVERIES="3")
    api = s.api
    assert api is not None
    faulty: dict[str, tuple[str, str]] = {}  # id → (task, key)
    healthy: dict[str, str] = {}  # key → id
    for rep in range(SCALE):
        for name in FAULTY:
            key = f"f6-{name.split('.')[1]}-{rep}"
            faulty[api.submit(name, kwargs={"key": key})["id"]] = (name, key)
            for j in range(2):
                hkey = f"f6-ok-{rep}-{name.split('.')[1]}-{j}"
                healthy[hkey] = api.submit("chaos.work", kwargs={"key": hkey})["id"]
    bodies = {i: api.wait_state(i, ("SUCCESS", "FAILURE", "REVOKED"), timeout=60 + 10 * SCALE)
              for i in faulty}
    # After all of them: the same worker still serves.
    for j in range(5):
        hkey = f"f6-after-{j}"
        healthy[hkey] = api.submit("chaos.work", kwargs={"key": hkey})["id"]
    s.ledger.wait_done(healthy, 60, "healthy tasks to finish")
    wait_for(lambda: drained(s), 30, "queue drained and nothing unacknowledged")
    dead = {e["id"]: e for e in api.get("/v1/dead-letters", params={"limit": 500}).json()["items"]}
    wrong = {i: (faulty[i][0], b.get("state"), b.get("error")) for i, b in bodies.items()
             if b.get("state") != "FAILURE"
             or (b.get("error") or {}).get("type") != FAULTY[faulty[i][0]]
             or not (b.get("error") or {}).get("message") or i not in dead}
    hstates = s.api_states(list(healthy.values()))
    started = s.ledger.started()
    h_ok = sum(1 for i in healthy.values() if hstates[i].get("state") == "SUCCESS")
    accepted = len(faulty) + len(healthy)
    completed = len(faulty) - len(wrong) + h_ok
    selfkill_runs = [started.get(k, 0) for n, k in faulty.values() if n == "chaos.selfkill"]
    summary(6, "misbehaving-tasks", accepted=accepted, completed=completed,
            duplicated=sum(1 for k in healthy if started.get(k, 0) > 1),
            lost=accepted - completed,
            errors={n: bodies[i]["error"]["type"] for i, (n, _) in faulty.items()
                    if bodies[i].get("error")},
            selfkill_runs=selfkill_runs, dead_lettered=sum(1 for i in faulty if i in dead))
    assert not wrong, wrong
    assert h_ok == len(healthy)
    assert all(r == 3 for r in selfkill_runs), selfkill_runs
    assert worker.alive()
