"""Every metric the chart scales or alerts on exists in the code; every name comes from one place.

charts/taskplane/files/contract.yaml lists the metrics (and broker layout) the chart
depends on. Here it is compared with the code (taskplane.metrics.CATALOGUE,
taskplane.broker), and every metric named in a rendered HPA, adapter rule, KEDA query,
PrometheusRule or the dashboard is traced back to it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from .conftest import CASES, CHART, Render

#: PromQL words that look like metric names but are not.
PROMQL_WORDS = {
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "by",
    "without",
    "rate",
    "irate",
    "increase",
    "histogram_quantile",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "topk",
    "bottomk",
    "clamp_min",
    "clamp_max",
    "abs",
    "time",
    "vector",
    "scalar",
    "label_replace",
    "absent",
    "delta",
    "deriv",
    "avg_over_time",
    "max_over_time",
    "min_over_time",
    "sum_over_time",
    "count_over_time",
    "le",
    "inf",
    "nan",
    "quantile",
    "stddev",
    "stdvar",
    "timestamp",
    "changes",
    "resets",
    "predict_linear",
    "ceil",
    "floor",
    "round",
    "sort",
    "sort_desc",
    "absent_over_time",
    "last_over_time",
    "present_over_time",
    "count_values",
    "group",
}
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


@pytest.fixture(scope="module")
def contract(yaml_module: Any) -> dict[str, Any]:
    return yaml_module.safe_load((CHART / "files" / "contract.yaml").read_text())


@pytest.fixture(scope="module")
def catalogue() -> dict[str, Any]:
    try:
        from taskplane.metrics import CATALOGUE
    except Exception as exc:  # not written yet, or the code is broken: only this check waits
        pytest.skip(
            f"taskplane.metrics.CATALOGUE is not importable, metric names unchecked against the code: {exc!r}"
        )
    return dict(CATALOGUE)


def base_name(name: str, known: set[str]) -> str | None:
    """The catalogue entry a sample name belongs to (histogram and counter suffixes allowed)."""
    if name in known:
        return name
    for suffix in SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in known:
            return name.removesuffix(suffix)
    if name + "_total" in known:
        return name + "_total"
    return None


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (identifiers and __name__ matchers)."""
    names = set()
    for match in re.finditer(r'__name__\s*=~?\s*"([^"]+)"', expr):
        names.update(match.group(1).split("|"))
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # drop string literals
    stripped = re.sub(r"\{[^}]*\}", "", stripped)  # drop label matchers
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)  # drop ranges
    for token in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", stripped):
        if token not in PROMQL_WORDS and not token.startswith("__"):
            names.add(token)
    return names


def catalogue_type(value: Any) -> str | None:
    if isinstance(value, str):
        return value.lower()
    for attr in ("type", "kind", "_type"):
        found = value.get(attr) if isinstance(value, dict) else getattr(value, attr, None)
        if isinstance(found, str):
            return found.lower()
    return None


def test_contract_metrics_exist_in_the_code(contract: dict[str, Any], catalogue: dict[str, Any]) -> None:
    problems = []
    for key, metric in contract["metrics"].items():
        if metric["name"] not in catalogue:
            problems.append(f"{key}: {metric['name']} is not in taskplane.metrics.CATALOGUE")
            continue
        kind = catalogue_type(catalogue[metric["name"]])
        if kind is not None and kind != metric["type"]:
            problems.append(
                f"{key}: {metric['name']} is a {kind} in the code, {metric['type']} in contract.yaml"
            )
    assert not problems, "\n".join(problems)


