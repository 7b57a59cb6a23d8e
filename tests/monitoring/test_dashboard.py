"""monitoring/dashboards/taskplane.json: Grafana's shape, template variables, and queries that
read only exported metrics or recording rules, filtered by the queue and task variables."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from .conftest import run_promtool
from .promql import analyse, metric_names
from .test_rules import misused_series

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: Label → the template variable every selector of a series with that label must use.
FILTERS = {"queue": "$queue", "task": "$task"}
GRID_WIDTH = 24


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' children included, rows themselves excluded."""
    out = []
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p['title']} [{t.get('refId')}]", t) for p in panels(dashboard) for t in p.get("targets", [])]


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def variable_query(var: dict[str, Any]) -> str:
    query = var.get("query")
    return query.get("query", "") if isinstance(query, dict) else str(query or "")


def series_labels(name: str, catalogue: Any, recorded: dict[str, str]) -> set[str]:
    """Labels (of those in FILTERS) a series carries: from the catalogue, or for a recording
    rule from its by (...) clauses, else from the series it reads."""
    specs = {s.name: s for s in catalogue.CATALOGUE_SPECS}
    for suffix in ("", "_bucket", "_count", "_sum"):
        base = name.removesuffix(suffix) if suffix else name
        if base in specs:
            return set(specs[base].labels) & set(FILTERS)
    if name in recorded:
        selectors, groupings = analyse(recorded[name])
        by = [g for g in groupings if g]
        if by:
            return set().union(*map(set, by)) & set(FILTERS)
        return set().union(*(series_labels(s.name, catalogue, recorded) for s in selectors if s.name))
    return set()


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "taskplane"
    assert dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard.get("id") is None, "exported dashboards carry no database id"
    assert "__inputs" not in dashboard, "the datasource is a template variable, not an import input"


def test_datasource_variable(dashboard: dict[str, Any]) -> None:
    var = variables(dashboard).get("datasource")
    assert var is not None, "no `datasource` template variable"
    assert var["type"] == "datasource"
    assert var["query"] == "prometheus"


@pytest.mark.parametrize("name", ["queue", "task"])
def test_queue_and_task_variables(
    name: str, dashboard: dict[str, Any], catalogue: Any, recorded: dict[str, str]
) -> None:
    var = variables(dashboard).get(name)
    assert var is not None, f"no `{name}` template variable"
    assert var["type"] == "query"
    assert var["datasource"] == DATASOURCE
    assert var.get("multi") is True and var.get("includeAll") is True
    assert var.get("allValue") == ".*", "All must match series that appear after the page loaded"
    query = variable_query(var)
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
    assert match and match.group(2) == name, query
    assert metric_names(match.group(1)) <= catalogue.exposed_names(), query
    assert var.get("definition", query) == query


def test_every_panel_and_target_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    problems = []
    for panel in panels(dashboard):
        if panel.get("datasource") != DATASOURCE:
            problems.append(f"panel {panel['title']}: datasource {panel.get('datasource')}")
        if not panel.get("targets"):
            problems.append(f"panel {panel['title']}: no targets")
    for where, target in targets(dashboard):
        if target.get("datasource") != DATASOURCE:
            problems.append(f"{where}: datasource {target.get('datasource')}")
        if not target.get("expr", "").strip():
            problems.append(f"{where}: no expr")
    assert not problems, "\n".join(problems)


def test_every_series_on_the_dashboard_is_exported_or_recorded(
    dashboard: dict[str, Any], catalogue: Any, recorded: dict[str, str]
) -> None:
    known = catalogue.exposed_names() | set(recorded)
    problems = [
        f"{where}: {name} is neither exported by the code nor recorded"
        for where, target in targets(dashboard)
        for name in sorted(metric_names(target["expr"]) - known)
    ]
    assert not problems, "\n".join(problems)


def test_queries_filter_by_queue_and_task(
    dashboard: dict[str, Any], catalogue: Any, recorded: dict[str, str]
) -> None:
    """Every selector of a series with a queue or task label applies the variable."""
    problems = []
    for where, target in targets(dashboard):
        for sel in analyse(target["expr"])[0]:
            for label in sorted(series_labels(sel.name or "", catalogue, recorded)):
                m = sel.matcher(label)
                if m is None or m.op != "=~" or m.value != FILTERS[label]:
                    problems.append(f'{where}: {sel.name} lacks {label}=~"{FILTERS[label]}"')
    assert not problems, "\n".join(problems)


def test_every_exported_metric_is_on_the_dashboard(dashboard: dict[str, Any], catalogue: Any) -> None:
    used = set().union(*(metric_names(t["expr"]) for _, t in targets(dashboard)))
    missing = []
    for spec in catalogue.CATALOGUE_SPECS:
        names = {spec.name} if spec.type != "histogram" else {f"{spec.name}_bucket"}
        if not names & used:
            missing.append(spec.name)
    assert not missing, f"metrics with no panel (add one to monitoring/dashboards/taskplane.json): {missing}"


def test_latency_panels_show_p50_p95_p99(dashboard: dict[str, Any], catalogue: Any) -> None:
    exprs = [" ".join(t["expr"].split()) for _, t in targets(dashboard)]
    problems = []
    for spec in catalogue.CATALOGUE_SPECS:
        if spec.type != "histogram":
            continue
        for q in ("0.5", "0.95", "0.99"):
            pattern = rf"histogram_quantile\({re.escape(q)},.*\b{spec.name}_bucket\b"
            if not any(re.search(pattern, e) for e in exprs):
                problems.append(f"{spec.name}: no p{q[2:].ljust(2, '0')} panel query")
    assert not problems, "\n".join(problems)


def test_api_error_ratios(dashboard: dict[str, Any]) -> None:
    exprs = [t["expr"] for _, t in targets(dashboard) if "taskplane_http_requests_total" in t["expr"]]
    for klass in ("5", "4"):
        assert any(f'status=~"{klass}.."' in e and "/" in e for e in exprs), f"no {klass}xx ratio"


def test_counters_are_rated_and_gauges_are_not(dashboard: dict[str, Any], catalogue: Any) -> None:
    problems = [
        f"{where}: {p}" for where, t in targets(dashboard) for p in misused_series(t["expr"], catalogue)
    ]
    assert not problems, "\n".join(problems)


def test_layout(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    ids += [c["id"] for p in dashboard["panels"] for c in p.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= GRID_WIDTH, f"{panel['title']} overflows the grid"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
    for panel in panels(dashboard):
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{panel['title']}: refIds repeat"


def grafana_to_promql(expr: str) -> str:
    """What Grafana sends for All selected: intervals become durations, variables match all."""
    expr = re.sub(r"\$__(?:rate_interval|interval|range)\b", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def test_every_query_parses(
    promtool: str, tmp_path: Path, dashboard: dict[str, Any], yaml_module: Any
) -> None:
    """promtool parses each panel query and variable query (as a recording rule's expression)."""
    rules = [
        {"record": f"dashboard:query_{i}:check", "expr": grafana_to_promql(t["expr"])}
        for i, (_, t) in enumerate(targets(dashboard))
    ]
    for name, var in variables(dashboard).items():
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable_query(var))
        if match:
            expr = grafana_to_promql(match.group(1))
            rules.append({"record": f"dashboard:variable_{name}:check", "expr": expr})
    path = tmp_path / "dashboard-queries.rules.yaml"
    path.write_text(yaml_module.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run_promtool(promtool, "check", "rules", path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
