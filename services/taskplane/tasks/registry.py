"""The registry of named tasks: what may be submitted, with which arguments, to which queue.

Each task is declared once with :func:`task`. The declaration is the contract the
API enforces at the door (a JSON Schema for the arguments, 422 before anything is
queued) and the policy the worker runs it under (queue, time limits, retries).
Tasks are Celery ``shared_task`` objects, so this package never imports a
concrete Celery app or Flask: the API and the worker bind them to their own app.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import shared_task

from ..schema import CompiledSchema
from .base import TaskplaneTask

#: Back-off between retries grows as ``2**retries`` seconds with full jitter, capped here.
DEFAULT_RETRY_BACKOFF_MAX = 600


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its name, argument contract and run policy."""

    name: str
    func: Callable[..., Any]
    schema: Mapping[str, Any]
    description: str
    queue: str | None = None
    time_limit: int | None = None
    soft_time_limit: int | None = None
    retry_for: tuple[type[BaseException], ...] = ()
    max_retries: int = 3
    retry_backoff_max: int = DEFAULT_RETRY_BACKOFF_MAX
    contract: CompiledSchema = field(repr=False, compare=False, default=None)  # type: ignore[assignment]
    signature: inspect.Signature = field(repr=False, compare=False, default=None)  # type: ignore[assignment]

    def bind_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Name every argument as the task function would, so one schema covers both forms.

        Missing arguments are left to the schema's ``required``, which names them.
        """
        signature = self.signature or inspect.signature(self.func)
        return dict(signature.bind_partial(*args, **kwargs).arguments)

    def argument_errors(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[dict[str, str]]:
        """Every way ``args``/``kwargs`` break the contract, one entry per failing field."""
        try:
            named = self.bind_arguments(args, kwargs)
        except TypeError as exc:
            field = "args" if "positional" in str(exc) else "kwargs"
            return [{"field": field, "message": str(exc)}]
        return self.contract.errors(named)

    def public(self, default_queue: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "queue": self.queue or default_queue,
            "schema": self.schema,
            "time_limit": self.time_limit,
            "soft_time_limit": self.soft_time_limit,
            "max_retries": self.max_retries if self.retry_for else 0,
        }


class Registry:
    """Name → :class:`TaskSpec`. One process-wide instance, like Celery's shared tasks."""

    def __init__(self) -> None:
        self._specs: dict[str, TaskSpec] = {}

    def add(self, spec: TaskSpec) -> None:
        existing = self._specs.get(spec.name)
        if existing is not None and existing.func is not spec.func:
            raise ValueError(f"task {spec.name!r} is registered twice")
        self._specs[spec.name] = spec

    def get(self, name: str) -> TaskSpec | None:
        return self._specs.get(name)

    def __iter__(self) -> Iterable[TaskSpec]:  # type: ignore[override]
        return iter(sorted(self._specs.values(), key=lambda s: s.name))

    def __len__(self) -> int:
        return len(self._specs)

    def queues(self, default_queue: str) -> set[str]:
        return {spec.queue or default_queue for spec in self._specs.values()}


REGISTRY = Registry()


def task(
    name: str,
    *,
    schema: Mapping[str, Any],
    queue: str | None = None,
    time_limit: int | None = None,
    soft_time_limit: int | None = None,
    retry_for: Iterable[type[BaseException]] = (),
    max_retries: int = 3,
    retry_backoff_max: int = DEFAULT_RETRY_BACKOFF_MAX,
) -> Callable[[Callable[..., Any]], Any]:
    """Register ``func`` as the task ``name``.

    ``schema`` is the JSON Schema of the arguments as an object keyed by parameter
    name (positional arguments are named by the function's signature first). Tasks
    retry with exponential back-off and jitter on the exceptions in ``retry_for``
    only; any other exception fails the task at once. ``queue`` and the limits
    default to the settings (``DEFAULT_QUEUE``, ``DEFAULT_TIME_LIMIT``...).
    """
    full_schema = {"type": "object", "additionalProperties": False, **schema}
    contract = CompiledSchema(full_schema, "kwargs")
    retry_for = tuple(retry_for)

    def decorate(func: Callable[..., Any]) -> Any:
        existing = REGISTRY.get(name)
        if existing is not None and existing.func is not func:
            raise ValueError(f"task {name!r} is registered twice")
        options: dict[str, Any] = {
            "name": name,
            "base": TaskplaneTask,
            "acks_late": True,
            "reject_on_worker_lost": True,
            "typing": False,  # the API checks arguments; the worker runs what it was given
        }
        if retry_for:
            options.update(
                autoretry_for=retry_for,
                max_retries=max_retries,
                retry_backoff=True,
                retry_backoff_max=retry_backoff_max,
                retry_jitter=True,
            )
        else:
            options["max_retries"] = 0
        if time_limit is not None:
            options["time_limit"] = time_limit
        if soft_time_limit is not None:
            options["soft_time_limit"] = soft_time_limit
        celery_task = shared_task(**options)(func)
        REGISTRY.add(TaskSpec(
            name=name,
            func=func,
            schema=full_schema,
            description=inspect.getdoc(func) or "",
            queue=queue,
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            retry_for=retry_for,
            max_retries=max_retries if retry_for else 0,
            retry_backoff_max=retry_backoff_max,
            contract=contract,
            signature=inspect.signature(func),
        ))
        return celery_task

    return decorate


BUILTIN_MODULES = (
    "taskplane.tasks.builtin.demo",
    "taskplane.tasks.builtin.images",
    "taskplane.tasks.builtin.reports",
)


def load_task_modules(modules: Iterable[str], builtin: bool = True) -> Registry:
    """Import the built-in and the configured task modules; each registers on import."""
    for module in (*(BUILTIN_MODULES if builtin else ()), *modules):
        importlib.import_module(module)
    return REGISTRY
