"""Every Redis key the lifecycle owns: one function per key, and what each holds.

The scripts receive all of them in ``KEYS`` (never build a name in Lua), so this table
is the one place a key's name is decided. ``{tenant}`` is immutable per task. One
exception, by necessity: a workflow's later stages are started by whichever script ends
their predecessor, whose caller cannot know them; so the workflow hash (and a member's
record, ``wf_key``) stores the key names this module built for them at submission.

============================================  ======  ==============================================
key                                           type    holds
============================================  ======  ==============================================
``taskplane:task:{id}``                       hash    the record: tenant, task, queue, priority,
                                                      state, submitted_at, eta, started_at,
                                                      finished_at, retries, runs_started,
                                                      runs_ended; notify (its webhook and the
                                                      delivery message its ending pushes, JSON);
                                                      a workflow member's also
                                                      workflow (its id), wf_key (its key),
                                                      stage, position. Until it starts, a
                                                      submitted task's also keeps message and
                                                      list (what submit pushed, where), and
                                                      lost_seen (``reconcile.lua``). Behind
                                                      Sentinel, a running task's also
                                                      run_seen (its run lease, renewed by
                                                      its worker: ``renew_runs.lua``) and
                                                      run_by (the start that took it). Its
                                                      existence makes an id
                                                      "submitted" (else 404). TTL
                                                      ``TASK_RECORD_TTL`` (plus any countdown),
                                                      then ``RESULT_EXPIRES`` once final.
``taskplane:idem:{tenant}:{sha256(key)}``     hash    ``fp`` (body hash) and ``id`` of the task an
                                                      Idempotency-Key created; TTL
                                                      ``IDEMPOTENCY_TTL``.
``taskplane:open:{tenant}``                   zset    the tenant's unfinished task ids by
                                                      submission time (the per-tenant cap).
                                                      This set and the two kinds of index
                                                      below also hold TTL marks, scored -inf
                                                      (``ABOVE_MARKS``): not tasks.
``taskplane:bucket:{tenant}``                 string  the tenant's request-rate token bucket, as
                                                      GCRA keeps one: the epoch time at which it
                                                      is full again; lives until then (missing:
                                                      full). Replaced ``taskplane:rate:{tenant}``
                                                      (a hash, one command more per request,
                                                      issue 29): during a rollout from that
                                                      version both buckets limit a tenant, one
                                                      per version's pods, for a few seconds.
``taskplane:tasks:{tenant}``                  zset    the tenant's task ids by submission time
                                                      (``GET /v1/tasks``; filters by task type
                                                      or queue read the records).
``taskplane:tasks-indexes``                   set     the names of the tenants' tasks indexes,
                                                      added when an index's TTL is set (once a
                                                      period): an operator's listing merges
                                                      them. ``taskplane:tasks`` (every tenant's
                                                      tasks) is no longer written (issue 29) and
                                                      is merged too while it lives.
``taskplane:ended:{tenant}:{state}``          zset    ids of the tenant's tasks that ended in
                                                      ``state`` (SUCCESS, FAILURE, REVOKED) by
                                                      submission time (every tenant's: the
                                                      tasks index, records checked). Entries
                                                      of expired records are pruned when read
                                                      and by age.
``taskplane:dead:{id}``                       string  JSON dead letter (arguments, error, reason);
                                                      TTL ``DEAD_LETTER_TTL``.
``taskplane:dead-letters:{tenant}``           zset    dead-letter ids by time of death.
``taskplane:dead-letters``                    zset    every tenant's dead-letter ids (operators).
``celery-task-meta-{id}``                     string  Celery's result, written by the same script
                                                      as the record (named by the result backend:
                                                      ``Lifecycle.result_key``).
queue list (``broker.py``)                    list    the task message, pushed by ``submit`` and
                                                      ``retry_dead``.
``taskplane:workflow:{id}``                   hash    a workflow (``workflow_state.py``): id, tenant,
                                                      kind (chain, group), on (success,
                                                      complete), state, created_at,
                                                      finished_at, total, stages, stage (the
                                                      one running), ``left`` (its members not
                                                      ended), ``n:{STATE}`` counts, members
                                                      (JSON ids per stage), callback, the held
                                                      messages of later stages (``msg:{s}``,
                                                      ``queue:{s}``, ``record:{s}``) and the
                                                      outcomes a next stage takes
                                                      (``out:{pos}``). Lives as long as its
                                                      members' records.
``taskplane:workflows:{tenant}``              zset    the tenant's workflow ids by creation time
                                                      (``GET /v1/workflows``);
                                                      ``taskplane:workflows`` every tenant's.
``taskplane:workflow-totals``                 hash    workflows ``created`` and ended by state
                                                      (SUCCESS, FAILURE, REVOKED; a workflow
                                                      reopened by a dead-letter retry counts each
                                                      ending), for the exporter.
``taskplane:webhook-endpoints``               hash    tenant -> JSON ``{"url", "secret"}``: the
                                                      webhook an operator registered for the
                                                      tenant's tasks that carry no ``notify``.
``taskplane:deliveries:{kind}:{id}``         list    a task's or workflow's webhook delivery
                                                      attempts (JSON: at, status, latency_ms,
                                                      error), newest last, at most 50; TTL
                                                      ``RESULT_EXPIRES``.
``taskplane:dead-deliveries:{tenant}``        zset    ``{kind}:{id}:{state}`` of deliveries that
                                                      failed for ``WEBHOOK_RETRY_PERIOD``, by
                                                      time of death; ``taskplane:dead-deliveries``
                                                      every tenant's.
``taskplane:schedules``                       hash    periodic schedules stored over the API:
                                                      ``tenant/name`` -> JSON (``schedules.py``).
``taskplane:schedule-state:{tenant}/{name}``  hash    a schedule's fire state: ``last_tick`` (the
                                                      newest tick handled), ``last_fired_at``,
                                                      ``last_task_id``, ``fires``, ``skipped``,
                                                      ``missed``; moved only by
                                                      ``schedule_advance``, removed with the
                                                      schedule by ``schedule_delete``.
``taskplane:scheduler-lease``                 string  the scheduler replica that scans (saves work
                                                      only: a fire's exactly-once rests on its
                                                      Idempotency-Key ``schedule {name} {tick}``).
============================================  ======  ==============================================
"""

