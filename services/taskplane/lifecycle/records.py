"""What goes into the lifecycle and comes out of it: the task record, the outcome of each
transition, the dead letter a failure files, and the state a client sees."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, fields
from typing import Any

from .errors import PoisonedTask
from .states import FINAL_STATES, PENDING, result_state


@dataclass
class TaskRecord:
    """What Taskplane knows of a submitted task beyond Celery's result."""

    id: str
    tenant: str
    task: str
    queue: str
    priority: int
    submitted_at: float
    state: str = PENDING
    eta: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    retries: int = 0
    workflow: str | None = None  # the workflow it is a member of (workflow_state.py)
    reason: str | None = None  # why its workflow revoked it, if it did
    notify: str | None = None  # its webhook, JSON (written at submission, never read back)

    @classmethod
    def from_hash(cls, task_id: str, raw: dict[bytes, bytes]) -> TaskRecord:
        h = {k.decode(): v.decode() for k, v in raw.items()}

        def num(name: str) -> float | None:
            return float(h[name]) if h.get(name) else None

        return cls(
            id=task_id,
            tenant=h.get("tenant", ""),
            task=h.get("task", ""),
            queue=h.get("queue", ""),
            priority=int(float(h.get("priority", 0))),
            submitted_at=float(h.get("submitted_at", 0)),
            state=h.get("state") or PENDING,
            eta=num("eta"),
            started_at=num("started_at"),
            finished_at=num("finished_at"),
            retries=int(h.get("retries", 0)),
            workflow=h.get("workflow") or None,
            reason=h.get("reason") or None,
        )

    def fields(self) -> list[str]:
        """The field/value pairs a new record is written with (state is the script's)."""
        out: list[str] = []
        for k in _NEW_RECORD_FIELDS:
            v = getattr(self, k)
            if v is not None:
                out += [k, str(v)]
        return out


_NEW_RECORD_FIELDS = tuple(f.name for f in fields(TaskRecord)
                           if f.name not in ("id", "state", "started_at", "finished_at", "workflow",
                                             "reason"))


@dataclass(frozen=True)
class Submission:
    """Outcome of :meth:`Lifecycle.submit`."""

    outcome: str  # created | replay | conflict | rate_limited | cap_reached
    task_id: str
    retry_after: float = 0.0


@dataclass(frozen=True)
class RunStart:
    """Outcome of :meth:`Lifecycle.start`: whether the run goes ahead."""

    verdict: str  # run | unknown | REVOKED | SUCCESS | FAILURE | running
    died: int  # earlier runs whose process died before they ended
    #: ``running``: seconds until the live run's lease lapses (start no sooner)
    wait: float = 0.0

    @property
    def runs(self) -> bool:
        return self.verdict in ("run", "unknown")


@dataclass(frozen=True)
class Transition:
    """Outcome of finish, fail, revoke and retry_dead."""

    outcome: str  # done / revoked / queued | missing | final | running | gone | cap_reached ...
    previous: str = ""  # the state the task had (or, for ``final``, still has)


#: A Celery result write as (key, encoded value, ttl seconds; 0 keeps it forever). The
#: value is what the backend's serializer made: str for JSON, bytes for pickle or msgpack.
ResultWrite = tuple[str, str | bytes, int]


def dead_letter(task_id: str, task: str, exc: BaseException, args: Any, kwargs: Any,
                retry_for: tuple[type[BaseException], ...]) -> dict[str, Any]:
    """What ``fail`` files for a task that failed for good, and why it did: poisoned, its
    declared retries exhausted, or an error it does not retry."""
    if isinstance(exc, PoisonedTask):
        reason = "poisoned"
    elif retry_for and isinstance(exc, retry_for):
        reason = "retries exhausted"
    else:
        reason = "failed"
    return {"id": task_id, "task": task, "args": list(args or ()), "kwargs": dict(kwargs or {}),
            "error": {"type": type(exc).__name__, "message": str(exc)[:2000]},
            "reason": reason, "failed_at": time.time()}


def fingerprint(body: Any) -> str:
    """Stable hash of a request body, so key reuse with a different body is detected."""
    # ensure_ascii: a lone surrogate (valid JSON, not encodable UTF-8) hashes too
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def visible_state(record: TaskRecord, meta: dict[str, Any] | None) -> str:
    """The state a client sees: the record's when final (the record is the authority
    on endings), else the result's finer one (PROGRESS, RETRY), else the record's."""
    if record.state in FINAL_STATES:
        return record.state
    return result_state(meta) or record.state
