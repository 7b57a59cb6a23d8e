"""State owned per app: each app has its own tasks, its own metric series, and building
one touches nothing process-wide (no root logger handler, no default metrics registry)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from taskplane.api import create_app
from taskplane.celery_app import create_celery
from taskplane.settings import Settings
from taskplane.tasks.registry import BUILTIN_MODULES, Registry

BUILTINS = {"long_running_task", "images.thumbnail", "reports.summary"}
TEST_TASKS = {"test.echo", "test.count"}
AUTH_OFF = {"AUTH_DISABLED": "true"}


def test_two_apps_with_different_task_modules_see_different_tasks() -> None:
    with_tests = create_celery(Settings.from_env({"TASK_MODULES": "tests.support.tasks"}))
    builtin_only = create_celery(Settings.from_env({}))
    tested = {spec.name for spec in with_tests.runtime.registry}
    plain = {spec.name for spec in builtin_only.runtime.registry}
    assert TEST_TASKS <= tested and BUILTINS <= tested
    assert plain == BUILTINS
    # Celery's own task tables follow the registries: nothing is shared between apps.
    assert TEST_TASKS <= set(with_tests.tasks)
    assert not TEST_TASKS & set(builtin_only.tasks)
    assert with_tests.tasks["test.echo"].app is with_tests


def test_builtin_tasks_false_after_an_app_that_loaded_them_sees_none() -> None:
    loaded = create_celery(Settings.from_env({}))
    assert BUILTINS <= {spec.name for spec in loaded.runtime.registry}
    bare = create_celery(Settings.from_env({"BUILTIN_TASKS": "false",
                                            "TASK_MODULES": "tests.support.tasks"}))
    names = {spec.name for spec in bare.runtime.registry}
    assert names and not names & BUILTINS, names
    assert not set(bare.tasks) & BUILTINS
    assert not BUILTINS & {spec.name for spec in Registry.from_modules([], builtin=False)}
    # The API answers from its own registry too: a built-in name is an unknown task.
    api = create_app(Settings.from_env({**AUTH_OFF, "BUILTIN_TASKS": "false",
                                        "TASK_MODULES": "tests.support.tasks"}))
    listed = api.test_client().get("/v1/task-types").get_json()
    assert not BUILTINS & {t["name"] for t in listed["items"]}, listed
    refused = api.test_client().post("/v1/tasks", json={"task": "reports.summary",
                                                        "kwargs": {"csv": "a\n1\n"}})
    assert refused.status_code == 404 and refused.get_json()["error"]["code"] == "unknown_task"


def test_a_module_loaded_twice_declares_its_tasks_once_for_every_app() -> None:
    first = Registry.from_modules(["tests.support.tasks"])
    second = Registry.from_modules(["tests.support.tasks"])
    assert [s.name for s in first] == [s.name for s in second]
    assert first.get("test.echo") is second.get("test.echo")  # the module's one declaration
    assert len(Registry.from_modules([])) == len(BUILTIN_MODULES)


def test_a_declared_task_is_still_its_function() -> None:
    from tests.support.tasks import echo

    assert echo(41) == 41  # a plain call runs the function: no app, no worker
    assert echo.spec.name == "test.echo" and echo.__doc__ == "Return the argument."


def test_create_app_leaves_the_root_logger_alone() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    create_app(Settings.from_env({**AUTH_OFF, "LOG_LEVEL": "DEBUG"}))
    create_celery(Settings.from_env({"LOG_LEVEL": "DEBUG"}))
    assert root.handlers == handlers
    assert root.level == level


def test_each_app_counts_on_its_own_registry() -> None:
    one = create_app(Settings.from_env(AUTH_OFF))
    two = create_app(Settings.from_env(AUTH_OFF))
    reg_one = one.extensions["taskplane"].runtime.metrics.registry
    reg_two = two.extensions["taskplane"].runtime.metrics.registry
    assert reg_one is not reg_two
    labels = {"route": "/healthz", "method": "GET", "status": "200"}
    for _ in range(3):
        assert one.test_client().get("/healthz").status_code == 200
    assert reg_one.get_sample_value("taskplane_http_requests_total", labels) == 3
    assert reg_two.get_sample_value("taskplane_http_requests_total", labels) is None
    # The app's /metrics serves its own registry (no multiprocess directory here).
    body = one.test_client().get("/metrics").get_data(as_text=True)
    assert 'taskplane_http_requests_total{method="GET",route="/healthz",status="200"} 3.0' in body


def test_a_refused_submission_counts_its_reason() -> None:
    app = create_app(Settings.from_env({**AUTH_OFF, "TASK_MODULES": "tests.support.tasks"}))
    registry = app.extensions["taskplane"].runtime.metrics.registry
    client = app.test_client()
    assert client.post("/v1/tasks", json={"task": "test.echo"}).status_code == 422
    assert client.post("/v1/tasks", json={"task": "test.nope"}).status_code == 404
    assert client.post("/v1/tasks", json={"task": "test.echo", "kwargs": {"nope": 1}}
                       ).status_code == 422
    rejected = "taskplane_api_tasks_rejected_total"
    assert registry.get_sample_value(rejected, {"reason": "validation_failed"}) == 2
    assert registry.get_sample_value(rejected, {"reason": "unknown_task"}) == 1
    assert registry.get_sample_value("taskplane_api_tasks_accepted_total",
                                     {"task": "test.echo"}) is None


def test_metrics_switched_off_record_nothing() -> None:
    app = create_app(Settings.from_env({**AUTH_OFF, "METRICS_ENABLED": "false"}))
    assert app.test_client().get("/healthz").status_code == 200
    registry = app.extensions["taskplane"].runtime.metrics.registry
    assert list(registry.collect()) == []


def test_schedules_declared_in_code_belong_to_the_apps_that_load_their_module() -> None:
    from taskplane import schedules

    with_them = Registry.from_modules(["tests.support.tasks", "tests.support.schedules"])
    without = Registry.from_modules(["tests.support.tasks"])
    assert [s.name for s in schedules.declared(with_them)] == ["declared-every-second"]
    assert schedules.declared(without) == []


def test_a_package_named_in_task_modules_loads_the_tasks_it_imports(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As importing did when tasks registered on import: a package whose ``__init__``
    imports its task module, or re-exports a task, loads those tasks."""
    root = tmp_path
    package = root / "teamtasks"
    package.mkdir()
    (package / "__init__.py").write_text("from . import billing\n")
    (package / "billing.py").write_text(
        "from taskplane.tasks import task\n\n"
        "@task('team.invoice', schema={'properties': {}})\n"
        "def invoice() -> None:\n    '''Bill.'''\n")
    (root / "reexport.py").write_text("from teamtasks.billing import invoice\n")
    monkeypatch.syspath_prepend(str(root))
    for name in ("teamtasks", "reexport"):
        registry = Registry.from_modules([name], builtin=False)
        assert [s.name for s in registry] == ["team.invoice"], name


