"""Redis per task (issue 29): the Redis server's CPU and commands one task costs, from its
submission to its stored result, for five sides, each on a private redis-server:

- ``taskplane``: the full path with every guarantee on. ``POST /v1/tasks`` with an
  ``Idempotency-Key`` through Taskplane's API (auth, tenant cap, rate limit, task record,
  listing indexes, metrics), run by a Taskplane worker pod (acks late, leases, result,
  record updates, metrics).
- ``taskplane_bare``: the same path with what a request can switch off switched off: no
  ``Idempotency-Key``, ``RATE_LIMIT=0``, ``MAX_OPEN_TASKS_PER_TENANT=0``. What is left is
  the task's record and its three transitions (submit, start, finish: one script each),
  its listing indexes, the result and kombu's own acks-late bookkeeping: the part of the
  cost no setting removes, against which the guarantees' share can be read.
- ``celery_acks_late``: plain Celery configured for no loss (``baseline/ackslate.py``:
  ``task_acks_late=True``, results in Redis), the same task sent with ``send_task``.
- ``seed``: the blog post's ``.delay()`` and worker (acks early).
- ``floor``: one LPUSH per task, drained by the execution floor (BLMOVE; SET + LREM).

Only the Redis server is measured: ``INFO cpu`` (``used_cpu_user + used_cpu_sys``) and
``INFO commandstats`` before and after, with the workers already up (their start-up
is not counted) and until every result is stored; commands the benchmark itself sends
(its polls for results and the two ``INFO``) are taken out of the counts. Commands that
run inside a Lua script are counted on their own rows as well as the script call: the
breakdown shows where a script's time goes, and ``round_trips_per_task`` counts only
what clients sent.

The sides alternate (rotating order) over several rounds, each run on a fresh Redis,
and each round's figures are divided by plain Celery's of the same round; the report
gives the median of those per-round ratios, and the ceiling each side implies: tasks/s
per Redis core = 1 / (Redis CPU per task).
"""

from __future__ import annotations

import json
import logging
import signal as signals
import threading
import time
import uuid
from typing import Any

import redis

from taskplane import broker

from . import cpu_profile
from .figures import (
    NOOP_BODY,
    RESULT_PREFIX,
    SUBMIT_PATH,
    Progress,
    Sizes,
    fill,
    median,
    median_ratios,
    per_round_ratios,
    rounded,
)
from .loadgen import Client
from .stack import Stack

#: The sides, in the order the rounds rotate; ``celery_acks_late`` is the yardstick.
SIDES = ("taskplane", "taskplane_bare", "celery_acks_late", "seed", "floor")
BASELINE_SIDE = "celery_acks_late"
#: The sides that run Taskplane's own API and worker.
TASKPLANE_SIDES = ("taskplane", "taskplane_bare")
LABELS = {
    "taskplane": "Taskplane, every guarantee on (API submit with Idempotency-Key → worker → SUCCESS)",
    "taskplane_bare": "Taskplane without the guarantees a setting can switch off (no Idempotency-Key, "
                      "`RATE_LIMIT=0`, `MAX_OPEN_TASKS_PER_TENANT=0`): records, transitions, results",
    "celery_acks_late": "plain Celery, `task_acks_late=True`, results in Redis (`send_task`)",
    "seed": "the post's `.delay()` and worker (acks early)",
    "floor": "the floor: one LPUSH, then BLMOVE; SET + LREM",
}
RATIOS = {f"{side}_vs_{BASELINE_SIDE}": (side, BASELINE_SIDE) for side in SIDES if side != BASELINE_SIDE}
#: Target: Taskplane's Redis CPU per task at most plain Celery's with acks late (ratio <= 1).
TARGETS = {f"taskplane_vs_{BASELINE_SIDE}": 1.0}
#: Scripting commands: a client sends them; the commands inside are counted on their own rows.
SCRIPT_CALLS = {"evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro"}
SUBMITTERS = 4  # HTTP connections submitting to Taskplane's API (2 gunicorn workers)


