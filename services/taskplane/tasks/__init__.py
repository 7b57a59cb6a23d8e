"""The shared task package: the registry, the task base class and the built-in tasks.

Team task modules import ``task`` and ``progress`` from here and name themselves
in ``TASK_MODULES``; they never import the API or a Celery app.
"""

from .base import progress
from .registry import REGISTRY, Registry, TaskSpec, load_task_modules, task

__all__ = ["REGISTRY", "Registry", "TaskSpec", "load_task_modules", "progress", "task"]
