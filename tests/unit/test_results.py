"""A run's SUCCESS counts its end once, so the worker's postrun handler skips its round trip."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

from celery import Celery, states

from taskplane.results import RUN_ENDED, ResultBackend, _celery, _CeleryParts, _ends_run


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


def test_the_celery_parts_read_past_the_stubs_exist() -> None:
    """``results._CeleryParts`` declares what celery-types lacks; mypy trusts it, so a
    Celery upgrade that renames one of them fails here instead of in a worker."""
    app = Celery(set_as_current=False)
    app.conf.result_expires = 60
    app.conf.result_failure_expires = 600
    backend = ResultBackend(app=app, url="redis://127.0.0.1:1/0")  # connects on first use only
    parts = _celery(backend)
    members = [*_CeleryParts.__annotations__,
               *(m for m, v in vars(_CeleryParts).items() if inspect.isfunction(v))]
    assert {"app", "expires", "failure_expires", "_MAX_STR_VALUE_SIZE",
            "_get_result_meta"} <= set(members)
    for name in members:
        assert hasattr(backend, name), name
    assert parts.app is app
    assert (parts.expires, parts.failure_expires) == (60, 600)
    assert parts._MAX_STR_VALUE_SIZE > 0
    meta = parts._get_result_meta(result=1, state=states.SUCCESS, traceback=None, request=None)
    assert meta["status"] == states.SUCCESS and meta["result"] == 1
