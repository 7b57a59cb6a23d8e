"""The registry of named tasks: what may be submitted, with which arguments, to which queue.

Each task is declared once with :func:`task`. The declaration is the contract the
API enforces at the door (a JSON Schema for the arguments, 422 before anything is
queued) and the policy the worker runs it under (queue, time limits, retries).
Declaring a task records it on its module; each app collects the tasks of the modules
it loads into its own :class:`Registry` and binds them to its own Celery app, so this
package never imports a concrete Celery app or Flask, and no table spans apps.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from celery import Celery

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
    #: Derived from ``schema`` and ``func`` once, when the spec is made (``__post_init__``).
    contract: CompiledSchema = field(init=False, repr=False, compare=False)
    signature: inspect.Signature = field(init=False, repr=False, compare=False)
    #: The module that declared it, and the options its Celery task is made with.
    module: str = ""
    celery_options: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)
    queue: str | None = None
    time_limit: int | None = None
    soft_time_limit: int | None = None
    retry_for: tuple[type[BaseException], ...] = ()
    max_retries: int = 3
    retry_backoff_max: int = DEFAULT_RETRY_BACKOFF_MAX

    def __post_init__(self) -> None:
        object.__setattr__(self, "contract", CompiledSchema(self.schema, "kwargs"))
        object.__setattr__(self, "signature", inspect.signature(self.func))

    def bind_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Name every argument as the task function would, so one schema covers both forms.

        Missing arguments are left to the schema's ``required``, which names them.
        """
        return dict(self.signature.bind_partial(*args, **kwargs).arguments)

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
    """Name → :class:`TaskSpec`: the tasks one app loaded, and nothing it did not.

    Each app builds its own (:meth:`from_modules`), so two apps in one process with
    different ``TASK_MODULES`` or ``BUILTIN_TASKS`` see different tasks: declaring a task
    records it on its module (:func:`task`), never in a process-wide table.
    """

    def __init__(self, specs: Iterable[TaskSpec] = (), modules: Sequence[str] = ()) -> None:
        self._specs: dict[str, TaskSpec] = {}
        #: The task modules this registry loaded, in order (their schedules: ``schedules``).
        self.modules: tuple[str, ...] = tuple(modules)
        for spec in specs:
            self.add(spec)

    @classmethod
    def from_modules(cls, modules: Iterable[str], builtin: bool = True) -> Registry:
        """The tasks declared by the built-in modules (if ``builtin``) and by ``modules``.

        A module is imported once per process; its declarations stay recorded on it, so
        every app that names it collects the same specs.
        """
        names = (*(BUILTIN_MODULES if builtin else ()), *modules)
        registry = cls(modules=names)
        for name in names:
            for spec in loaded_by(importlib.import_module(name)):
                registry.add(spec)
        return registry

    def add(self, spec: TaskSpec) -> None:
        existing = self._specs.get(spec.name)
        if existing is not None and existing.func is not spec.func:
            raise ValueError(f"task {spec.name!r} is registered twice "
                             f"({existing.module} and {spec.module})")
        self._specs[spec.name] = spec

    def get(self, name: str) -> TaskSpec | None:
        return self._specs.get(name)

    def __iter__(self) -> Iterator[TaskSpec]:
        return iter(sorted(self._specs.values(), key=lambda s: s.name))

    def __len__(self) -> int:
        return len(self._specs)

    def queues(self, default_queue: str) -> set[str]:
        return {spec.queue or default_queue for spec in self._specs.values()}

    def bind(self, app: Celery) -> None:
        """Make every task of this registry a task of ``app``, and of no other app.

        ``shared=False``: Celery's default (like ``shared_task``) would add the task to
        every app the process creates, loaded modules or not; ``lazy=False``: the task
        exists as soon as this returns, not at the app's finalization.
        """
        for spec in self:
            app.task(shared=False, lazy=False, **spec.celery_options)(spec.func)


#: The attribute of a task module that records the tasks it declares (name → spec).
DECLARED_ATTRIBUTE = "__taskplane_tasks__"


