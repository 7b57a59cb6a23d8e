"""The blog post's ``tasks.py``: one Celery app and ``long_running_task``.

As in the post, except that the 10-second sleep is ``SEED_TASK_SECONDS`` (0 by default:
the benchmark measures the platform, not the sleep), and the Redis URL comes from
``REDIS_URL`` (see celeryconfig.py). The two prints stay: they are part of the post's task.
"""

import os
import time

from celery import Celery

celery_app = Celery("my_tasks", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
celery_app.config_from_object("celeryconfig")

TASK_SECONDS = float(os.environ.get("SEED_TASK_SECONDS", "0"))


@celery_app.task
def long_running_task(data):  # noqa: ANN001, ANN201 - the post's signature
    """
    A simple example task that simulates a long-running process.
    """
    print(f"Starting long-running task with data: {data}")
    if TASK_SECONDS:
        time.sleep(TASK_SECONDS)
    print(f"Finished long-running task with data: {data}")
    return f"Task completed successfully with data: {data}"
