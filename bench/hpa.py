"""The Kubernetes HorizontalPodAutoscaler (autoscaling/v2) algorithm, and the chart's autoscaler.

``read_chart_autoscaler`` renders charts/taskplane with ``helm template`` and takes the
worker pool's HPA (min/max replicas, metrics and targets, behavior) and the PromQL that
the chart's prometheus-adapter rules run for each External metric, with the HPA's
selector substituted for ``<<.LabelMatchers>>`` the way prometheus-adapter does it.
Nothing is copied from the chart: change its values and the scaler follows.

``Autoscaler`` is the controller's reconcile step as the Kubernetes documentation and
kube-controller-manager (pkg/controller/podautoscaler) define it:

* per metric, a proposal: ``AverageValue`` External metrics propose
  ``ceil(value / target)``, ``Value`` ones ``ceil(value / target * readyPods)``, unless
  the usage ratio is within the tolerance (0.1) of 1, when they propose the current
  count; the largest proposal wins. Values are compared in milli-units, as the
  controller does.
* if a metric cannot be read: no change, unless the readable ones propose a scale-up.
* stabilisation: the recommendation is clamped between the lowest recommendation of
  the scale-up window and the highest of the scale-down window.
* rate limits: each policy allows ``Pods`` or ``Percent`` of the replicas at the start of
  its period (replicas now, less what was added, plus what was removed within it);
  ``selectPolicy`` Max takes the most permissive policy, Min the least, Disabled none.
* min/max replicas bound the result.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "taskplane"
TOLERANCE = 0.1
INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)


@dataclass(frozen=True)
class Policy:
    type: str  # "Pods" or "Percent"
    value: int
    period_seconds: int


@dataclass(frozen=True)
class Rules:
    stabilization_window_seconds: int
    select_policy: str  # "Max", "Min" or "Disabled"
    policies: tuple[Policy, ...]


# autoscaling/v2 defaults (SetDefaults_HorizontalPodAutoscalerBehavior)
DEFAULT_SCALE_UP = Rules(0, "Max", (Policy("Pods", 4, 15), Policy("Percent", 100, 15)))
DEFAULT_SCALE_DOWN = Rules(300, "Max", (Policy("Percent", 100, 15),))


@dataclass(frozen=True)
class Metric:
    name: str  # the External metric name
    target_type: str  # "AverageValue" or "Value"
    target: float
    query: str  # the PromQL prometheus-adapter would run for it


@dataclass(frozen=True)
class HpaSpec:
    name: str
    namespace: str
    min_replicas: int
    max_replicas: int
    metrics: tuple[Metric, ...]
    scale_up: Rules = DEFAULT_SCALE_UP
    scale_down: Rules = DEFAULT_SCALE_DOWN
    # what the chart's worker Deployment sets for its container (literal env values)
    worker_env: Mapping[str, str] = field(default_factory=dict)
    termination_grace_seconds: int = 30
    source: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the chart ---------------------------------------------------------------------------

def helm_binary() -> str:
    for candidate in (os.environ.get("HELM"), str(ROOT / ".tools" / "bin" / "helm"), shutil.which("helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("helm not found: run scripts/chart-tools.sh (it installs .tools/bin/helm)")


def render_chart(release: str = "taskplane", namespace: str = "taskplane",
                 set_values: Mapping[str, Any] | None = None, chart: Path = CHART) -> list[dict[str, Any]]:
    args = [helm_binary(), "template", release, str(chart), "--namespace", namespace]
    for key, value in (set_values or {}).items():
        args += ["--set", f"{key}={value}"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"helm template failed: {out.stderr[-3000:]}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def label_matchers(namespace: str | None, selector: Mapping[str, Any]) -> list[str]:
    """A label selector as PromQL matchers, as prometheus-adapter builds ``<<.LabelMatchers>>``."""
    matchers = []
    if namespace:
        matchers.append(f'namespace="{namespace}"')
    for key, value in sorted((selector.get("matchLabels") or {}).items()):
        matchers.append(f'{key}="{value}"')
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], [str(v) for v in expr.get("values") or []]
        if op == "In":
            matchers.append(f'{key}=~"{"|".join(values)}"')
        elif op == "NotIn":
            matchers.append(f'{key}!~"{"|".join(values)}"')
        elif op == "Exists":
            matchers.append(f'{key}!=""')
        elif op == "DoesNotExist":
            matchers.append(f'{key}=""')
        else:
            raise ValueError(f"unknown selector operator {op!r}")
    return matchers


def _series_name(series_query: str) -> str:
    # seriesQuery: '{__name__="taskplane_queue_waiting",queue!="",...}'
    start = series_query.index('__name__="') + len('__name__="')
    return series_query[start:series_query.index('"', start)]


def _rules(raw: Mapping[str, Any] | None, default: Rules) -> Rules:
    if not raw:
        return default
    policies = tuple(Policy(p["type"], int(p["value"]), int(p["periodSeconds"]))
                     for p in raw.get("policies") or []) or default.policies
    window = raw.get("stabilizationWindowSeconds")
    return Rules(default.stabilization_window_seconds if window is None else int(window),
                 str(raw.get("selectPolicy") or "Max"), policies)


def read_chart_autoscaler(pool: str = "default", release: str = "taskplane",
                          namespace: str = "taskplane",
                          set_values: Mapping[str, Any] | None = None) -> HpaSpec:
    """The pool's HPA as the chart renders it, with the adapter's PromQL for each metric."""
    docs = render_chart(release, namespace, set_values)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc.get("kind", ""), []).append(doc)

    hpas = [d for d in by_kind.get("HorizontalPodAutoscaler", [])
            if d["spec"]["scaleTargetRef"]["kind"] == "Deployment"
            and d["metadata"].get("labels", {}).get("taskplane.io/pool") == pool]
    if len(hpas) != 1:
        raise RuntimeError(f"expected one HPA for worker pool {pool!r}, the chart renders {len(hpas)}")
    hpa = hpas[0]
    target_name = hpa["spec"]["scaleTargetRef"]["name"]
    ns = hpa["metadata"].get("namespace") or namespace

    adapter = next((d for d in by_kind.get("ConfigMap", [])
                    if d["metadata"]["name"].endswith("-adapter-rules")), None)
    if adapter is None:
        raise RuntimeError("the chart renders no prometheus-adapter rules ConfigMap")
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["externalRules"]

    metrics = []
    for spec in hpa["spec"]["metrics"]:
        if spec["type"] != "External":
            raise RuntimeError(f"unsupported HPA metric type {spec['type']!r}")
        ext = spec["external"]
        name = ext["metric"]["name"]
        rule = next((r for r in rules if r["name"]["as"] == name), None)
        if rule is None:
            raise RuntimeError(f"no prometheus-adapter rule serves external metric {name!r}")
        namespaced = "namespace" in (rule.get("resources", {}).get("overrides") or {})
        matchers = ",".join(label_matchers(ns if namespaced else None, ext["metric"].get("selector") or {}))
        query = (rule["metricsQuery"].replace("<<.LabelMatchers>>", matchers)
                 .replace("<<.Series>>", _series_name(rule["seriesQuery"]))
                 .replace("<<.GroupBy>>", "").replace("<<.GroupBySlice>>", ""))
        target = ext["target"]
        kind = target["type"]
        value = target["averageValue"] if kind == "AverageValue" else target["value"]
        metrics.append(Metric(name, kind, float(value), query))

    deployment = next(d for d in by_kind.get("Deployment", []) if d["metadata"]["name"] == target_name)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: str(e["value"]) for e in container.get("env") or []
           if "value" in e and not e["name"].startswith("REDIS_")}
    behavior = hpa["spec"].get("behavior") or {}
    return HpaSpec(
        name=hpa["metadata"]["name"], namespace=ns,
        min_replicas=int(hpa["spec"].get("minReplicas", 1)),
        max_replicas=int(hpa["spec"]["maxReplicas"]),
        metrics=tuple(metrics),
        scale_up=_rules(behavior.get("scaleUp"), DEFAULT_SCALE_UP),
        scale_down=_rules(behavior.get("scaleDown"), DEFAULT_SCALE_DOWN),
        worker_env=env,
        termination_grace_seconds=int(pod.get("terminationGracePeriodSeconds", 30)),
        source={"chart": str(CHART.relative_to(ROOT)), "release": release, "namespace": namespace,
                "set": dict(set_values or {}), "hpa": hpa["spec"]},
    )


# -- the algorithm -------------------------------------------------------------------------

def milli(value: float) -> int:
    """A metric value as the External metrics API hands it to the controller (milli-units)."""
    return int(value * 1000.0)


def proposal(metric: Metric, value: float, current: int, ready: int,
             tolerance: float = TOLERANCE) -> int:
    """Replicas one External metric asks for (replica_calculator.go)."""
    usage, target = milli(value), milli(metric.target)
    if metric.target_type == "AverageValue":  # GetExternalPerPodMetricReplicas
        ratio = usage / (target * current)
        if abs(1.0 - ratio) <= tolerance:
            return current
        return math.ceil(usage / target)
    if metric.target_type == "Value":  # GetExternalMetricReplicas → getUsageRatioReplicaCount
        ratio = usage / target
        if current == 0:
            return math.ceil(ratio)
        if abs(1.0 - ratio) <= tolerance:
            return current
        return math.ceil(ratio * ready)
    raise ValueError(f"unsupported target type {metric.target_type!r}")


def _change_in_period(period: int, events: list[tuple[float, int]], now: float) -> int:
    cutoff = now - period
    return sum(change for t, change in events if t > cutoff)


def scale_up_limit(current: int, up_events: list[tuple[float, int]],
                   down_events: list[tuple[float, int]], rules: Rules, now: float) -> int:
    if rules.select_policy == "Disabled":
        return current
    pick, result = (min, INT32_MAX) if rules.select_policy == "Min" else (max, INT32_MIN)
    for policy in rules.policies:
        start = (current - _change_in_period(policy.period_seconds, up_events, now)
                 + _change_in_period(policy.period_seconds, down_events, now))
        if policy.type == "Pods":
            proposed = start + policy.value
        else:
            proposed = math.ceil(start * (1 + policy.value / 100))
        result = pick(result, proposed)
    return result


def scale_down_limit(current: int, up_events: list[tuple[float, int]],
                     down_events: list[tuple[float, int]], rules: Rules, now: float) -> int:
    if rules.select_policy == "Disabled":
        return current
    pick, result = (max, INT32_MIN) if rules.select_policy == "Min" else (min, INT32_MAX)
    for policy in rules.policies:
        start = (current - _change_in_period(policy.period_seconds, up_events, now)
                 + _change_in_period(policy.period_seconds, down_events, now))
        if policy.type == "Pods":
            proposed = start - policy.value
        else:
            proposed = int(start * (1 - policy.value / 100))
        result = pick(result, proposed)
    return result


@dataclass
class Decision:
    at: float
    current: int
    ready: int
    values: dict[str, float | None]
    proposals: dict[str, int]
    metric_desired: int | None
    stabilized: int | None
    desired: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Autoscaler:
    """One HPA's controller state: its recommendations and scale events."""

    def __init__(self, spec: HpaSpec, tolerance: float = TOLERANCE) -> None:
        self.spec = spec
        self.tolerance = tolerance
        self.recommendations: list[tuple[float, int]] = []
        self.up_events: list[tuple[float, int]] = []
        self.down_events: list[tuple[float, int]] = []

    def metric_replicas(self, values: Mapping[str, float | None], current: int,
                        ready: int) -> tuple[int | None, dict[str, int]]:
        """computeReplicasForMetrics: the largest proposal, or None when no change may be made."""
        proposals: dict[str, int] = {}
        invalid = 0
        for metric in self.spec.metrics:
            value = values.get(metric.name)
            if value is None or math.isnan(value):
                invalid += 1
                continue
            proposals[metric.name] = proposal(metric, value, current, ready, self.tolerance)
        best = max(proposals.values(), default=0)
        if invalid >= len(self.spec.metrics) or (invalid and best < current):
            return None, proposals
        return best, proposals

    def _stabilize(self, now: float, current: int, desired: int) -> int:
        up, down = self.spec.scale_up, self.spec.scale_down
        up_cut, down_cut = now - up.stabilization_window_seconds, now - down.stabilization_window_seconds
        up_rec = down_rec = desired
        old_index = None
        for i, (t, rec) in enumerate(self.recommendations):
            if t > up_cut:
                up_rec = min(rec, up_rec)
            if t > down_cut:
                down_rec = max(rec, down_rec)
            if t < up_cut and t < down_cut:
                old_index = i
        recommendation = current
        recommendation = max(recommendation, up_rec)
        recommendation = min(recommendation, down_rec)
        if old_index is not None:
            self.recommendations[old_index] = (now, desired)
        else:
            self.recommendations.append((now, desired))
        return recommendation

    def _rate_limit(self, now: float, current: int, desired: int) -> tuple[int, str]:
        spec = self.spec
        if desired > current:
            limit = max(scale_up_limit(current, self.up_events, self.down_events, spec.scale_up, now),
                        current)
            allowed, reason = (limit, "ScaleUpLimit") if spec.max_replicas > limit else (
                spec.max_replicas, "TooManyReplicas")
            if desired > allowed:
                return allowed, reason
        elif desired < current:
            limit = min(scale_down_limit(current, self.up_events, self.down_events, spec.scale_down, now),
                        current)
            allowed, reason = (limit, "ScaleDownLimit") if spec.min_replicas < limit else (
                spec.min_replicas, "TooFewReplicas")
            if desired < allowed:
                return allowed, reason
        return desired, "DesiredWithinRange"

    def reconcile(self, now: float, current: int, ready: int,
                  values: Mapping[str, float | None]) -> Decision:
        """One sync: the replicas the target should have now (and remember the change)."""
        spec = self.spec
        proposals: dict[str, int] = {}
        metric_desired = stabilized = None
        if current == 0 and spec.min_replicas != 0:
            desired, reason = current, "ScalingDisabled"
        elif current > spec.max_replicas:
            desired, reason = spec.max_replicas, "Current number of replicas above Spec.MaxReplicas"
        elif current < spec.min_replicas:
            desired, reason = spec.min_replicas, "Current number of replicas below Spec.MinReplicas"
        else:
            metric_desired, proposals = self.metric_replicas(values, current, ready)
            if metric_desired is None:
                desired, reason = current, "FailedGetExternalMetric"
            else:
                stabilized = self._stabilize(now, current, metric_desired)
                desired, reason = self._rate_limit(now, current, stabilized)
        if desired != current:
            events = self.up_events if desired > current else self.down_events
            events.append((now, abs(desired - current)))
            longest = max((p.period_seconds for rules in (spec.scale_up, spec.scale_down)
                           for p in rules.policies), default=0)
            # events older than every policy's period no longer limit anything
            self.up_events[:] = [e for e in self.up_events if e[0] > now - longest]
            self.down_events[:] = [e for e in self.down_events if e[0] > now - longest]
        return Decision(now, current, ready, dict(values), proposals, metric_desired, stabilized,
                        desired, reason)
