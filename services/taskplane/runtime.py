"""What every Taskplane process derives from its settings, carried by its Celery app.

A leaf module: the task package reaches the runtime through ``task.app.runtime``
(typed here), never by importing the module that builds the app, so the task
package, the app factory and the registry import no cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from celery import Celery
from celery.app.defaults import DEFAULTS
from celery.utils.nodenames import anon_nodename

from .broker import RedisBroker
from .lifecycle import Lifecycle
from .metrics import Metrics
from .settings import Settings

if TYPE_CHECKING:
    from .tasks.registry import Registry
    from .worker_probes import WorkerProbes


#: The queue a stock Celery client sends to when it names none (Celery's default
#: ``task_default_queue``): workers that consume the default queue consume it too, so such
#: a task runs instead of waiting where no worker reads.
STOCK_DEFAULT_QUEUE: str = str(DEFAULTS["task_default_queue"])


def known_queues(settings: Settings, registry: Registry) -> list[str]:
    """Every queue a task can be on: the configured ones, the stock default, and each
    registered task's own."""
    queues = {settings.default_queue, STOCK_DEFAULT_QUEUE, *settings.queues}
    queues |= registry.queues(settings.default_queue)
    return sorted(queues)


@dataclass(frozen=True)
class Runtime:
    """What one app owns: its settings, task registry, lifecycle, broker reader and metrics.

    Nothing here is process-wide: two apps in one process (tests do this) each have their
    own tasks and their own metric series.
    """

    settings: Settings
    registry: Registry
    lifecycle: Lifecycle
    broker: RedisBroker
    metrics: Metrics = field(default_factory=Metrics)
    #: The ``origin`` header of messages this process sends (Celery's ``anon_nodename``).
    origin: str = field(default_factory=anon_nodename)
    #: Called with (task name, task id, queue) when a failure filed a dead letter (the
    #: worker counts it; the result backend, which files it, knows no metrics).
    on_dead_letter: Callable[[str, str, str], None] | None = None

    def known_queues(self) -> list[str]:
        return known_queues(self.settings, self.registry)


def runtime_of(app: Celery) -> Runtime:
    """The runtime of a Taskplane app, typed (a task's or a signal sender's ``app`` is
    declared a plain Celery by Celery's stubs)."""
    if not isinstance(app, TaskplaneCelery):
        raise TypeError(f"{app!r} is not a Taskplane app (taskplane.celery_app.create_celery)")
    return app.runtime


class TaskplaneCelery(Celery):
    """A Celery app that carries its Taskplane :class:`Runtime` as ``app.runtime``."""

    runtime: Runtime
    #: A worker's probes and lease renewal (``worker_probes.probes_for``), once serving.
    worker_probes: WorkerProbes | None = None

    def now(self) -> datetime:
        """Celery's ``now`` (every stored result's ``date_done``) without its pass through
        ``to_utc``/``make_aware``, an ambiguity check for naive times that costs more than
        the rest of encoding a result: a time taken aware, in UTC, needs none."""
        return datetime.now(UTC).astimezone(self.timezone)
