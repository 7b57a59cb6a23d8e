"""Run leases behind Sentinel: a live worker's runs hold off a failover's second delivery.

A failover can hand a task to a second worker while the first still runs it: the first
worker's ``BRPOP`` reached only the dead master, so the promoted replica still has the
message queued. ``start`` is acknowledged by a replica in HA mode, so the promoted
replica knows the run began; ``run_seen`` on the record says the run's worker is alive.
The worker's main process renews it for every task its pool runs (``renew_runs.lua``,
beside the broker's own leases), and ``start.lua`` refuses a second start while it is
fresh. Once the worker dies the lease lapses (``Settings.run_lease``: shorter than the
visibility timeout, so a dead worker's redelivered message is never held back) and the
task runs again, as it always did.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import redis

from .keys import record_key
from .store import Store


class RunLeases:
    """Renews the run leases of a worker's running tasks, on a client of its own (the
    worker's quick-failing lease client, not the patient one its tasks write with: a
    renewal runs on the consumer's event loop and must not wait out an outage)."""

    def __init__(self, client: redis.Redis) -> None:
        self._store = Store(client)

    def renew(self, task_ids: Iterable[str]) -> int:
        """Set ``run_seen`` to now on each task's record that a live run holds: how many."""
        keys = [record_key(task_id) for task_id in task_ids]
        if not keys:
            return 0
        return int(self._store.run("renew_runs", keys, [repr(time.time())]))
