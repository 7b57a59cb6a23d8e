"""Put a backlog of tasks on the queue, the way each side's producer does, without HTTP.

    python -m bench.fill taskplane N IDS_FILE   # taskplane.celery_app.submit(): record + message, one call
    python -m bench.fill seed N IDS_FILE        # the post's long_running_task.delay(data)
    python -m bench.fill ackslate N IDS_FILE    # plain Celery (acks late): send_task("bench.noop")

Run in a child process with the stack's environment (``REDIS_URL`` ...; for ``seed``,
``PYTHONPATH`` holding bench/baseline). Writes the task ids, one per line.
"""

from __future__ import annotations

import sys
from pathlib import Path

DATA = "example_data"


def fill_taskplane(n: int) -> list[str]:
    from taskplane import broker
    from taskplane.celery_app import create_celery, submit
    from taskplane.settings import Settings

    settings = Settings.from_env()
    app = create_celery(settings)
    ids = []
    for _ in range(n):
        accepted = submit(app, tenant="bench", name="bench.noop", args=[], kwargs={"data": DATA},
                          queue=settings.default_queue, priority=broker.DEFAULT_PRIORITY)
        ids.append(accepted.task_id)
    return ids


def fill_seed(n: int) -> list[str]:
    from tasks import long_running_task  # bench/baseline/tasks.py, the post's

    return [long_running_task.delay(DATA).id for _ in range(n)]


def fill_ackslate(n: int) -> list[str]:
    from ackslate import celery_app  # bench/baseline/ackslate.py

    return [celery_app.send_task("bench.noop", kwargs={"data": DATA}).id for _ in range(n)]


def main(argv: list[str]) -> int:
    side, n, out = argv[0], int(argv[1]), Path(argv[2])
    ids = {"taskplane": fill_taskplane, "seed": fill_seed, "ackslate": fill_ackslate}[side](n)
    out.write_text("\n".join(ids) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
