"""Schedules declared in code, as a team's task module would (loaded via ``TASK_MODULES``
by the schedulers of ``tests/schedules/test_scheduler_processes.py`` only)."""

from __future__ import annotations

from taskplane.schedules import periodic

#: Counts one run a second under ``test:count:declared-every-second``.
periodic("declared-every-second", task="test.count", every=1,
         kwargs={"key": "declared-every-second"})
