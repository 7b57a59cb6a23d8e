"""Loaded into a test worker with ``TASK_MODULES``: puts kombu's own Redis transport back.

``test_ride_through`` runs one worker this way to show the upstream crash the workaround
in ``taskplane.broker`` exists for is still there, and that the worker then exits non-zero.
"""

from __future__ import annotations

from typing import Any

from celery import signals


@signals.worker_init.connect(weak=False)
def _use_kombus_own_transport(sender: Any = None, **_: Any) -> None:
    sender.app.conf.broker_transport = None  # the URL scheme decides: kombu.transport.redis
