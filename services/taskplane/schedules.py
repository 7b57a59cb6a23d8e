"""Periodic schedules: what fires when, declared in code or stored over the API.

A schedule names a registered task with its arguments and either a five-field ``cron``
expression evaluated in an IANA ``timezone`` or an ``every`` interval in seconds. Its
*ticks* are the instants it is due; every scheduler replica computes the same ticks, so a
tick is an identity: the fire of tick T of schedule S is a submit under the Idempotency-Key
``schedule S T`` (:func:`fire_key`), and the lifecycle's submit script claims that key in
the same step that writes the record and pushes the message. Two replicas firing one
tick, or a fire retried after a crash, therefore make one task (``scheduler.py``).

Time: ``every`` ticks lie on a grid anchored at the Unix epoch (``t % every == 0``), so
they do not depend on when a replica started. ``cron`` ticks come from ``cronsim`` in the
schedule's zone: a wall-clock time that a spring-forward gap skips fires once at the first
instant after the gap, and a time that a fall-back repeats fires once (its first
occurrence) for fixed-hour fields, while ``*``/step minute or hour fields fire in both
repetitions, as Vixie cron does (``tests/schedules/test_times.py`` pins both
transitions).

Policies (checked when a tick is due):

* ``overlap``: ``allow`` fires regardless; ``forbid`` skips the tick while the schedule's
  previous task is unfinished (counted as *skipped*); ``replace`` revokes it (terminating
  it if it runs) and fires.
* ``catch_up``: for ticks more than ``SCHEDULER_MISFIRE_GRACE`` seconds late (no scheduler
  ran when they fell due): ``none`` fires none of them, ``latest`` fires the newest one
  (as well as the ticks on time),
  ``all`` fires every one of them not older than ``SCHEDULER_CATCH_UP_WINDOW`` (itself
  bounded below ``IDEMPOTENCY_TTL`` so the claim of each tick outlives any catch-up), at
  most ``SCHEDULER_MAX_CATCH_UP`` of them. The rest are counted as *missed*.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cronsim import CronSim, CronSimError

from . import broker, lifecycle
from .lifecycle import Lifecycle
from .tasks.registry import Registry

#: Schedule names become part of Redis keys, Idempotency-Keys and metric labels.
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
_NAME = re.compile(NAME_PATTERN)
OVERLAP = ("allow", "forbid", "replace")
CATCH_UP = ("none", "latest", "all")
#: The shortest ``every``: the scheduler's loop runs a few times a second.
MIN_EVERY = 1
#: The longest ``every``: a year; longer periods belong in cron.
MAX_EVERY = 366 * 86_400


@functools.cache
def time_zones() -> frozenset[str]:
    """The IANA zones a schedule may name: those of this machine's tz database (the API
    description lists them, so the check and the description cannot differ)."""
    return frozenset(available_timezones())


class ScheduleError(ValueError):
    """A schedule definition is invalid; ``fields`` names each problem."""

    def __init__(self, fields: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{f['field']}: {f['message']}" for f in fields))
        self.fields = fields


@dataclass(frozen=True)
class Schedule:
    """One periodic schedule of one tenant (code-declared ones: :data:`SYSTEM_TENANT`)."""

    name: str
    task: str
    tenant: str = lifecycle.SYSTEM_TENANT
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    cron: str | None = None
    every: int | None = None
    timezone: str = "UTC"
    queue: str | None = None
    priority: int = broker.DEFAULT_PRIORITY
    enabled: bool = True
    overlap: str = "allow"
    catch_up: str = "none"
    #: When it was created (epoch seconds): no tick before it is ever due.
    created_at: float = 0.0
    #: ``code`` (declared with :func:`periodic`) or ``api``.
    source: str = "api"

    # --- time -------------------------------------------------------------------------

    def ticks_after(self, start: float) -> Iterator[float]:
        """Every tick strictly after ``start`` (epoch seconds), in order, forever."""
        if self.every:
            t = (int(start) // self.every + 1) * self.every
            while True:
                yield float(t)
                t += self.every
        assert self.cron is not None
        zone = ZoneInfo(self.timezone)
        begin = datetime.fromtimestamp(int(start), zone)
        previous = float(int(start))
        for moment in CronSim(self.cron, begin):
            stamp = moment.timestamp()
            if stamp > start and stamp > previous:  # never twice, never backwards
                previous = stamp
                yield stamp

    def next_tick(self, after: float) -> float:
        return next(self.ticks_after(after))

    def due(self, after: float, until: float, limit: int) -> tuple[list[float], int]:
        """Ticks in ``(after, until]``: the newest ``limit`` of them, and how many older
        ones did not fit (a scheduler away for long must not walk millions of ticks)."""
        if self.every:
            first = (int(after) // self.every + 1) * self.every
            if first > until:
                return [], 0
            count = int((until - first) // self.every) + 1
            kept = min(count, limit)
            last = first + (count - 1) * self.every
            return [float(last - (kept - 1 - i) * self.every) for i in range(kept)], count - kept
        ticks: list[float] = []
        dropped = 0
        for t in self.ticks_after(after):
            if t > until:
                break
            ticks.append(t)
            if len(ticks) > limit:
                ticks.pop(0)
                dropped += 1
            if dropped > 1_000_000:  # a per-minute cron missed for two years: stop counting
                break
        return ticks, dropped

    # --- identity ---------------------------------------------------------------------

    @property
    def ident(self) -> str:
        return schedule_ident(self.tenant, self.name)

    def fingerprint(self) -> str:
        """What a fire submits, hashed: a replica holding another definition of the
        schedule (edited meanwhile) is told so by the key, not given a second task."""
        return lifecycle.fingerprint({"task": self.task, "args": list(self.args),
                                      "kwargs": dict(self.kwargs), "queue": self.queue,
                                      "priority": self.priority})

    def to_json(self) -> str:
        data = asdict(self)
        data["args"] = list(self.args)
        data["kwargs"] = dict(self.kwargs)
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Schedule:
        data = json.loads(raw)
        data["args"] = tuple(data.get("args") or ())
        return cls(**data)

    def public(self) -> dict[str, Any]:
        """The definition as the API shows it."""
        return {"name": self.name, "task": self.task, "args": list(self.args),
                "kwargs": dict(self.kwargs), "cron": self.cron, "every": self.every,
                "timezone": self.timezone, "queue": self.queue, "priority": self.priority,
                "enabled": self.enabled, "overlap": self.overlap, "catch_up": self.catch_up,
                "source": self.source}


def schedule_ident(tenant: str, name: str) -> str:
    """``tenant/name``: names hold no ``/``, so the last one splits it."""
    return f"{tenant}/{name}"


def fire_key(schedule: Schedule, tick: float) -> str:
    """The Idempotency-Key of one tick's fire. It holds spaces, which the API refuses in a
    client's Idempotency-Key, so no client can claim (or replay) a schedule's tick."""
    moment = datetime.fromtimestamp(tick, UTC).isoformat()
    return f"schedule {schedule.name} {moment}"


# --- validation --------------------------------------------------------------------------

def check(schedule: Schedule, registry: Registry, known_queues: list[str] | None = None
          ) -> None:
    """Raise :class:`ScheduleError` naming every field that is wrong: at write time, so a
    bad schedule is a 422 now rather than a FAILURE at 3 a.m."""
    problems: list[dict[str, str]] = []
    if not _NAME.fullmatch(schedule.name):
        problems.append({"field": "name", "message": f"must match {NAME_PATTERN}"})
    if (schedule.cron is None) == (schedule.every is None):
        problems.append({"field": "cron", "message": "give exactly one of cron and every"})
    if schedule.cron is not None:
        try:
            CronSim(schedule.cron, datetime(2000, 1, 1, tzinfo=UTC))
        except (CronSimError, ValueError, TypeError) as exc:
            problems.append({"field": "cron", "message": f"not a cron expression: {exc}"})
    if schedule.every is not None and (isinstance(schedule.every, bool) or not isinstance(
            schedule.every, int) or not MIN_EVERY <= schedule.every <= MAX_EVERY):
        problems.append({"field": "every",
                         "message": f"an integer number of seconds {MIN_EVERY}-{MAX_EVERY}"})
    try:
        if schedule.timezone not in time_zones():
            raise ZoneInfoNotFoundError(schedule.timezone)
        ZoneInfo(schedule.timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        problems.append({"field": "timezone",
                         "message": f"unknown time zone {schedule.timezone!r}; use an IANA "
                                    "name such as Europe/Berlin"})
    if schedule.overlap not in OVERLAP:
        problems.append({"field": "overlap", "message": f"one of {', '.join(OVERLAP)}"})
    if schedule.catch_up not in CATCH_UP:
        problems.append({"field": "catch_up", "message": f"one of {', '.join(CATCH_UP)}"})
    if not broker.MIN_PRIORITY <= schedule.priority <= broker.MAX_PRIORITY:
        problems.append({"field": "priority",
                         "message": f"{broker.MIN_PRIORITY}-{broker.MAX_PRIORITY}"})
    spec = registry.get(schedule.task)
    if spec is None:
        problems.append({"field": "task", "message": f"no task type named {schedule.task!r}"})
    else:
        for problem in spec.argument_errors(list(schedule.args), dict(schedule.kwargs)):
            root = problem["field"]
            shown = root if root in ("args", "kwargs") else f"kwargs.{root}"
            problems.append({"field": shown, "message": problem["message"]})
        if known_queues is not None and schedule.queue is not None \
                and schedule.queue not in known_queues:
            problems.append({"field": "queue", "message": f"unknown queue {schedule.queue!r}"})
    if problems:
        raise ScheduleError(problems)


# --- schedules declared in code --------------------------------------------------------

#: The attribute of a task module that records the schedules it declares (name → schedule):
#: like tasks, declared schedules belong to the apps that load their module, not to the
#: process (an app without the module in ``TASK_MODULES`` has none of them).
DECLARED_ATTRIBUTE = "__taskplane_schedules__"


def periodic(name: str, *, task: str, cron: str | None = None, every: int | None = None,
             args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None,
             timezone: str = "UTC", queue: str | None = None,
             priority: int = broker.DEFAULT_PRIORITY, overlap: str = "allow",
             catch_up: str = "none") -> Schedule:
    """Declare a schedule next to its task, in a task module (``TASK_MODULES``); it runs
    under :data:`lifecycle.SYSTEM_TENANT`. Checked when the scheduler loads it (every
    field, the arguments against the task's schema): a bad one stops the scheduler at
    start, not at its first tick."""
    schedule = Schedule(name=name, task=task, args=tuple(args), kwargs=dict(kwargs or {}),
                        cron=cron, every=every, timezone=timezone, queue=queue,
                        priority=priority, overlap=overlap, catch_up=catch_up, source="code")
    # The calling module's namespace: ``periodic`` runs at the top level of a task module,
    # being imported, whose globals are the module's own.
    declared: dict[str, Schedule] = sys._getframe(1).f_globals.setdefault(DECLARED_ATTRIBUTE, {})
    existing = declared.get(name)
    if existing is not None and existing != schedule:
        raise ValueError(f"schedule {name!r} is declared twice")
    declared[name] = schedule
    return schedule


def declared_in(registry: Registry) -> list[Schedule]:
    """The schedules the registry's task modules declare, by name (unchecked)."""
    found: dict[str, Schedule] = {}
    for module in registry.modules:
        for name, schedule in getattr(sys.modules[module], DECLARED_ATTRIBUTE, {}).items():
            if found.get(name, schedule) != schedule:
                raise ValueError(f"schedule {name!r} is declared twice (in {module})")
            found[name] = schedule
    return sorted(found.values(), key=lambda s: s.name)


def declared(registry: Registry) -> list[Schedule]:
    """The code-declared schedules, each checked (:class:`ScheduleError` if one is bad)."""
    found = declared_in(registry)
    for schedule in found:
        try:
            check(schedule, registry)
        except ScheduleError as exc:
            raise ScheduleError([{**f, "field": f"{schedule.name}.{f['field']}"}
                                 for f in exc.fields]) from exc
    return found


# --- stored schedules ---------------------------------------------------------------------

class ScheduleStore:
    """Schedules tenants manage over the API, and the fire state of every schedule.

    Definitions live in one hash (:func:`lifecycle.schedules_key`, field ``tenant/name``),
    which each scheduler reads whole every loop; the fire state of each schedule is the
    lifecycle's (:meth:`Lifecycle.schedule_state`). Every Redis access is the
    lifecycle's (``lifecycle/schedule_state.py``): this class turns JSON into schedules.
    """

    def __init__(self, life: Lifecycle) -> None:
        self.life = life

    def create(self, schedule: Schedule, cap: int = 0) -> str:
        """Store a new schedule, in one step with the checks: ``created``, ``exists`` (the
        tenant has one of that name) or ``cap_reached`` (it has ``cap`` already; 0: no cap)."""
        return self.life.schedule_create(schedule.ident, schedule.to_json(), schedule.tenant,
                                         cap)

    def replace(self, schedule: Schedule) -> bool:
        """Store the changed schedule; False if it was deleted meanwhile (not brought back)."""
        return self.life.schedule_replace(schedule.ident, schedule.to_json())

    def get(self, tenant: str, name: str) -> Schedule | None:
        raw = self.life.schedule_definition(schedule_ident(tenant, name))
        return Schedule.from_json(raw) if raw is not None else None

    def delete(self, tenant: str, name: str) -> bool:
        """Remove the schedule and its fire state together."""
        return self.life.schedule_delete(schedule_ident(tenant, name))

    def all(self) -> list[Schedule]:
        """Every tenant's stored schedules (the scheduler's view)."""
        out = []
        for value in self.life.schedule_definitions():
            try:
                out.append(Schedule.from_json(value))
            except (ValueError, TypeError):  # a definition this version cannot read
                continue
        return out

    def of_tenant(self, tenant: str) -> list[Schedule]:
        return sorted((s for s in self.all() if s.tenant == tenant), key=lambda s: s.name)
