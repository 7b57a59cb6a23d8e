"""The worker's answer to ``start``'s ``running`` verdict (``tasks/base.py``): the delivery
is sent again for when the live run's lease lapses, and skipped now; if it cannot be sent,
it is handed back to its queue, never failed (a failure would end the live run's task).
The lifecycle's side is tested against Redis (``tests/lifecycle/test_run_leases.py``), the
whole path with real workers behind Sentinel (``tests/ha/test_run_lease.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery.exceptions import Ignore, Reject

from taskplane.celery_app import create_celery
from taskplane.lifecycle import RunStart
from taskplane.runtime import TaskplaneCelery
from taskplane.settings import Settings


class Sent:
    """What ``signature_from_request`` gave back: records its options, or fails to send."""

    def __init__(self, options: dict[str, Any], error: Exception | None) -> None:
        self.options, self.error = options, error
        self.sent = False

    def apply_async(self) -> None:
        if self.error is not None:
            raise self.error
        self.sent = True


@pytest.fixture
def app() -> Iterator[TaskplaneCelery]:
    app = create_celery(Settings.from_env({
        "REDIS_URL": "redis://127.0.0.1:1/0",  # never reached: the lifecycle is stubbed
        "TASK_MODULES": "tests.support.tasks", "LEASE_INTERVAL": "2"}))
    yield app
    app.close()


def _deliver(app: TaskplaneCelery, monkeypatch: pytest.MonkeyPatch,
             error: Exception | None = None) -> tuple[Sent, Any]:
    """Run a delivery of test.echo whose start answers ``running`` (3 s left)."""
    task = app.tasks["test.echo"]
    monkeypatch.setattr(app.runtime.lifecycle, "start",
                        lambda *a, **k: RunStart("running", 0, 3.0))
    made: list[Sent] = []

    def signature_from_request(request: Any, **options: Any) -> Sent:
        made.append(Sent(options, error))
        return made[-1]

    monkeypatch.setattr(task, "signature_from_request", signature_from_request)
    task.push_request(id="t-1", retries=2, called_directly=False)
    request = task.request
    try:
        with pytest.raises((Ignore, Reject)) as raised:
            task(value=1)
    finally:
        task.pop_request()
    assert len(made) == 1
    return made[0], (raised.value, request)


def test_a_delivery_of_a_task_a_live_worker_runs_is_sent_again_for_later(
        app: TaskplaneCelery, monkeypatch: pytest.MonkeyPatch) -> None:
    sent, (raised, request) = _deliver(app, monkeypatch)
    assert isinstance(raised, Ignore)  # acked, not run, no state stored
    assert sent.sent and sent.options == {"countdown": 3.0 + 2, "retries": 2}
    assert request.taskplane_skipped and request.taskplane_postponed


def test_a_delivery_that_cannot_be_sent_again_is_handed_back_not_failed(
        app: TaskplaneCelery, monkeypatch: pytest.MonkeyPatch) -> None:
    sent, (raised, request) = _deliver(app, monkeypatch, ConnectionError("broker away"))
    assert isinstance(raised, Reject) and raised.requeue
    assert not sent.sent and request.taskplane_skipped
    assert not getattr(request, "taskplane_postponed", False)
