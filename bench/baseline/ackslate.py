"""Plain Celery configured for no loss: the post's config plus ``task_acks_late=True``.

Issue 29's yardstick for Redis cost per task: what Celery itself spends on Redis when a
task is acknowledged only after it ran (kombu's ``unacked`` hash and ``unacked_index``
sorted set hold it meanwhile) and its result is stored in Redis. The task has
``bench.noop``'s name and body, so the message and the result are the same size as
Taskplane's; the producer sends it with ``send_task`` (``bench.fill ackslate``), as a
client that does not import the task code does. Everything else is Celery's default
(prefetch multiplier 4, no events, no task records).

    celery -A ackslate worker --concurrency=2      # with PYTHONPATH=bench/baseline
"""

import os

from celery import Celery

celery_app = Celery("ackslate", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
celery_app.config_from_object("celeryconfig")
celery_app.conf.task_acks_late = True


@celery_app.task(name="bench.noop")
def noop(data: str = "") -> str:
    """``bench.noop``'s body: return what the blog post's task returns."""
    return f"Task completed successfully with data: {data}"