def test_every_promql_name_is_known(
    renders: dict[str, Render], contract: dict[str, Any], catalogue: dict[str, Any], yaml_module: Any
) -> None:
    """KEDA queries, PrometheusRule expressions and dashboard panels name only exported metrics
    or recording rules defined next to them."""
    known = set(catalogue)
    rules = yaml_module.safe_load((CHART / "files" / "taskplane.rules.yaml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    exprs: list[tuple[str, str]] = []
    for g in rules["groups"]:
        for r in g["rules"]:
            exprs.append((f"rule {r.get('record') or r.get('alert')}", r["expr"]))
    dashboard = json.loads((CHART / "files" / "taskplane.json").read_text())

    def targets(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append((f"dashboard panel {node.get('refId', '?')}", node["expr"]))
            for value in node.values():
                targets(value)
        elif isinstance(node, list):
            for value in node:
                targets(value)

    targets(dashboard.get("panels", []))
    for case in CASES:
        for so in renders[case].of_kind("ScaledObject"):
            for trigger in so["spec"]["triggers"]:
                if trigger["type"] == "prometheus":
                    exprs.append(
                        (f"[{case}] ScaledObject trigger {trigger['name']}", trigger["metadata"]["query"])
                    )
    problems = []
    for where, expr in exprs:
        for name in metric_names(expr):
            if name in PROMETHEUS_OWN:
                continue
            if name not in recorded and base_name(name, known) is None:
                problems.append(f"{where}: {name} is neither exported by the code nor recorded")
    assert exprs and not problems, "\n".join(problems)


#: Series Prometheus itself writes for every target.
PROMETHEUS_OWN = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})


def adapter_rules(render: Render, yaml_module: Any) -> list[dict[str, Any]]:
    configmaps = [
        cm for cm in render.of_kind("ConfigMap") if cm["metadata"]["name"].endswith("-adapter-rules")
    ]
    assert len(configmaps) == 1
    return yaml_module.safe_load(configmaps[0]["data"]["config.yaml"])["externalRules"]


def test_hpa_metrics_are_served_by_the_adapter_rules(
    renders: dict[str, Render], contract: dict[str, Any], yaml_module: Any
) -> None:
    served_names = {m["name"]: m for m in contract["externalMetrics"].values()}
    contract_names = {m["name"] for m in contract["metrics"].values()}
    for case in CASES:
        render = renders[case]
        hpas = [
            h
            for h in render.of_kind("HorizontalPodAutoscaler")
            if any(m["type"] == "External" for m in h["spec"]["metrics"])
        ]
        if not hpas or not any(
            cm["metadata"]["name"].endswith("-adapter-rules") for cm in render.of_kind("ConfigMap")
        ):
            continue
        rules = {r["name"]["as"]: r for r in adapter_rules(render, yaml_module)}
        assert set(rules) == set(served_names), f"[{case}] adapter rules serve {sorted(rules)}"
        for name, rule in rules.items():
            used = metric_names(rule["metricsQuery"].replace("<<.Series>>", rule["seriesQuery"]))
            used |= metric_names(rule["seriesQuery"])
            assert used <= contract_names, f"[{case}] adapter rule {name} uses {used - contract_names}"
            assert used == set(served_names[name]["from"]), f"[{case}] adapter rule {name} reads {used}"
        for hpa in hpas:
            for metric in hpa["spec"]["metrics"]:
                if metric["type"] == "External":
                    name = metric["external"]["metric"]["name"]
                    assert name in rules, (
                        f"[{case}] {hpa['metadata']['name']} asks for {name}, which no rule serves"
                    )


def test_external_metric_sources_come_from_the_contract(contract: dict[str, Any]) -> None:
    names = {m["name"] for m in contract["metrics"].values()}
    for key, external in contract["externalMetrics"].items():
        assert set(external["from"]) <= names, key


def test_keda_queries_select_the_pool_queues(renders: dict[str, Render],
                                             contract: dict[str, Any]) -> None:
    for case in CASES:
        for so in renders[case].of_kind("ScaledObject"):
            deployment = renders[case].get("Deployment", so["spec"]["scaleTargetRef"]["name"])
            queues = deployment["metadata"]["annotations"]["taskplane.io/queues"].split(",")
            for trigger in so["spec"]["triggers"]:
                assert trigger["type"] == "prometheus", (case, trigger)
                matcher = re.search(r'queue=~"([^"]*)"', trigger["metadata"]["query"]).group(1)
                assert [q.replace("\\\\.", ".") for q in matcher.split("|")] == queues, (case, matcher)
                assert 'namespace="taskplane"' in trigger["metadata"]["query"]


def test_keda_backlog_is_one_sum_of_waiting_and_reserved(
    renders: dict[str, Render], contract: dict[str, Any]
) -> None:
    """KEDA's HPA follows the largest of its triggers' recommendations, not their sum: the
    backlog must be a single metric summing waiting (every priority list, as the exporter
    counts them) and reserved over every queue of the pool."""
    metrics = contract["metrics"]
    seen = 0
    for case in CASES:
        for so in renders[case].of_kind("ScaledObject"):
            (backlog,) = [t for t in so["spec"]["triggers"] if t["metadata"]["query"].startswith("sum(")]
            query = backlog["metadata"]["query"]
            assert metrics["queueWaiting"]["name"] in query and metrics["queueReserved"]["name"] in query
            assert backlog["metricType"] == "AverageValue"
            assert query.count("sum(") == 1 and " by " not in query, query
            seen += 1
    assert seen >= 2


def test_broker_layout_matches_the_code(contract: dict[str, Any]) -> None:
    try:
        from taskplane import broker
    except Exception as exc:
        pytest.skip(f"taskplane.broker is not importable: {exc!r}")
    assert list(broker.PRIORITY_STEPS) == contract["broker"]["prioritySteps"]
    assert broker.SEP == contract["broker"]["prioritySeparator"]


def test_metric_name_parser() -> None:
    expr = (
        'sum by (queue) (rate(taskplane_tasks_total{outcome="fail",queue=~"a|b"}[5m])) / ignoring(x) '
        'sum({__name__=~"taskplane_queue_waiting|taskplane_queue_reserved",job="j"}) > 3'
    )
    assert metric_names(expr) == {
        "taskplane_tasks_total",
        "taskplane_queue_waiting",
        "taskplane_queue_reserved",
    }
