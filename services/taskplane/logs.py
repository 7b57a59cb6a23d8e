"""The process's logging, set up once by each entry point, never by an app factory.

``taskplane api`` (gunicorn's config, in the master before it forks), ``taskplane
exporter`` and ``taskplane scheduler`` call :func:`configure` at their start; the worker
leaves its root logger to Celery and filters task data out of Celery's own loggers
(``worker.redact_task_data_in_logs``). Factories (``create_app``, ``create_celery``)
touch no logger, so building an app in a test or a tool changes nothing global.
"""

from __future__ import annotations

import logging

#: One line per record: time, level, logger, message (the same in every process).
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str) -> None:
    """Log to stderr at ``level`` (``LOG_LEVEL``); a no-op if the root logger has handlers."""
    logging.basicConfig(level=level, format=FORMAT)
