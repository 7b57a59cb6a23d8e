"""A task's state as a client sees it: the Taskplane record joined with Celery's result.

The record says whether the id was ever submitted (else 404, never Celery's
eternal PENDING) and by whom; the result backend says how it is going. Both are
read in one Redis round trip when results live in the broker's Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..lifecycle import FINAL_STATES, TaskRecord, visible_state
from ..runtime import TaskplaneCelery
from .errors import ApiError
from .schemas import TERMINAL_STATES


@dataclass(frozen=True)
class TaskStatus:
    record: TaskRecord
    meta: dict[str, Any] | None  # Celery's stored result, None until a worker writes one

    @property
    def state(self) -> str:
        return visible_state(self.record, self.meta)


def load(app: TaskplaneCelery, task_id: str) -> TaskStatus | None:
    """The task's record and result, read through ``lifecycle.read`` in one round trip."""
    backend = app.backend
    record, raw_meta = app.runtime.lifecycle.read(task_id, with_result=True)
    if record is None:
        return None
    meta = backend.decode_result(raw_meta) if raw_meta else None
    if meta and record.state not in FINAL_STATES and meta.get("status") in FINAL_STATES \
            and meta.get("date_done") and record.started_at is None:
        meta = None  # a result older than this submission (a dead letter being retried)
    return TaskStatus(record, meta)


def not_found(task_id: str) -> ApiError:
    """No such task, or one the caller may not see (another tenant's is 404 too)."""
    shown = task_id if len(task_id) <= 128 else task_id[:125] + "..."
    return ApiError(404, "task_not_found", f"no task with id {shown!r}", {"id": shown})


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def error_of(result: Any) -> dict[str, str]:
    """Celery's JSON-serialised exception (``exc_type``, ``exc_message``) as ``{type, message}``."""
    if isinstance(result, dict) and "exc_type" in result:
        message = result.get("exc_message", "")
        if isinstance(message, list | tuple):
            message = " ".join(str(m) for m in message)
        return {"type": str(result["exc_type"]), "message": str(message)}
    return {"type": type(result).__name__, "message": str(result)}


def represent(status: TaskStatus, self_url: str) -> dict[str, Any]:
    rec, meta, state = status.record, status.meta, status.state
    body: dict[str, Any] = {
        "id": rec.id,
        "task": rec.task,
        "state": state,
        "queue": rec.queue,
        "priority": rec.priority,
        "retries": rec.retries,
        "submitted_at": iso(rec.submitted_at),
        "links": {"self": self_url},
    }
    result = meta.get("result") if meta else None
    if state == "SUCCESS":
        body["result"] = result
    elif state in ("FAILURE", "RETRY"):
        body["error"] = error_of(result)
    elif state == "REVOKED":
        body["error"] = {"type": "TaskRevokedError", "message": rec.reason or "revoked"}
    elif state == "PROGRESS" and isinstance(result, dict):
        body["progress"] = {"percent": result.get("percent", 0.0),
                            "message": result.get("message", "")}
    for name in ("eta", "started_at", "finished_at"):
        value = iso(getattr(rec, name))
        if value:
            body[name] = value
    if rec.workflow:
        base = self_url.rsplit("/tasks/", 1)[0]
        body["workflow"] = {"id": rec.workflow,
                            "links": {"self": f"{base}/workflows/{rec.workflow}"}}
    if "finished_at" not in body and state in TERMINAL_STATES and meta and meta.get("date_done"):
        # The result is stored a moment before the worker stamps the record.
        body["finished_at"] = _iso_text(str(meta["date_done"]))
    return body


def _iso_text(value: str) -> str:
    """Celery's ``date_done`` in the API's timestamp format."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return value
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return iso(parsed.timestamp()) or value
