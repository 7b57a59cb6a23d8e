"""Flower's configuration for Taskplane: ``celery --broker=$REDIS_URL flower --conf=<this file>``.

Self-contained (it imports nothing of Taskplane), so the chart mounts the same file into
the stock Flower image (``charts/taskplane/files/flowerconfig.py`` is a copy that a test
keeps identical).

What Flower shows of a task comes from the workers' events. Taskplane keeps task data out
of them at the source: the API sends every task with its argument reprs redacted
(``<2 redacted>``) and Taskplane's worker puts no return value in its events: their
``result`` is the marker below (``worker.RedactedResultRequest``), never a cut repr.
``format_task`` below is the second line for Flower's task pages: whatever a foreign client
put in its reprs, the pages show only their size.

The same file is also the Celery configuration of Flower's app (``celery
--config=flowerconfig``): behind Sentinel (``REDIS_SENTINEL_MASTER`` set, ``REDIS_URL``
in kombu's ``sentinel://`` form) kombu and Flower's broker page need the master set's name
in ``broker_transport_options``, and the sentinels' own password in ``sentinel_kwargs``.
Flower ignores these names; Celery ignores Flower's.
"""

from __future__ import annotations

import os
from typing import Any

#: What the task pages and events show in place of arguments and results (the worker's
#: ``task-succeeded`` events carry it as the result).
REDACTED = "<redacted>"

# Flower's own defaults, stated: the tasks page must not grow without bound.
max_tasks = 10000
# Workers start with events off; Flower turns them on in the workers it finds.
enable_events = True



def _sentinel_options(env: Any = os.environ) -> dict[str, Any]:
    """Transport options reaching the master through Sentinel; {} without one."""
    master = env.get("REDIS_SENTINEL_MASTER", "")
    if not master:
        return {}
    options: dict[str, Any] = {"master_name": master, "socket_timeout": 10,
                               "socket_connect_timeout": 5}
    if env.get("REDIS_SENTINEL_PASSWORD"):
        options["sentinel_kwargs"] = {"password": env["REDIS_SENTINEL_PASSWORD"]}
    return options


# Celery's settings (``celery --config=flowerconfig``), for a Sentinel REDIS_URL.
broker_transport_options = _sentinel_options()
result_backend_transport_options = broker_transport_options


def format_task(task: Any) -> Any:
    """Flower's hook for its task pages: show argument and result sizes, not contents."""
    for field in ("args", "kwargs", "result"):
        value = getattr(task, field, None)
        if value is not None and value != "" and "redacted" not in str(value):
            setattr(task, field, f"{REDACTED} ({len(str(value))} characters)")
    return task
