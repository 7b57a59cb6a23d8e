"""Workflows from Python: submit a chain or a group with a callback, follow, list, cancel.

``WorkflowClient(client)`` wraps a :class:`taskplane.client.Client` (its session, token,
retries)::

    wf = WorkflowClient(tp)
    w = wf.submit({"group": [{"task": "reports.summary", "kwargs": {...}}, ...],
                   "then": {"task": "long_running_task"}})
    done = wf.wait(w.id, on_change=lambda w: print(w.progress))
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .client import Client

FINAL = ("SUCCESS", "FAILURE", "REVOKED")


@dataclass(frozen=True)
class Workflow:
    """A workflow as the API shows it."""

    id: str
    kind: str
    state: str
    progress: int = 0
    total: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state in FINAL

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Workflow:
        return cls(id=body["id"], kind=body.get("kind", ""), state=body["state"],
                   progress=int(body.get("progress", 0)), total=int(body.get("total", 0)),
                   counts=dict(body.get("counts") or {}), raw=dict(body))


class WorkflowClient:
    """The ``/v1/workflows`` routes through ``client``."""

    def __init__(self, client: Client, poll: float = 1.0) -> None:
        self.client = client
        self.poll = poll

    def submit(self, body: Mapping[str, Any], idempotency_key: str | None = None) -> Workflow:
        """Submit a workflow body; retried safely under one Idempotency-Key."""
        key = idempotency_key or str(uuid.uuid4())
        made = self.client._call("POST", "/v1/workflows", json=dict(body),
                                 headers={"Idempotency-Key": key}, retry_unanswered=True)
        return self.get(made["id"])

    def get(self, workflow_id: str) -> Workflow:
        return Workflow.from_json(self.client._call("GET", f"/v1/workflows/{workflow_id}",
                                                    retry_unanswered=True))

    def wait(self, workflow_id: str, timeout: float | None = None,
             on_change: Callable[[Workflow], None] | None = None) -> Workflow:
        """The workflow once it has ended, or as it is after ``timeout`` seconds; calls
        ``on_change`` with each new state (progress bars)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: tuple[str, int] | None = None
        while True:
            found = self.get(workflow_id)
            if on_change is not None and (found.state, found.progress) != last:
                on_change(found)
                last = (found.state, found.progress)
            if found.done or (deadline is not None and time.monotonic() >= deadline):
                return found
            time.sleep(self.poll if deadline is None
                       else max(0.0, min(self.poll, deadline - time.monotonic())))

    def list(self, page_size: int = 50) -> Iterator[Workflow]:
        """The caller's workflows, newest first, a page per request."""
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if cursor:
                params["cursor"] = cursor
            page = self.client._call("GET", "/v1/workflows", params=params,
                                     retry_unanswered=True)
            for item in page["items"]:
                yield Workflow.from_json(item)
            cursor = page.get("next")
            if not cursor:
                return

    def cancel(self, workflow_id: str, terminate: bool = False) -> Workflow:
        return Workflow.from_json(self.client._call(
            "DELETE", f"/v1/workflows/{workflow_id}",
            params={"terminate": "true" if terminate else "false"}))