def declared_in(module: ModuleType) -> list[TaskSpec]:
    """The tasks ``module`` itself declared with :func:`task` (not those it imported)."""
    declared: dict[str, TaskSpec] = getattr(module, DECLARED_ATTRIBUTE, {})
    return list(declared.values())


def loaded_by(module: ModuleType) -> list[TaskSpec]:
    """The tasks naming ``module`` in ``TASK_MODULES`` loads, as importing it always did:
    those it declares, those it imports by name, and those of its submodules it holds (a
    package whose ``__init__`` imports its task modules)."""
    found = declared_in(module)
    prefix = f"{module.__name__}."
    for value in list(vars(module).values()):
        if isinstance(value, DeclaredTask):
            found.append(value.spec)
        elif isinstance(value, ModuleType) and value.__name__.startswith(prefix):
            found.extend(loaded_by(value))
    return found


def _record(spec: TaskSpec) -> None:
    """Record ``spec`` on the module that declares it, which is being imported now."""
    module = sys.modules.get(spec.module)
    if module is None:
        raise RuntimeError(f"task {spec.name!r}: its module {spec.module!r} is not imported "
                           "(declare tasks at the top level of a task module)")
    declared: dict[str, TaskSpec] = module.__dict__.setdefault(DECLARED_ATTRIBUTE, {})
    existing = declared.get(spec.name)
    # The same function declared again (the module reloaded) replaces its old spec.
    if existing is not None and existing.func.__qualname__ != spec.func.__qualname__:
        raise ValueError(f"task {spec.name!r} is registered twice in {spec.module}")
    declared[spec.name] = spec


class DeclaredTask:
    """What :func:`task` returns: the function, callable as before, carrying its spec.

    Celery's task methods (``delay``, ``apply_async``, ``s``...) resolve on the current
    app's task of that name, as Celery's ``shared_task`` proxy does: task modules never
    import an app, and each app binds the task itself (:meth:`Registry.bind`).
    """

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        functools.update_wrapper(self, spec.func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.spec.func(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # introspection (inspect, pickle, pytest) stays off the app
            raise AttributeError(name)
        from celery import current_app

        return getattr(current_app.tasks[self.spec.name], name)

    def __repr__(self) -> str:
        return f"<task {self.spec.name!r} of {self.spec.module}>"


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
) -> Callable[[Callable[..., Any]], DeclaredTask]:
    """Declare ``func`` as the task ``name``.

    ``schema`` is the JSON Schema of the arguments as an object keyed by parameter
    name (positional arguments are named by the function's signature first). Tasks
    retry with exponential back-off and jitter on the exceptions in ``retry_for``
    only; any other exception fails the task at once. ``queue`` and the limits
    default to the settings (``DEFAULT_QUEUE``, ``DEFAULT_TIME_LIMIT``...).

    The declaration is recorded on the task's module, not registered anywhere: an app
    that loads the module (``TASK_MODULES``) collects it (:meth:`Registry.from_modules`).
    """
    full_schema = {"type": "object", "additionalProperties": False, **schema}
    retries = tuple(retry_for)

    def decorate(func: Callable[..., Any]) -> DeclaredTask:
        options: dict[str, Any] = {
            "name": name,
            "base": TaskplaneTask,
            "acks_late": True,
            "reject_on_worker_lost": True,
            "typing": False,  # the API checks arguments; the worker runs what it was given
        }
        if retries:
            options.update(
                autoretry_for=retries,
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
        spec = TaskSpec(
            name=name,
            func=func,
            schema=full_schema,
            description=inspect.getdoc(func) or "",
            module=func.__module__,
            celery_options=options,
            queue=queue,
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            retry_for=retries,
            max_retries=max_retries if retries else 0,
            retry_backoff_max=retry_backoff_max,
        )
        _record(spec)
        return DeclaredTask(spec)

    return decorate


BUILTIN_MODULES = (
    "taskplane.tasks.builtin.demo",
    "taskplane.tasks.builtin.images",
    "taskplane.tasks.builtin.reports",
)


def load_task_modules(modules: Iterable[str], builtin: bool = True) -> Registry:
    """A new registry of the built-in and the configured task modules' tasks."""
    return Registry.from_modules(modules, builtin)
