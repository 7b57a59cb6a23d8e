"""monitoring/rules/taskplane.rules.yaml: valid, unit-tested, and built from exported metrics only.

promtool checks the syntax and runs the unit tests in monitoring/rules/tests/; the
other tests hold the rules to what the code exports (taskplane.metrics) and make sure
the unit tests cover every alert both firing and not firing, and every recording rule.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from .conftest import RULE_TESTS, RULES_FILE, run_promtool
from .promql import analyse, metric_names

#: Recording rules other parts of Taskplane rely on (the chart uses the first one).
REQUIRED_RECORDS = (
    "taskplane:queue_backlog:sum",
    "taskplane:queue_backlog_per_worker:ratio",
    "taskplane:task_queue_wait_seconds:p95",
    "taskplane:tasks:rate5m",
    "taskplane:task_failure_ratio:rate5m",
)
REQUIRED_ALERTS = (
    "TaskplaneBacklogGrowing",
    "TaskplaneOldestTaskTooOld",
    "TaskplaneHighFailureRatio",
    "TaskplaneNoWorkersConsuming",
    "TaskplaneExporterDown",
    "TaskplaneRedisDown",
)
SEVERITIES = {"critical", "warning", "info"}
#: Series Prometheus makes itself, allowed in rules (not on the dashboard).
PROMETHEUS_SERIES = {"up"}


def squash(text: str) -> str:
    return " ".join(text.split())


def test_promtool_check_rules(promtool: str) -> None:
    proc = run_promtool(promtool, "check", "rules", RULES_FILE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_pass(promtool: str) -> None:
    assert RULE_TESTS, "no unit tests in monitoring/rules/tests/"
    proc = run_promtool(promtool, "test", "rules", *RULE_TESTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unit_tests_load_the_rules_file(rule_tests: dict[str, dict[str, Any]]) -> None:
    """Each test file reads the real rules file, not a copy."""
    for name, spec in rule_tests.items():
        base = RULE_TESTS[0].parent
        loaded = {(base / f).resolve() for f in spec.get("rule_files", [])}
        assert loaded == {RULES_FILE.resolve()}, f"{name}: rule_files {spec.get('rule_files')}"


def test_required_rules_exist(recorded: dict[str, str], alerts: dict[str, Any]) -> None:
    assert set(REQUIRED_RECORDS) <= set(recorded), set(REQUIRED_RECORDS) - set(recorded)
    assert set(REQUIRED_ALERTS) <= set(alerts), set(REQUIRED_ALERTS) - set(alerts)


def test_backlog_rule_is_the_one_the_chart_documents(recorded: dict[str, str]) -> None:
    assert squash(recorded["taskplane:queue_backlog:sum"]) == (
        "sum by (queue) (taskplane_queue_waiting + taskplane_queue_reserved)"
    )


def test_rule_names_are_unique(all_rules: list[dict[str, Any]]) -> None:
    names = [r.get("record") or r.get("alert") for r in all_rules]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_every_series_a_rule_reads_is_exported_or_recorded(
    all_rules: list[dict[str, Any]], recorded: dict[str, str], catalogue: Any
) -> None:
    known = catalogue.exposed_names() | set(recorded) | PROMETHEUS_SERIES
    problems = []
    for rule in all_rules:
        for name in sorted(metric_names(rule["expr"]) - known):
            where = rule.get("record") or rule.get("alert")
            problems.append(f"{where}: {name} is neither exported nor recorded")
    assert not problems, "\n".join(problems)


def test_recording_rules_read_only_rules_recorded_before_them(rules: dict[str, Any]) -> None:
    """A recording rule that reads a later one would see the previous evaluation's value."""
    problems = []
    for group in rules["groups"]:
        seen: set[str] = set()
        for rule in group["rules"]:
            if "record" not in rule:
                continue
            later = {r["record"] for r in group["rules"] if "record" in r} - seen - {rule["record"]}
            for name in sorted(metric_names(rule["expr"]) & later):
                problems.append(f"{rule['record']} reads {name}, recorded after it")
            seen.add(rule["record"])
    assert not problems, "\n".join(problems)


def test_counters_are_rated_and_gauges_are_not(all_rules: list[dict[str, Any]], catalogue: Any) -> None:
    problems = [f"{r.get('record') or r.get('alert')}: {p}" for r in all_rules
                for p in misused_series(r["expr"], catalogue)]
    assert not problems, "\n".join(problems)


