"""The shared task package: the registry, the task base class and the built-in tasks.

Team task modules import ``task`` and ``progress`` from here and name themselves
in ``TASK_MODULES``; they never import the API or a Celery app. Declaring a task binds
it to no app: each app loads the modules it names into its own :class:`Registry`.
"""

from .base import progress
from .registry import DeclaredTask, Registry, TaskSpec, load_task_modules, task

__all__ = ["DeclaredTask", "Registry", "TaskSpec", "load_task_modules", "progress", "task"]
