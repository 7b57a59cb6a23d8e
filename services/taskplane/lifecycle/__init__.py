"""The task lifecycle: states, keys, and the Lua scripts that move a task, one per file.

A reader can walk it in this order:

* ``states``: the states and the state machine's picture; tenants.
* ``keys``: every Redis key, one function each, with the table of what each holds.
* ``scripts/*.lua``: one file per transition, each opening with its contract (KEYS and
  ARGV by name, precondition, writes, reply); ``scripts/lib.lua`` is shared by all.
* ``store``: loads the scripts (one function library on Redis 7+, else one script each)
  and runs every one of them through one function.
* ``transitions``: the Python face, one method per transition, with the guarantees table.
* ``listing``, ``ratelimit``, ``schedule_state``: reads, the request rate, the scheduler.
* ``reconcile``: accepted tasks whose message a failover lost, pushed back.
* ``run_leases``: behind Sentinel, a live worker's runs hold off a second start.
* ``workflow_state``: chains and groups, submitted in one step, advanced by endings.
* ``records``, ``errors``: what goes in and comes out.
* ``replies``: redis-py's replies narrowed to the bytes the lifecycle's client answers.
* ``facade``: :class:`Lifecycle`, all of the above under one name.

Everything other modules use is importable from ``taskplane.lifecycle``.
"""

from __future__ import annotations

from .errors import OutcomeUnknown, PoisonedTask, never_sent
from .facade import Lifecycle
from .keys import (
    ABOVE_MARKS,
    PREFIX,
    dead_index_key,
    dead_index_keys,
    dead_key,
    ended_index_key,
    ended_index_keys,
    idempotency_key,
    listing_keys,
    open_key,
    rate_key,
    record_key,
    schedule_state_key,
    scheduler_lease_key,
    schedules_key,
    tasks_index_key,
    workflow_key,
    workflows_index_key,
)
from .listing import Cursor, TaskQuery
from .records import (
    ResultWrite,
    RunStart,
    Submission,
    TaskRecord,
    Transition,
    dead_letter,
    fingerprint,
    visible_state,
)
from .run_leases import RunLeases
from .states import (
    FAILURE,
    FINAL_STATES,
    PENDING,
    PROGRESS,
    RETRY,
    REVOKED,
    RUNNING_STATES,
    STARTED,
    STATES,
    SUCCESS,
    SYSTEM_TENANT,
    TENANT_HEADER,
    result_state,
    tenant_hint,
)
from .store import Store
from .workflow_state import (
    WORKFLOW_STATES,
    HeldStage,
    Member,
    Workflow,
    WorkflowDraft,
    WorkflowSubmission,
)

__all__ = [
    "ABOVE_MARKS", "FAILURE", "FINAL_STATES", "PENDING", "PREFIX", "PROGRESS", "RETRY", "REVOKED",
    "RUNNING_STATES", "STARTED", "STATES", "SUCCESS", "SYSTEM_TENANT", "TENANT_HEADER",
    "WORKFLOW_STATES", "Cursor", "HeldStage", "Lifecycle", "Member", "OutcomeUnknown",
    "PoisonedTask", "ResultWrite", "RunLeases", "RunStart", "Store", "Submission", "TaskQuery",
    "TaskRecord", "Transition", "Workflow", "WorkflowDraft", "WorkflowSubmission",
    "dead_index_key", "dead_index_keys", "dead_key", "dead_letter",
    "ended_index_key", "ended_index_keys", "fingerprint", "idempotency_key", "listing_keys",
    "never_sent", "open_key", "rate_key", "record_key", "result_state", "schedule_state_key",
    "scheduler_lease_key", "schedules_key", "tasks_index_key", "tenant_hint", "visible_state",
    "workflow_key", "workflows_index_key",
]