def misused_series(expr: str, catalogue: Any) -> list[str]:
    """Counter and histogram series read without rate()/increase(), and gauges read with them."""
    problems = []
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    for spec in catalogue.CATALOGUE_SPECS:
        if spec.type == "gauge":
            if re.search(rf"\b(?:rate|irate|increase)\(\s*{spec.name}(?![\w:])", stripped):
                problems.append(f"gauge {spec.name} inside rate()/increase()")
            continue
        series = [spec.name] if spec.type == "counter" else [
            f"{spec.name}_bucket", f"{spec.name}_count", f"{spec.name}_sum"]
        for name in series:
            uses = len(re.findall(rf"(?<![\w:]){name}(?![\w:])", stripped))
            rated = len(re.findall(rf"\b(?:rate|irate|increase)\(\s*{name}(?![\w:])", stripped))
            if uses != rated:
                problems.append(f"{spec.type} series {name} read without rate()/increase()")
    return problems


def test_alerts_are_documented(alerts: dict[str, dict[str, Any]]) -> None:
    problems = []
    for name, rule in alerts.items():
        if not name.startswith("Taskplane"):
            problems.append(f"{name}: alert names start with Taskplane")
        if rule.get("labels", {}).get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity label must be one of {sorted(SEVERITIES)}")
        if not re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))):
            problems.append(f"{name}: needs a `for:` duration, so one bad evaluation does not page")
        for key in ("summary", "description", "runbook"):
            if not str(rule.get("annotations", {}).get(key, "")).strip():
                problems.append(f"{name}: annotation {key} is missing")
    assert not problems, "\n".join(problems)


def alert_cases(rule_tests: dict[str, dict[str, Any]]) -> dict[str, dict[str, list[str]]]:
    """alertname → {"firing": [...], "quiet": [...]} places in the unit tests."""
    cases: dict[str, dict[str, list[str]]] = {}
    for file, spec in rule_tests.items():
        for group in spec.get("tests", []):
            for case in group.get("alert_rule_test", []) or []:
                kind = "firing" if case.get("exp_alerts") else "quiet"
                where = f"{file}: {group.get('name', '?')} at {case.get('eval_time')}"
                cases.setdefault(case["alertname"], {"firing": [], "quiet": []})[kind].append(where)
    return cases


def test_every_alert_is_tested_firing_and_not_firing(
    alerts: dict[str, dict[str, Any]], rule_tests: dict[str, dict[str, Any]]
) -> None:
    cases = alert_cases(rule_tests)
    problems = []
    for name in alerts:
        for kind in ("firing", "quiet"):
            if not cases.get(name, {}).get(kind):
                problems.append(f"{name}: no {'firing' if kind == 'firing' else 'non-firing'} test case")
    assert not problems, "\n".join(problems)


def test_unit_tests_name_only_real_alerts(
    alerts: dict[str, dict[str, Any]], rule_tests: dict[str, dict[str, Any]]
) -> None:
    """A misspelt alertname with exp_alerts: [] would pass without testing anything."""
    unknown = set(alert_cases(rule_tests)) - set(alerts)
    assert not unknown, f"unit tests name alerts that do not exist: {sorted(unknown)}"


def test_every_recording_rule_value_is_tested(
    recorded: dict[str, str], rule_tests: dict[str, dict[str, Any]]
) -> None:
    tested: set[str] = set()
    for spec in rule_tests.values():
        for group in spec.get("tests", []):
            for case in group.get("promql_expr_test", []) or []:
                if case.get("exp_samples"):
                    tested |= metric_names(case["expr"])
    untested = set(recorded) - tested
    assert not untested, f"recording rules without a promql_expr_test of their value: {sorted(untested)}"


def test_alert_thresholds_are_stated_in_comments() -> None:
    """Each alert's block in the rules file carries a comment explaining it."""
    text = RULES_FILE.read_text()
    for match in re.finditer(r"^(\s*)- alert: (\w+)$", text, flags=re.M):
        before = text[: match.start()].rstrip("\n").splitlines()
        assert before and before[-1].strip().startswith("#"), f"{match.group(2)} has no comment above it"


@pytest.mark.parametrize(
    ("expr", "names", "groupings"),
    [
        ('sum by (queue) (rate(x_total{queue=~"$queue"}[$__rate_interval]))', {"x_total"}, [("queue",)]),
        ('a / on () group_left () clamp_min(b, 1) or vector(0)', {"a", "b"}, [(), ()]),
        ('max(c{l="}"}) by (l) > bool 1e3 unless {__name__="d"} offset 5m', {"c", "d"}, [("l",)]),
        ("histogram_quantile(0.95, sum without (pod) (rate(h_bucket[5m])))", {"h_bucket"}, [("pod",)]),
        ("ns:a:sum # a comment with words\n and Inf < ns:b:ratio", {"ns:a:sum", "ns:b:ratio"}, []),
    ],
)
def test_promql_name_finder(expr: str, names: set[str], groupings: list[tuple[str, ...]]) -> None:
    assert metric_names(expr) == names
    assert analyse(expr)[1] == groupings

