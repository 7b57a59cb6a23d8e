"""A client generated from /openapi.json by openapi-python-client submits a task.

The description is only as good as what the tools users point at it make of it. This
test generates a Python client from the running API's own document (into a temporary
directory: nothing generated is committed), imports it, submits built-in tasks through
it with typed arguments (each task type is its own body model, its arguments a model of
its own fields), and reads the task back through it until it has ended, against the real
gunicorn and worker of the session.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

from tests.support.services import TEST_TOKENS, VENV_BIN, Api

pytestmark = pytest.mark.integration

PACKAGE = "tp_generated_client"


@pytest.fixture(scope="module")
def generated(api: Api, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    where = tmp_path_factory.mktemp("generated")
    spec = where / "openapi.json"
    spec.write_bytes(requests.get(f"{api.base}/openapi.json", timeout=10).content)
    done = subprocess.run(
        [str(VENV_BIN / "openapi-python-client"), "generate", "--path", str(spec),
         "--meta", "none", "--output-path", str(where / PACKAGE)],
        capture_output=True, text=True, timeout=120, cwd=where)
    assert done.returncode == 0, done.stdout + done.stderr
    # no model, no operation lost (each is how the generator says it dropped one)
    for dropped in ("Unable to process schema", "WARNING parsing", "Failure to process schema",
                    "Could not find reference"):
        assert dropped not in done.stdout, done.stdout
    sys.path.insert(0, str(where))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(where))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def _module(package: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{package.__name__}.{name}")


def _until_ended(get_task: Any, client: Any, task_id: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        task = get_task.sync(task_id, client=client, wait=5)
        if task.state.value in ("SUCCESS", "FAILURE", "REVOKED") or time.monotonic() > deadline:
            return task


def test_a_generated_client_submits_typed_tasks_and_reads_them(generated: ModuleType,
                                                              api: Api) -> None:
    client = generated.AuthenticatedClient(base_url=api.base, token=TEST_TOKENS["acme"])
    models = _module(generated, "models")
    submit = _module(generated, "api.default.submit_task")
    get_task = _module(generated, "api.default.get_task")

    body = models.SubmitTaskReportsSummary(
        task="reports.summary",
        kwargs=models.SubmitTaskReportsSummaryKwargs(csv="city,temp\nOslo,3\nRome,17"),
        priority=7)
    response = submit.sync_detailed(client=client, body=body)
    assert response.status_code == 202, response.content
    task = response.parsed
    assert isinstance(task, models.Task) and task.task == "reports.summary"
    assert task.priority == 7
    done = _until_ended(get_task, client, task.id)
    assert done.state.value == "SUCCESS", done
    assert done.result["rows"] == 2 and done.result["columns"]["temp"]["max"] == 17

    # positional arguments, typed by the task's signature, and a queue from the enum
    slept = submit.sync(client=client, body=models.SubmitTaskLongRunningTask(
        task="long_running_task", args=["from a generated client", 0],
        queue=models.SubmitTaskLongRunningTaskQueue("default")))
    assert isinstance(slept, models.Task), slept
    assert _until_ended(get_task, client, slept.id).result.endswith("from a generated client")


def test_a_generated_client_creates_reads_and_deletes_a_schedule(generated: ModuleType,
                                                                 api: Api) -> None:
    client = generated.AuthenticatedClient(base_url=api.base, token=TEST_TOKENS["acme"])
    models = _module(generated, "models")
    create = _module(generated, "api.default.create_schedule")
    get = _module(generated, "api.default.get_schedule")
    delete = _module(generated, "api.default.delete_schedule")
    name = f"generated-{time.time_ns()}"
    created = create.sync(client=client, body=models.NewScheduleReportsSummary(
        task="reports.summary", name=name, cron="0 6 * * 1-5",
        timezone=models.TimeZone.EUROPE_BERLIN,
        kwargs=models.NewScheduleReportsSummaryKwargs(csv="a\n1", delimiter=";"),
        queue=models.NewScheduleReportsSummaryQueueType1("default"), enabled=False))
    assert isinstance(created, models.Schedule), created
    assert (created.name, created.timezone, created.enabled) == (name, "Europe/Berlin", False)
    read = get.sync(name, client=client)
    assert isinstance(read, models.Schedule) and read.cron == "0 6 * * 1-5"
    assert delete.sync_detailed(name, client=client).status_code == 204
    assert isinstance(get.sync(name, client=client), models.Error)


def test_a_refusal_parses_as_the_error_envelope(generated: ModuleType, api: Api) -> None:
    client = generated.AuthenticatedClient(base_url=api.base, token=TEST_TOKENS["acme"])
    models = _module(generated, "models")
    submit = _module(generated, "api.default.submit_task")
    # a body the client's types allow but the task's schema refuses (no data)
    refused = submit.sync(client=client, body=models.SubmitTaskLongRunningTask(
        task="long_running_task", kwargs=models.SubmitTaskLongRunningTaskKwargs(seconds=1)))
    assert isinstance(refused, models.Error), refused
    assert refused.error.code == "validation_failed"
    assert any(f["field"] == "data" for f in refused.error.details["fields"])


def test_the_generated_package_lives_outside_the_checkout(generated: ModuleType) -> None:
    root = Path(__file__).resolve().parents[2]
    assert root not in Path(generated.__file__).resolve().parents
