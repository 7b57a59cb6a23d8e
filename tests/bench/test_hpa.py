"""The scaler's HPA algorithm against the Kubernetes documentation, and its reading of the chart."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from bench.hpa import (
    Autoscaler,
    HpaSpec,
    Metric,
    Policy,
    Rules,
    proposal,
    read_chart_autoscaler,
    scale_down_limit,
    scale_up_limit,
)

ROOT = Path(__file__).resolve().parents[2]
BACKLOG = Metric("backlog", "AverageValue", 10, "sum(backlog)")
AGE = Metric("age", "Value", 120, "max(age)")
UP = Rules(0, "Max", (Policy("Pods", 4, 15), Policy("Percent", 100, 15)))
DOWN = Rules(300, "Max", (Policy("Percent", 25, 60),))


def spec(**kw) -> HpaSpec:
    base = {"name": "w", "namespace": "ns", "min_replicas": 1, "max_replicas": 10,
            "metrics": (BACKLOG, AGE), "scale_up": UP, "scale_down": DOWN}
    base.update(kw)
    return HpaSpec(**base)


def test_average_value_is_ceil_of_total_over_target():
    assert proposal(BACKLOG, 200, current=1, ready=1) == 20
    assert proposal(BACKLOG, 21, current=1, ready=1) == 3


def test_within_tolerance_keeps_the_current_count():
    assert proposal(BACKLOG, 105, current=10, ready=10) == 10  # ratio 1.05
    assert proposal(BACKLOG, 109, current=10, ready=10) == 10  # ratio 1.09
    assert proposal(BACKLOG, 115, current=10, ready=10) == 12  # ratio 1.15
    assert proposal(AGE, 125, current=4, ready=4) == 4


def test_value_target_scales_the_ready_pods():
    assert proposal(AGE, 240, current=4, ready=3) == 6  # ceil(2.0 * 3 ready)
    assert proposal(AGE, 0, current=4, ready=4) == 0


def test_scale_up_is_limited_by_the_most_permissive_policy():
    assert scale_up_limit(1, [], [], UP, now=0) == 5  # max(1 + 4, 1 * 2)
    assert scale_up_limit(8, [], [], UP, now=0) == 16  # max(8 + 4, 8 * 2)
    # 4 pods were added 10 s ago: the period started at 1 replica
    assert scale_up_limit(5, [(-10, 4)], [], UP, now=0) == 5
    assert scale_up_limit(5, [(-20, 4)], [], UP, now=0) == 10  # that event left the 15 s period
    least = Rules(0, "Min", UP.policies)
    assert scale_up_limit(8, [], [], least, now=0) == 12
    assert scale_up_limit(8, [], [], Rules(0, "Disabled", UP.policies), now=0) == 8


def test_scale_down_percent_truncates():
    assert scale_down_limit(10, [], [], DOWN, now=0) == 7  # int(10 * 0.75)
    assert scale_down_limit(7, [], [(-30, 3)], DOWN, now=0) == 7  # period started at 10: 7 allowed
    assert scale_down_limit(7, [], [(-61, 3)], DOWN, now=0) == 5


def test_burst_then_calm_follows_policies_and_the_stabilisation_window():
    hpa = Autoscaler(spec())
    high, calm = {"backlog": 2000.0, "age": 5.0}, {"backlog": 1.0, "age": 0.0}
    replicas, history = 1, []
    for t in range(0, 600, 15):
        d = hpa.reconcile(float(t), replicas, replicas, high if t < 60 else calm)
        replicas = d.desired
        history.append((t, replicas))
    assert history[0] == (0, 5)  # +4 pods (or +100 %) per 15 s
    assert history[1] == (15, 10)  # max replicas
    assert dict(history)[330] == 10  # highest recommendation of the last 300 s: 200 (t=45)
    assert dict(history)[345] == 7  # window passed: 25 % per 60 s
    assert dict(history)[390] == 7
    assert dict(history)[405] == 5
    assert history[-1][1] == 1


def test_an_unreadable_metric_only_allows_scaling_up():
    hpa = Autoscaler(spec())
    assert hpa.reconcile(0, 2, 2, {"backlog": None, "age": 600.0}).desired == 6  # +4 pods
    hpa = Autoscaler(spec())
    assert hpa.reconcile(0, 4, 4, {"backlog": None, "age": 0.0}).desired == 4
    assert hpa.reconcile(15, 4, 4, {"backlog": None, "age": None}).reason == "FailedGetExternalMetric"


def test_min_and_max_bound_the_count():
    assert Autoscaler(spec()).reconcile(0, 12, 12, {"backlog": 0.0, "age": 0.0}).desired == 10
    assert Autoscaler(spec(min_replicas=2)).reconcile(0, 1, 1, {"backlog": 0.0, "age": 0.0}).desired == 2
    no_window = spec(scale_down=Rules(0, "Max", (Policy("Percent", 100, 15),)))
    assert Autoscaler(no_window).reconcile(0, 6, 6, {"backlog": 0.0, "age": 0.0}).desired == 1


def test_the_scaler_reads_the_chart_not_a_copy():
    values = yaml.safe_load((ROOT / "charts/taskplane/values.yaml").read_text())
    hpa_values = values["workers"]["defaults"]["autoscaling"]["hpa"]
    read = read_chart_autoscaler()
    assert read.min_replicas == hpa_values["minReplicas"]
    assert read.max_replicas == hpa_values["maxReplicas"]
    targets = {m.target_type: m.target for m in read.metrics}
    assert targets["AverageValue"] == float(hpa_values["targetBacklogPerReplica"])
    assert targets["Value"] == float(hpa_values["targetOldestAgeSeconds"])
    pool_queues = "|".join(values["workers"]["pools"][0]["queues"])  # the default pool's
    for metric in read.metrics:
        assert "<<" not in metric.query
        assert 'namespace="taskplane"' in metric.query
        assert f'queue=~"{pool_queues}"' in metric.query, metric.query
    changed = read_chart_autoscaler(set_values={
        "workers.defaults.autoscaling.hpa.targetBacklogPerReplica": 7,
        "workers.defaults.autoscaling.scaleDown.stabilizationWindowSeconds": 42})
    assert {m.target_type: m.target for m in changed.metrics}["AverageValue"] == 7.0
    assert changed.scale_down.stabilization_window_seconds == 42
    assert changed.worker_env.get("WORKER_CONCURRENCY")


@pytest.mark.parametrize("op,values,expected", [
    ("In", ["a", "b"], 'queue=~"a|b"'), ("NotIn", ["a"], 'queue!~"a"'),
    ("Exists", [], 'queue!=""'), ("DoesNotExist", [], 'queue=""')])
def test_selectors_become_promql_matchers_like_prometheus_adapter(op, values, expected):
    from bench.hpa import label_matchers

    got = label_matchers("ns", {"matchLabels": {"job": "x"},
                                "matchExpressions": [{"key": "queue", "operator": op, "values": values}]})
    assert got == ['namespace="ns"', 'job="x"', expected]