class Poller:
    """The benchmark's own reads of results, counted so they can be taken out."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.sent: dict[str, int] = {}

    def _count(self, command: str) -> None:
        self.sent[command] = self.sent.get(command, 0) + 1

    def stats(self) -> dict[str, Any]:
        self._count("info")  # INFO cpu and INFO commandstats: two calls of "info"
        self._count("info")
        return cpu_profile.redis_stats(self.client)

    def wait(self, ids: list[str], timeout: float, proc: Any = None) -> None:
        """Until every id has a stored result: polls the last id cheaply, then reads all."""
        deadline = time.monotonic() + timeout
        pending = list(ids)
        while pending:
            if proc is not None and not all(p.alive() for p in proc):
                raise RuntimeError("a process of the side died:\n" +
                                   "\n".join(p.log()[-2000:] for p in proc if not p.alive()))
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} of {len(ids)} results missing after {timeout:.0f}s")
            self._count("exists")
            if not self.client.exists(RESULT_PREFIX + pending[-1]):
                time.sleep(0.1)
                continue
            still = []
            for i in range(0, len(pending), 1000):
                chunk = pending[i:i + 1000]
                self._count("mget")
                for task_id, raw in zip(chunk, self.client.mget([RESULT_PREFIX + x for x in chunk]),
                                        strict=True):
                    if raw is None or json.loads(raw).get("status") != "SUCCESS":
                        still.append(task_id)
            pending = still
            if pending:
                time.sleep(0.1)


def per_task(before: dict[str, Any], after: dict[str, Any], n: int, ours: dict[str, int]) -> dict[str, Any]:
    """Redis CPU and commands per task between two stats, the benchmark's own commands out."""
    rows = []
    for name, now in after["commands"].items():
        was = before["commands"].get(name, {"calls": 0, "usec": 0})
        calls = now["calls"] - was["calls"] - ours.get(name, 0)
        usec = now["usec"] - was["usec"]
        if name == "info":
            continue  # only ours
        if calls > 0:
            rows.append({"command": name, "calls_per_task": round(calls / n, 3),
                         "usec_per_task": round(usec / n, 2), "in_scripts": False})
    rows.sort(key=lambda r: (-r["usec_per_task"], r["command"]))
    cpu = after["cpu_s"] - before["cpu_s"]
    scripted = any(r["command"] in SCRIPT_CALLS for r in rows)
    total = sum(r["calls_per_task"] for r in rows)
    return {"cpu_s": round(cpu, 4), "cpu_us_per_task": round(cpu * 1e6 / n, 1),
            "tasks_per_s_per_core": round(n / cpu, 0) if cpu > 0 else None,
            "commands_per_task": round(total, 2),
            # without script-inner commands is not knowable from commandstats alone; the
            # figure is exact when no script runs
            "scripted": scripted,
            "commands": rows}


#: What ``taskplane_bare`` switches off on the API (and its submissions carry no key).
BARE_ENV = {"RATE_LIMIT": "0", "MAX_OPEN_TASKS_PER_TENANT": "0"}


def _submit_http(base: str, token: str, n: int, keyed: bool = True) -> list[str]:
    """``n`` POST /v1/tasks, each with its own Idempotency-Key (``keyed``), from
    ``SUBMITTERS`` connections."""
    ids: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(n))

    def run() -> None:
        client = Client(base, token)
        try:
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                headers = {"Idempotency-Key": uuid.uuid4().hex} if keyed else {}
                status, body = client.request("POST", SUBMIT_PATH, NOOP_BODY, headers=headers)
                with lock:
                    if 200 <= status < 300:
                        ids.append(body["id"])
                    else:
                        errors.append(f"{status} {str(body)[:200]}")
        finally:
            client.close()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(SUBMITTERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} submissions refused, e.g. {errors[0]}")
    return ids


def _floor_messages(stack: Stack, n: int) -> tuple[str, list[bytes], list[str]]:
    """``n`` real Taskplane messages (``bench.fill taskplane``), taken off their list."""
    queue = "bench-cost-floor"
    fill(stack, "taskplane", n, queue)
    key = broker.queue_key(queue, broker.transport_priority(broker.DEFAULT_PRIORITY))
    client = stack.client()
    raw = client.lrange(key, 0, -1)
    client.delete(key)
    if len(raw) != n:
        raise RuntimeError(f"{len(raw)} floor messages in {key!r}, wanted {n}")
    ids = [json.loads(m)["headers"]["id"] for m in raw]
    # lrange returns head first; LPUSH them back oldest first (the tail of the list)
    return key, list(reversed(raw)), list(reversed(ids))


