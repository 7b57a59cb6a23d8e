"""A run's SUCCESS counts its end once, so the worker's postrun handler skips its round trip."""

from __future__ import annotations

from types import SimpleNamespace

from celery import states

from taskplane.results import RUN_ENDED, _ends_run


def test_the_runs_own_success_counts_its_end_once() -> None:
    request = SimpleNamespace(id="t1")
    assert _ends_run("t1", states.SUCCESS, request) is True
    assert getattr(request, RUN_ENDED) is True
    assert _ends_run("t1", states.SUCCESS, request) is False  # a second write counts nothing


def test_other_writes_leave_the_count_to_postrun() -> None:
    assert _ends_run("t1", states.REVOKED, SimpleNamespace(id="t1")) is False
    assert _ends_run("t1", states.SUCCESS, SimpleNamespace(id="t2")) is False  # another task's run
    assert _ends_run("t1", states.SUCCESS, None) is False
    assert _ends_run("t1", states.SUCCESS, object()) is False  # no request id
