from __future__ import annotations

import pytest

from taskplane.tasks import load_task_modules
from taskplane.tasks.builtin.reports import summary

REGISTRY = load_task_modules([], builtin=True)


def spec(name: str):
    found = REGISTRY.get(name)
    assert found is not None
    return found


def test_builtins_are_registered_with_schemas() -> None:
    names = {s.name for s in REGISTRY}
    assert {"long_running_task", "images.thumbnail", "reports.summary"} <= names
    assert spec("long_running_task").schema["required"] == ["data"]


def test_positional_and_keyword_arguments_validate_alike() -> None:
    s = spec("long_running_task")
    assert s.argument_errors(["hello"], {}) == []
    assert s.argument_errors([], {"data": "hello", "seconds": 2}) == []
    assert [e["field"] for e in s.argument_errors([], {"seconds": -1})] == ["data", "seconds"]
    assert s.argument_errors(["a", 1, 2], {})[0]["field"] == "args"
    assert s.argument_errors([], {"data": "a", "nope": 1})[0]["field"] == "kwargs"


def test_registering_a_name_twice_is_refused() -> None:
    """Two modules an app loads may not declare one name: the registry refuses the second."""
    from taskplane.tasks import Registry, task

    @task("reports.summary", schema={"properties": {}})
    def other() -> None:
        """Clash."""

    registry = Registry(REGISTRY)
    with pytest.raises(ValueError, match="twice"):
        registry.add(other.spec)
    with pytest.raises(ValueError, match="twice"):  # and one module may not either

        @task("reports.summary", schema={"properties": {}})
        def another() -> None:
            """Clash again."""


def test_report_summary_describes_numeric_and_text_columns() -> None:
    out = summary("city,temp\nOslo,3\nRome,17\nOslo,\n")
    assert out["rows"] == 3
    assert out["columns"]["temp"] == {"type": "numeric", "count": 2, "missing": 1, "min": 3.0,
                                      "max": 17.0, "mean": 10.0, "median": 10.0,
                                      "stdev": pytest.approx(9.899, abs=1e-3)}
    assert out["columns"]["city"]["top"] == "Oslo"
    assert out["columns"]["city"]["distinct"] == 2
    assert summary("") == {"rows": 0, "columns": {}}