def test_the_exporter_builds_no_celery_app(monkeypatch: pytest.MonkeyPatch) -> None:
    from taskplane import celery_app, exporter

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the exporter built a Celery app")

    monkeypatch.setattr(celery_app, "create_celery", refuse)
    monkeypatch.setattr(celery_app.TaskplaneCelery, "__init__", refuse)
    _, collector = exporter.create_registry(Settings.from_env({
        "TASK_MODULES": "tests.support.tasks", "QUEUES": "parked"}))
    assert {"default", "celery", "parked"} <= set(collector.queues)


def test_create_app_leaves_celerys_current_app_alone() -> None:
    from celery import current_app

    before = current_app._get_current_object()
    create_app(Settings.from_env(AUTH_OFF))
    assert current_app._get_current_object() is before


def test_the_api_shares_one_result_backend_across_threads_and_a_worker_does_not() -> None:
    """Celery keeps a non-thread-safe backend per thread, which gevent makes per greenlet:
    the API's would have been built again by every request (and held by each follower)."""
    import threading

    api = create_app(Settings.from_env(AUTH_OFF)).extensions["taskplane"].celery
    worker = create_celery(Settings.from_env({}), set_as_current=False)
    seen: dict[str, list[object]] = {"api": [], "worker": []}

    def look() -> None:
        seen["api"].append(api.backend)
        seen["worker"].append(worker.backend)

    threads = [threading.Thread(target=look) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    look()
    assert len({id(b) for b in seen["api"]}) == 1
    assert len({id(b) for b in seen["worker"]}) == 4  # Celery's default: one per thread
