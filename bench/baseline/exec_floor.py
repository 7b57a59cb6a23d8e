"""The execution floor: the fewest Redis operations a task can cost, in plain Python loops.

    python exec_floor.py QUEUE_LIST [--processes 2] [--expires SECONDS]

Starts ``--processes`` OS processes (2: the pool size of a Taskplane worker pod and of
the post's worker), forked from this one, each running this loop on its own redis-py
connection until it is killed:

1. ``BLMOVE QUEUE_LIST floor:processing:<pid> RIGHT LEFT 1``: a *reliable* pop. The
   message leaves the queue and is kept in this process's processing list in the same
   atomic step, so a process that dies holding it loses nothing (a sweeper could push
   it back). ``RIGHT``: producers LPUSH, so the oldest message is at the tail, as for
   kombu's BRPOP.
2. Decode the message: the kombu envelope (JSON), the task id from its headers, and the
   base64 body (JSON ``[args, kwargs, embed]``), as any Celery consumer must.
3. Call the no-op: the same function body as ``bench.noop``, so the result is the same.
4. In one round trip (a non-transactional pipeline):
   ``SET celery-task-meta-<id> <result JSON> EX <expires>``, the result as Celery's Redis
   backend stores it (status, result, traceback, children, date_done, task_id: the same
   keys and size, so ``figures.wait_results`` reads and times it like any other side),
   and ``LREM floor:processing:<pid> 1 <message>``, the acknowledgement.

Why this is the floor: a task that is run at least once and whose result can be read
cannot cost fewer than these three operations in two round trips: take the message
without losing it (1), store the result (4) and drop the message once the result is
stored (4; the result has to be written before the ack, or a crash in between loses
it, which is why SET and LREM may share a round trip but not be reordered). Nothing
else is done: no task record, lease, prefetch, heartbeat, event, metric, log line or
pool IPC (each process pops for itself: there is no parent consumer handing messages
to a pool). So the gap between a worker and this floor is what the worker's own
machinery costs per task, not what Redis does.

The backlog is filled with real Taskplane messages (``bench.fill taskplane``) at the
default priority, so it lies in one list (``QUEUE_LIST``, the queue's list of that
priority step, from ``taskplane.broker.queue_key``); a consumer of several priority
lists pops from them in one BRPOP call, so serving priorities adds no operation.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import sys
import traceback
from datetime import UTC, datetime

import redis

RESULT_PREFIX = "celery-task-meta-"
PROCESSING_PREFIX = "floor:processing:"


def noop(data: str = "") -> str:
    """``bench.noop``'s body: return what the blog post's task returns."""
    return f"Task completed successfully with data: {data}"


def run_one(client: redis.Redis, queue: str, processing: str, expires: int) -> bool:
    """Take, run, store and acknowledge one task; False when the queue stayed empty for 1 s."""
    raw = client.blmove(queue, processing, 1, "RIGHT", "LEFT")
    if raw is None:
        return False
    message = json.loads(raw)
    task_id = message["headers"]["id"]
    args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    result = noop(*args, **kwargs)
    meta = json.dumps({"status": "SUCCESS", "result": result, "traceback": None, "children": [],
                       "date_done": datetime.now(UTC).isoformat(), "task_id": task_id})
    with client.pipeline(transaction=False) as pipe:
        pipe.set(RESULT_PREFIX + task_id, meta, ex=expires)
        pipe.lrem(processing, 1, raw)
        pipe.execute()
    return True


def loop(url: str, queue: str, expires: int) -> None:
    client = redis.Redis.from_url(url)
    processing = f"{PROCESSING_PREFIX}{os.getpid()}"
    while True:
        run_one(client, queue, processing, expires)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("queue", help="the Redis list holding the backlog")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--expires", type=int, default=86400, help="result TTL (Celery's default: 1 day)")
    args = parser.parse_args(argv)
    url = os.environ["REDIS_URL"]
    children = []
    for _ in range(args.processes):
        pid = os.fork()
        if pid == 0:
            try:
                loop(url, args.queue, args.expires)
            except BaseException:
                traceback.print_exc()
            os._exit(1)
        children.append(pid)
    print(f"exec floor: {args.processes} processes {children} popping {args.queue!r}; ready.", flush=True)

    def stop_children() -> None:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def on_term(signum: int, frame: object) -> None:
        stop_children()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    # a child that dies ends the floor (the bench sees the process gone, as for a worker)
    os.wait()
    stop_children()
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
