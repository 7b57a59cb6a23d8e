"""Workflows in the lifecycle: submit one atomically, read it, list a tenant's.

A workflow is a sequence of *stages*: a chain has one member per stage; a group has
all its members in stage 0 and its callback (``then``, itself possibly a chain) in the
stages after. Only the first stage's messages are pushed at submission; each later
stage's message is held in the workflow hash, ready to push, and the script that ends
the last member of a stage pushes the next one (``scripts/lib.lua`` ``end_member``),
with the stage's outcome spliced in as its first argument. So nothing polls, and the
count of a stage's members lives in the same hash the ending script changes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from .keys import (
    ended_index_keys,
    idempotency_key,
    listing_keys,
    open_key,
    record_key,
    workflow_key,
    workflow_totals_key,
    workflows_index_key,
)
from .records import TaskRecord
from .replies import fields, scored
from .states import REVOKED
from .store import Store

#: A workflow's own states (its members have the task states).
RUNNING = "RUNNING"
WORKFLOW_STATES = (RUNNING, "SUCCESS", "FAILURE", REVOKED)

#: Placeholders in a held message, replaced by the script that pushes it: the body (a
#: JSON string holding Celery's ``[args, kwargs, embed]``), the enqueue time, the
#: delivery tag (kombu's key for an unacknowledged message: one per push).
BODY_SLOT = '"@@BODY@@"'
NOW_SLOT = '"@@NOW@@"'
TAG_SLOT = '"@@TAG@@"'


@dataclass
class Member:
    """One member task: its record, and either its message (first stage: pushed at
    submission) or nothing (held in the workflow: see :class:`HeldStage`)."""

    record: TaskRecord
    stage: int
    position: int
    push: tuple[str, str] | None = None


@dataclass
class HeldStage:
    """A later stage's one message: the queue list, the message with :data:`BODY_SLOT`
    and :data:`NOW_SLOT` in it, and ``body_rest``, the body after the ``[[`` that opens
    its argument list (the script writes ``[[`` + input + ``body_rest``)."""

    queue_key: str
    template: str
    body_rest: str


@dataclass
class WorkflowDraft:
    """Everything :meth:`WorkflowState.submit_workflow` writes."""

    id: str
    tenant: str
    kind: str  # chain | group
    on: str  # success | complete
    members: list[Member]
    held: dict[int, HeldStage] = field(default_factory=dict)  # stage -> its message
    callback: str = ""  # id of the group's callback (first member of stage 1)
    notify: str = ""  # JSON of the workflow's webhook, if any

    def stages(self) -> list[list[str]]:
        out: list[list[str]] = []
        for m in self.members:
            while len(out) <= m.stage:
                out.append([])
            out[m.stage].append(m.record.id)
        return out


@dataclass(frozen=True)
class WorkflowSubmission:
    outcome: str  # created | replay | conflict | cap_reached
    workflow_id: str


@dataclass(frozen=True)
class Workflow:
    """A workflow as stored."""

    id: str
    tenant: str
    kind: str
    on: str
    state: str
    created_at: float
    finished_at: float | None
    stages: list[list[str]]
    stage: int
    counts: dict[str, int]
    callback: str
    reason: str

    @property
    def total(self) -> int:
        return sum(len(s) for s in self.stages)

    @property
    def ended(self) -> int:
        return sum(self.counts.values())

    @classmethod
    def from_hash(cls, workflow_id: str, raw: dict[bytes, bytes]) -> Workflow:
        h = {k.decode(): v.decode() for k, v in raw.items() if not k.startswith(b"msg:")}
        return cls(
            id=workflow_id, tenant=h.get("tenant", ""), kind=h.get("kind", ""),
            on=h.get("on", "success"), state=h.get("state", RUNNING),
            created_at=float(h.get("created_at", 0)),
            finished_at=float(h["finished_at"]) if h.get("finished_at") else None,
            stages=json.loads(h.get("members", "[]")), stage=int(h.get("stage", 0)),
            counts={s: int(h.get(f"n:{s}", 0)) for s in ("SUCCESS", "FAILURE", REVOKED)},
            callback=h.get("callback", ""), reason=h.get("reason", ""),
        )


class WorkflowState:
    """The workflow part of :class:`~taskplane.lifecycle.Lifecycle`."""

    _store: Store
    record_ttl: int
    result_ttl: int
    idempotency_ttl: int
    keep: int
    open_age: int

    def submit_workflow(self, draft: WorkflowDraft, *, cap: int = 0,
                        idempotency: tuple[str, str] | None = None) -> WorkflowSubmission:
        """Accept ``draft`` in one step (``scripts/workflow_submit.lua``): every member's
        record, the first stage's messages, the later stages held, the cap counted per
        member, the Idempotency-Key (``(key, body fingerprint)``) honoured."""
        now = time.time()
        tenant = draft.tenant
        groups: dict[tuple[str, str], int] = {}
        queues: dict[str, int] = {}
        index_keys: list[str] = []
        queue_keys: list[str] = []
        per_member: list[Any] = []
        for m in draft.members:
            r = m.record
            group = groups.get((r.task, r.queue))
            if group is None:
                group = groups[(r.task, r.queue)] = len(groups) + 1
                index_keys += listing_keys(tenant)
            queue_no, message = 0, ""
            if m.push is not None:
                queue_no = queues.get(m.push[0], 0)
                if not queue_no:
                    queue_no = queues[m.push[0]] = len(queues) + 1
                    queue_keys.append(m.push[0])
                message = m.push[1]
            fields = [*r.fields(), "workflow", draft.id, "wf_key", workflow_key(draft.id),
                      "stage", str(m.stage), "position", str(m.position)]
            per_member += [r.id, group, queue_no, message, json.dumps(fields)]
        stages = draft.stages()
        wf_fields: dict[str, str] = {
            "id": draft.id, "tenant": tenant, "kind": draft.kind, "on": draft.on, "state": RUNNING,
            "created_at": repr(now), "total": str(len(draft.members)),
            "stages": str(len(stages)), "stage": "0", "left": str(len(stages[0])),
            "members": json.dumps(stages), "callback": draft.callback,
            "k:open": open_key(tenant), "k:totals": workflow_totals_key(),
            "k:revoked": json.dumps(ended_index_keys(tenant, REVOKED)),
            "width": str(len(stages[0])), "ttl:record": str(self.record_ttl),
            "ttl:result": str(self.result_ttl), "keep": str(self.keep),
        }
        if draft.notify:
            wf_fields["notify"] = draft.notify
        for stage, held in draft.held.items():
            (member,) = stages[stage]
            wf_fields.update({f"msg:{stage}": held.template, f"queue:{stage}": held.queue_key,
                              f"rest:{stage}": held.body_rest, f"id:{stage}": member,
                              f"record:{stage}": record_key(member)})
        flat = [v for kv in wf_fields.items() for v in kv]
        fixed = [workflow_key(draft.id), open_key(tenant), *(workflows_index_key(t)
                                                          for t in (tenant, None)),
                 workflow_totals_key()]
        fp = ""
        if idempotency is not None:
            fixed.append(idempotency_key(tenant, f"workflow {idempotency[0]}"))
            fp = idempotency[1]
        tail = [*(record_key(m.record.id) for m in draft.members), *index_keys, *queue_keys]
        held_id = ""
        for _ in range(5):
            keys = [*fixed, workflow_key(held_id), *tail] if held_id else [*fixed, *tail]
            args = [draft.id, now, self.record_ttl, cap, fp, self.idempotency_ttl, held_id,
                    self.keep, len(draft.members), len(groups), len(queues), len(wf_fields),
                    self.open_age, *flat, *per_member]
            outcome, workflow_id = self._store.run("workflow_submit", keys, args)
            if outcome != b"stale":
                return WorkflowSubmission(outcome.decode(), workflow_id.decode())
            held_id = workflow_id.decode()
        raise RuntimeError("the Idempotency-Key kept changing under this request")

    def read_workflow(self, workflow_id: str) -> Workflow | None:
        raw = fields(self._store.redis.hgetall(workflow_key(workflow_id)))
        return Workflow.from_hash(workflow_id, raw) if raw else None

    def workflow_totals(self) -> dict[str, int]:
        """Workflows created, and ended by state, since Redis began keeping them."""
        return read_workflow_totals(self._store.redis)

    def member_states(self, task_ids: list[str]) -> dict[str, str]:
        """The state of each member whose record still exists: one round trip."""
        with self._store.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hget(record_key(task_id), "state")
            states = pipe.execute()
        return {i: s.decode() for i, s in zip(task_ids, states, strict=True) if s}

    def list_workflows(self, tenant: str | None, limit: int, before: float | None = None
                       ) -> tuple[list[Workflow], float | None]:
        """A page of workflows, newest first, created before ``before`` (the cursor the
        previous page returned); expired entries are pruned as met."""
        index = workflows_index_key(tenant)
        high = "+inf" if before is None else f"({before!r}"
        entries = scored(self._store.redis.zrevrangebyscore(index, high, "-inf", start=0,
                                                            num=limit, withscores=True))
        if not entries:
            return [], None
        with self._store.redis.pipeline(transaction=False) as pipe:
            for member, _ in entries:
                pipe.hgetall(workflow_key(member.decode()))
            raws = [fields(r) for r in pipe.execute()]
        found, gone = [], []
        for (member, _), raw in zip(entries, raws, strict=True):
            if raw:
                found.append(Workflow.from_hash(member.decode(), raw))
            else:
                gone.append(member)
        if gone:
            self._store.redis.zrem(index, *gone)
        last = entries[-1][1] if len(entries) == limit else None
        return found, last


def read_workflow_totals(client: redis.Redis) -> dict[str, int]:
    """:meth:`WorkflowState.workflow_totals` through any client (the exporter has no
    lifecycle, only a Redis client): one read, no state changed."""
    return {(k.decode() if isinstance(k, bytes) else str(k)): int(v)
            for k, v in client.hgetall(workflow_totals_key()).items()}
