"""The states a task moves through, the tenants it belongs to, and the state a client sees.

::

    submit ──> PENDING ──start──> STARTED ──finish──> SUCCESS
                 │  ▲               │ │ └──progress (stays STARTED; result shows PROGRESS)
                 │  │               │ ├──retry────> RETRY ──start──> STARTED
                 │  │               │ └──fail─────> FAILURE (a dead letter)
                 │  └──retry_dead_letter───────────── FAILURE
                 └──revoke──> REVOKED <──revoke(terminate)── STARTED / RETRY
"""

from __future__ import annotations

from typing import Any

#: The tenant of tasks sent around the API (a stock Celery client, ``celery call``), whose
#: records the worker creates when they start; only operators see them.
SYSTEM_TENANT = "system"
#: Message header naming the task's tenant: the worker finds the tenant's keys (open set,
#: dead letters) without reading the record first. Retries carry it along.
TENANT_HEADER = "taskplane_tenant"

PENDING, STARTED, PROGRESS, RETRY = "PENDING", "STARTED", "PROGRESS", "RETRY"
SUCCESS, FAILURE, REVOKED = "SUCCESS", "FAILURE", "REVOKED"
#: States a task never leaves (but for ``retry_dead``, which starts a FAILURE afresh).
FINAL_STATES = (SUCCESS, FAILURE, REVOKED)
#: Every state a client can see, in lifecycle order.
STATES = (PENDING, STARTED, PROGRESS, RETRY, *FINAL_STATES)
RUNNING_STATES = (STARTED, PROGRESS)


def tenant_hint(request: Any) -> str:
    """The tenant a Celery request's message names (:data:`SYSTEM_TENANT` if none: a task
    sent around the API, whose record the worker created under that tenant)."""
    value = getattr(request, TENANT_HEADER, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(TENANT_HEADER)
    return str(value or SYSTEM_TENANT)


def result_state(meta: dict[str, Any] | None) -> str | None:
    """The state a Celery result holds, if any."""
    return str(meta["status"]) if meta and meta.get("status") else None