def run_side(stack: Stack, side: str, n: int, rnd: int) -> dict[str, Any]:
    """One side, one round, on a fresh private Redis: its figures per task."""
    with stack.private_redis() as server:
        client = server.client()
        poller = Poller(client)
        procs = []
        try:
            if side in TASKPLANE_SIDES:
                bare = BARE_ENV if side == "taskplane_bare" else {}
                procs = [stack.start_api(f"cost-api-{rnd}", metrics=True, wait=False, **bare),
                         stack.start_worker(f"cost-{rnd}", metrics=True, wait=False)]
                procs[0].wait_http()
                stack.wait_worker_ready(procs[1])
            elif side == "celery_acks_late":
                procs = [stack.start_ackslate_worker(f"cost-ackslate-{rnd}")]
            elif side == "seed":
                procs = [stack.start_seed_worker(f"cost-seed-{rnd}")]
            else:
                key, messages, floor_ids = _floor_messages(stack, n)
                client.flushall()
                procs = [stack.start_exec_floor(f"cost-floor-{rnd}", key)]
            before = poller.stats()
            started = time.monotonic()
            if side in TASKPLANE_SIDES:
                ids = _submit_http(procs[0].base, stack.token, n, keyed=side == "taskplane")
            elif side == "floor":
                ids = floor_ids
                with client.pipeline(transaction=False) as pipe:
                    for message in messages:
                        pipe.lpush(key, message)
                    pipe.execute()
                poller.sent["lpush"] = 0  # these n LPUSH are the floor's enqueue: counted
            else:
                ids = fill(stack, "seed" if side == "seed" else "ackslate", n)
            poller.wait(ids, timeout=60 + n / 20, proc=procs)
            seconds = time.monotonic() - started
            after = poller.stats()
        finally:
            stack.stop(*procs, sig=signals.SIGKILL)
    out = per_task(before, after, n, poller.sent)
    out.update(round=rnd, tasks=n, seconds=round(seconds, 2))
    return out


def redis_cost(stack: Stack, sizes: Sizes, rep: logging.Logger) -> dict[str, Any]:
    """Redis CPU and commands per task, the sides alternated over ``cost_rounds`` rounds."""
    n, rounds = sizes.cost_tasks, sizes.cost_rounds
    sides = list(SIDES)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    rep.info(f"redis per task: {len(sides)} sides x {rounds} rounds of {n:,} tasks, each on its own Redis")
    with Progress(rep, "redis per task (runs)", rounds * len(sides)) as bar:
        done = 0
        for rnd in range(rounds):
            for side in sides[rnd % len(sides):] + sides[:rnd % len(sides)]:
                runs[side].append(run_side(stack, side, n, rnd))
                done += 1
                bar.update(done)
    per_round_cpu = per_round_ratios(runs, "cpu_us_per_task", RATIOS)
    per_round_commands = per_round_ratios(runs, "commands_per_task", RATIOS)
    ratios = median_ratios(per_round_cpu)
    summary = {}
    for side in sides:
        rows = runs[side]
        cpu = median(r["cpu_us_per_task"] for r in rows)
        middle = sorted(rows, key=lambda r: r["cpu_us_per_task"])[(len(rows) - 1) // 2]
        summary[side] = {
            "label": LABELS[side],
            "cpu_us_per_task": rounded(cpu, 1),
            "commands_per_task": rounded(median(r["commands_per_task"] for r in rows), 2),
            "tasks_per_s_per_core": rounded(1e6 / cpu, 0) if cpu > 0 else None,
            "commands": middle["commands"],  # the breakdown of the median round
            "runs": [{k: v for k, v in r.items() if k != "commands"} for r in rows],
        }
    return {
        "what": "Redis server CPU (INFO cpu deltas) and commands (INFO commandstats deltas) per task, "
                "from submission to stored result, workers already up; each side on its own fresh "
                "redis-server, the sides alternated round by round",
        "tasks_per_run": n, "rounds": rounds, "baseline": BASELINE_SIDE,
        "results": summary,
        "ratios": ratios, "per_round_ratios": per_round_cpu,
        "command_ratios": median_ratios(per_round_commands), "per_round_command_ratios": per_round_commands,
        "ratios_how": "each side's Redis CPU per task divided by plain Celery's (acks late) in the same "
                      "round; the median of those per-round ratios (lower is cheaper)",
        "targets": dict(TARGETS),
        "met": {name: bool(ratios[name] <= t) for name, t in TARGETS.items()},  # NaN: not met
        "how": "commands the benchmark sends (INFO, its result polls) are taken out; commands run "
               "inside Lua scripts appear on their own rows as well as in the FCALL (EVALSHA) that ran them",
    }