from __future__ import annotations

import hashlib

PREFIX = "taskplane:"
#: The low end of a score range over the open set, a listing index or an ended index that
#: leaves out their TTL marks: members scored -inf that ``lib.lua``'s ``enter`` adds so a
#: set's TTL is set once a period, not at every write (issue 29). Their names start with
#: ``taskplane:mark:``; nothing else in these sets is scored -inf.
ABOVE_MARKS = "(-inf"


def record_key(task_id: str) -> str:
    return f"{PREFIX}task:{task_id}"


def idempotency_key(tenant: str, key: str) -> str:
    return f"{PREFIX}idem:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"


def open_key(tenant: str) -> str:
    return f"{PREFIX}open:{tenant}"


def rate_key(tenant: str) -> str:
    return f"{PREFIX}bucket:{tenant}"


def dead_key(task_id: str) -> str:
    return f"{PREFIX}dead:{task_id}"


def dead_index_key(tenant: str | None) -> str:
    """A tenant's dead-letter index, or (``None``) the index of every tenant's."""
    return f"{PREFIX}dead-letters:{tenant}" if tenant is not None else f"{PREFIX}dead-letters"


def dead_index_keys(tenant: str) -> list[str]:
    """The tenant's dead-letter index and every tenant's, in that order."""
    return [dead_index_key(tenant), dead_index_key(None)]


def tasks_index_key(tenant: str | None) -> str:
    """The tasks of a tenant by submission time (``None``: the index of every tenant's
    tasks that versions before issue 29's third round wrote; read while it lives)."""
    return f"{PREFIX}tasks:{tenant}" if tenant is not None else f"{PREFIX}tasks"


def tasks_indexes_key() -> str:
    """The registry of the tenants' tasks indexes (a set of their key names)."""
    return f"{PREFIX}tasks-indexes"


def listing_keys(tenant: str) -> list[str]:
    """What a script that lists a task when submitted (or adopted) takes for it (as many as
    ``lib.lua``'s ``LISTED``): its tenant's index and the registry of those indexes. There
    is no index per task type or queue, nor of every tenant's tasks: each cost every
    submission a ZADD (and an EXPIRE) in Redis (issue 29). A listing filtered by task type
    or queue walks the tenant's index and reads the records; an operator's listing of every
    tenant merges the registered indexes (``listing.py``)."""
    return [tasks_index_key(tenant), tasks_indexes_key()]


def ended_index_key(tenant: str | None, state: str) -> str:
    """The tasks of a tenant (``None``: of every tenant) that ended in ``state``, by
    submission time."""
    return (f"{PREFIX}ended:{tenant}:{state}" if tenant is not None
            else f"{PREFIX}ended:{state}")


def ended_index_keys(tenant: str, state: str) -> list[str]:
    """The indexes a task that ended in ``state`` is entered in (as many as ``lib.lua``'s
    ``ENDED``): its tenant's only. Every tenant's (``ended_index_key(None, state)``, no
    longer written: a ZADD and an EXPIRE per task, issue 29) is read off the index of
    every tenant's tasks, checking the records' states (``listing.py``)."""
    return [ended_index_key(tenant, state)]


def schedules_key() -> str:
    return f"{PREFIX}schedules"


def schedule_state_key(ident: str) -> str:
    """The fire state of the schedule ``tenant/name``."""
    return f"{PREFIX}schedule-state:{ident}"


def scheduler_lease_key() -> str:
    return f"{PREFIX}scheduler-lease"


def workflow_key(workflow_id: str) -> str:
    return f"{PREFIX}workflow:{workflow_id}"


def workflows_index_key(tenant: str | None) -> str:
    """A tenant's workflows (``None``: every tenant's) by creation time."""
    return f"{PREFIX}workflows:{tenant}" if tenant is not None else f"{PREFIX}workflows"


def deliveries_key(kind: str, subject: str) -> str:
    """The webhook delivery attempts of a task (``kind`` "task") or a workflow."""
    return f"{PREFIX}deliveries:{kind}:{subject}"


def dead_deliveries_key(tenant: str | None) -> str:
    """A tenant's dead webhook deliveries (``None``: every tenant's)."""
    return (f"{PREFIX}dead-deliveries:{tenant}" if tenant is not None
            else f"{PREFIX}dead-deliveries")


def workflow_totals_key() -> str:
    return f"{PREFIX}workflow-totals"


def webhook_endpoints_key() -> str:
    return f"{PREFIX}webhook-endpoints"
