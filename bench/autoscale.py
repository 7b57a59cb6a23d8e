"""The autoscaling experiment: a burst of tasks, a real Prometheus, the chart's HPA, real workers.

The chart is rendered with ``helm template`` and its worker pool's HPA read from it
(bench/hpa.py): the PromQL prometheus-adapter would run for each External metric,
the targets, min/max replicas and behavior. Prometheus scrapes ``taskplane exporter``
under the job name and labels the HPA's selector expects. Every sync period the
scaler queries Prometheus with that PromQL, applies the Kubernetes HPA algorithm, and
starts ``taskplane worker`` processes (with the env the chart gives the pool's pods)
or sends SIGTERM to the newest ones, as the kubelet does on scale-down.

Load: a burst of ``burst_tasks`` ``bench.sleep`` tasks (uniform random durations)
submitted through the API at once; once it is drained, a trickle that keeps tasks
running while the pool scales down (autoscaled run only). Each run counts every task's
starts and completions by task id in Redis, so a task lost or run twice shows up. A
second run keeps one worker.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import urllib.parse
import urllib.request
from typing import Any

from tests.support.procs import Proc, free_port, http_ok

from . import tasks as bench_tasks
from .figures import SUBMIT_PATH, Progress, Sizes, rounded
from .hpa import Autoscaler, HpaSpec, read_chart_autoscaler
from .loadgen import Client
from .stack import ROOT, Stack

RULES = ROOT / "monitoring" / "rules" / "taskplane.rules.yaml"


class WorkerPool:
    """A Deployment's worth of ``taskplane worker`` processes."""

    def __init__(self, stack: Stack, spec: HpaSpec, name: str) -> None:
        self.stack = stack
        self.spec = spec
        self.name = name
        self.active: list[tuple[Proc, int]] = []
        self.terminating: list[tuple[Proc, float]] = []
        self.sigterm_at: dict[str, float] = {}
        self.started = 0
        self.stopped: list[dict[str, Any]] = []

    def _start(self) -> None:
        env = dict(self.spec.worker_env)
        concurrency = int(env.pop("WORKER_CONCURRENCY", "2"))
        port = free_port()
        self.started += 1
        proc = self.stack.start_worker(f"{self.name}-{self.started}", metrics=True,
                                       concurrency=concurrency, wait=False, metrics_port=port, **env)
        self.active.append((proc, port))

    def scale_to(self, replicas: int) -> None:
        while len(self.active) < replicas:
            self._start()
        while len(self.active) > replicas:
            proc, _ = self.active.pop()  # the newest pod goes first
            proc.send(15)  # SIGTERM to the main process, like the kubelet
            self.sigterm_at[proc.name] = time.time()
            self.terminating.append((proc, time.monotonic() + self.spec.termination_grace_seconds))

    def reap(self) -> None:
        still = []
        for proc, deadline in self.terminating:
            if not proc.alive():
                self.stack.stop(proc)
                self.stopped.append({"worker": proc.name, "exit": proc.returncode,
                                     "shutdown_s": rounded(time.time() - self.sigterm_at[proc.name], 2)})
            elif time.monotonic() > deadline:  # grace period over: the kubelet's SIGKILL
                proc.stop(9)
                self.stack.forget(proc)
                self.stopped.append({"worker": proc.name, "exit": "SIGKILL"})
            else:
                still.append((proc, deadline))
        self.terminating = still
        for proc, _ in self.active:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} died:\n{proc.log()[-3000:]}")

    def ready(self) -> int:
        return sum(1 for _, port in self.active if http_ok(f"http://127.0.0.1:{port}/readyz", 0.5))

    def close(self) -> None:
        """After a run, everything accounted for: SIGKILL what is left (a graceful stop takes ~2 s)."""
        procs = [proc for proc, _ in self.active] + [proc for proc, _ in self.terminating]
        self.stack.stop(*procs, sig=9)
        self.active, self.terminating = [], []


def prometheus_query(base: str, query: str) -> float | None:
    """What the External metrics API hands the HPA: the sum of the query's series, or None."""
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            data = json.load(response)
    except OSError:
        return None
    result = data.get("data", {}).get("result", [])
    if data.get("status") != "success" or not result:
        return None
    return sum(float(r["value"][1]) for r in result)


def prometheus_range(base: str, query: str, start: float, end: float, step: float) -> list[list[float]]:
    url = f"{base}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"})
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - loopback
        data = json.load(response)
    series = data.get("data", {}).get("result", [])
    if not series:
        return []
    return [[float(t), float(v)] for t, v in series[0]["values"]]


def prometheus_config(spec: HpaSpec, exporter: str, api: str, interval: float) -> str:
    """Scrape the exporter under the job and labels the HPA's metric selector names."""
    hpa_metric = spec.source["hpa"]["metrics"][0]["external"]["metric"]
    labels = dict((hpa_metric.get("selector") or {}).get("matchLabels") or {})
    job = labels.pop("job", "taskplane-exporter")
    labels["namespace"] = spec.namespace
    label_lines = [f"          {k}: {json.dumps(str(v))}" for k, v in sorted(labels.items())]
    return "\n".join([
        "global:",
        f"  scrape_interval: {interval:g}s",
        f"  evaluation_interval: {interval:g}s",
        "rule_files:",
        f"  - {RULES}",
        "scrape_configs:",
        f"  - job_name: {json.dumps(job)}",
        "    static_configs:",
        f"      - targets: ['{exporter}']",
        "        labels:",
        *label_lines,
        "  - job_name: taskplane-api",
        "    static_configs:",
        f"      - targets: ['{api}']",
        f"        labels: {{namespace: {json.dumps(spec.namespace)}}}",
    ]) + "\n"


class Load:
    """The burst, then the trickle; every accepted task id with its duration."""

    def __init__(self, base: str, token: str, sizes: Sizes, seed: int = 6) -> None:
        self.base, self.token, self.sizes = base, token, sizes
        self.rng = random.Random(seed)  # noqa: S311 - task durations, not secrets
        self.accepted: list[str] = []
        self.burst_ids: list[str] = []
        self.refused = 0
        self.burst_done_at: float | None = None
        self.trickle = threading.Event()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.error: BaseException | None = None

    def _ms(self) -> int:
        lo, hi = self.sizes.task_ms
        return self.rng.randint(lo, hi)

    def _submit(self, client: Client, ms: int) -> str | None:
        status, body = client.request("POST", SUBMIT_PATH, {"task": "bench.sleep", "kwargs": {"ms": ms}})
        if status != 202:
            with self.lock:
                self.refused += 1
            return None
        with self.lock:
            self.accepted.append(body["id"])
        return str(body["id"])

    def run(self) -> None:
        try:
            durations = [self._ms() for _ in range(self.sizes.burst_tasks)]
            cursor = iter(durations)
            lock = threading.Lock()

            def burst() -> None:
                client = Client(self.base, self.token)
                try:
                    while True:
                        with lock:
                            ms = next(cursor, None)
                        if ms is None:
                            return
                        task_id = self._submit(client, ms)
                        if task_id:
                            with self.lock:
                                self.burst_ids.append(task_id)
                finally:
                    client.close()

            threads = [threading.Thread(target=burst, daemon=True) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.burst_done_at = time.time()
            while not self.trickle.wait(0.1):
                if self.stop.is_set():
                    return
            client = Client(self.base, self.token)
            interval = 1.0 / self.sizes.trickle_rate
            due = time.monotonic()
            while not self.stop.is_set():
                self._submit(client, self._ms())
                due += interval
                self.stop.wait(max(0.0, due - time.monotonic()))
            client.close()
        except BaseException as exc:
            self.error = exc


def _counts(stack: Stack, ids: list[str]) -> tuple[list[int], list[int], list[float | None]]:
    """Per task id: runs started, runs completed, and when the last run ended."""
    client = stack.client()
    started: list[int] = []
    completed: list[int] = []
    finished: list[float | None] = []
    for i in range(0, len(ids), 2000):
        chunk = ids[i:i + 2000]
        with client.pipeline(transaction=False) as pipe:
            pipe.hmget(bench_tasks.STARTED_KEY, chunk)
            pipe.hmget(bench_tasks.COMPLETED_KEY, chunk)
            pipe.hmget(bench_tasks.FINISHED_AT_KEY, chunk)
            s, c, f = pipe.execute()
        started += [int(x or 0) for x in s]
        completed += [int(x or 0) for x in c]
        finished += [float(x) if x else None for x in f]
    return started, completed, finished


def one_run(stack: Stack, spec: HpaSpec, prom: str, api_base: str, sizes: Sizes, rep: logging.Logger,
            autoscaled: bool, pool: WorkerPool | None = None) -> dict[str, Any]:
    """One burst on the autoscaled pool (or on one fixed worker), until everything ran."""
    mode = "autoscaled" if autoscaled else "fixed"
    if pool is None:  # no worker runs now: start from an empty Redis
        stack.flush()
        pool = WorkerPool(stack, spec, mode)
    scaler = Autoscaler(spec)
    decisions: list[dict[str, Any]] = []
    timeline: list[dict[str, Any]] = []
    try:
        pool.scale_to(spec.min_replicas if autoscaled else 1)
        deadline = time.monotonic() + 90
        while pool.ready() < len(pool.active):
            pool.reap()
            if time.monotonic() > deadline:
                raise TimeoutError("workers not ready")
            time.sleep(0.1)
        # Prometheus must have seen the (empty) queue before the burst
        # (a minute: right after the memory figure this busy machine is slow to start scraping)
        deadline = time.monotonic() + 60 + 3 * sizes.scrape_interval
        while any(prometheus_query(prom, m.query) is None for m in spec.metrics):
            if time.monotonic() > deadline:
                raise TimeoutError("Prometheus has no queue metrics from the exporter")
            time.sleep(0.2)

        rep.info(f"{mode} run: {len(pool.active)} worker(s) ready, Prometheus sees the queue; burst")
        load = Load(api_base, stack.token, sizes)
        t0 = time.time()
        loader = threading.Thread(target=load.run, daemon=True)
        loader.start()
        cap = sizes.autoscale_max_seconds if autoscaled else sizes.fixed_max_seconds
        # the controller's sync loop runs regardless of the burst: its first sync after the
        # burst comes, on average, half a period later
        next_sync = time.monotonic() + (sizes.sync_period / 2 if autoscaled else float("inf"))
        drained_at: float | None = None
        trickle_from: float | None = None
        trickle_to: float | None = None
        next_sample = time.monotonic()
        client = stack.client()
        with Progress(rep, f"{mode} run (burst tasks done)", sizes.burst_tasks) as bar:
            while True:
                if load.error:
                    raise RuntimeError(f"load failed: {load.error!r}")
                pool.reap()
                if autoscaled and time.monotonic() >= next_sync:
                    next_sync += sizes.sync_period
                    values = {m.name: prometheus_query(prom, m.query) for m in spec.metrics}
                    current, ready = len(pool.active), pool.ready()
                    decision = scaler.reconcile(time.time() - t0, current, ready, values)
                    decisions.append(decision.as_dict())
                    if decision.desired != current:
                        shown = {k: None if v is None else round(v, 1) for k, v in values.items()}
                        rep.info(f"  t={decision.at:5.1f}s scale {current} -> {decision.desired} "
                                 f"({decision.reason}; {shown})")
                    pool.scale_to(decision.desired)
                if time.monotonic() < next_sample:
                    time.sleep(0.05)
                    continue
                next_sample += 0.5
                t = time.time() - t0
                burst = list(load.burst_ids)
                done = sum(1 for c in _counts(stack, burst)[1] if c) if burst else 0
                bar.update(done)
                timeline.append({"t": round(t, 2), "replicas": len(pool.active), "ready": pool.ready(),
                                 "terminating": len(pool.terminating),
                                 "completed": int(client.hlen(bench_tasks.COMPLETED_KEY)),
                                 "accepted": len(load.accepted)})
                if drained_at is None and load.burst_done_at is not None and done >= len(burst):
                    drained_at = t
                    if autoscaled:  # keep tasks running while the pool scales down
                        load.trickle.set()
                        trickle_from = t
                at_min = len(pool.active) == spec.min_replicas and not pool.terminating
                if trickle_to is None and ((drained_at is not None and (not autoscaled or at_min))
                                           or t > cap):
                    load.stop.set()
                    load.trickle.set()
                    trickle_to = t
                if trickle_to is not None and not loader.is_alive():
                    if all(_counts(stack, list(load.accepted))[1]) or t > cap + 60:
                        break
        loader.join(10)
        end = time.time()
        rep.info(f"{mode} run: every task ran ({end - t0:.1f}s)")
        accepted = list(load.accepted)
        started, completed, finished = _counts(stack, accepted)
        burst_set = set(load.burst_ids)
        burst_finished = [f for i, f in zip(accepted, finished, strict=True) if i in burst_set and f]
        step = sizes.scrape_interval
        series = {}
        for m in spec.metrics:
            points = prometheus_range(prom, m.query, t0 - 2 * step, end, step)
            series[m.name] = [[round(t - t0, 2), v] for t, v in points]
        # completions per second, from each task's own end time
        per_second: dict[int, int] = {}
        for f in finished:
            if f is not None:
                per_second[int(f - t0)] = per_second.get(int(f - t0), 0) + 1
        throughput = [[sec, per_second.get(sec, 0)] for sec in range(0, int(end - t0) + 1)]
        ups = [d for d in decisions if d["desired"] > d["current"]]
        downs = [d for d in decisions if d["desired"] < d["current"]]
        down_from = downs[0]["at"] if downs else None
        during_down = sum(1 for f in finished if f is not None and down_from is not None
                          and f - t0 >= down_from)
        return {
            "mode": mode,
            "burst_tasks": len(load.burst_ids), "accepted": len(accepted), "refused": load.refused,
            "time_to_first_scale_up_s": rounded(ups[0]["at"], 2) if ups else None,
            "first_added_worker_ready_s": next((row["t"] for row in timeline
                                                if row["ready"] > timeline[0]["ready"]), None),
            "time_to_drain_s": rounded(max(burst_finished) - t0, 2)
            if drained_at is not None and burst_finished else None,
            "drained": drained_at is not None,
            "max_replicas": max((row["replicas"] for row in timeline), default=0),
            "scale_ups": [{"t": rounded(d["at"], 2), "from": d["current"], "to": d["desired"],
                           "reason": d["reason"]} for d in ups],
            "scale_downs": [{"t": rounded(d["at"], 2), "from": d["current"], "to": d["desired"],
                             "reason": d["reason"]} for d in downs],
            "lost": sum(1 for c in completed if c == 0),
            "ran_twice": sum(1 for c in completed if c > 1),
            "started_twice": sum(1 for x in started if x > 1),
            "tasks_finished_during_scale_down": during_down,
            "trickle_s": [rounded(trickle_from, 2), rounded(trickle_to, 2)]
            if trickle_from is not None and trickle_to is not None else None,
            "duration_s": rounded(end - t0, 2),
            "workers_stopped": pool.stopped,
            "timeline": timeline, "throughput_per_s": throughput, "prometheus": series,
            "decisions": decisions,
        }
    finally:
        pool.close()


def autoscaling(stack: Stack, sizes: Sizes, rep: logging.Logger) -> dict[str, Any]:
    overrides = dict(sizes.hpa_overrides)
    spec = read_chart_autoscaler(set_values=overrides)
    rep.info(f"autoscaling: chart HPA {spec.name}: {spec.min_replicas}-{spec.max_replicas} replicas, "
             + ", ".join(f"{m.name} {m.target_type} {m.target:g}" for m in spec.metrics))
    stack.flush()
    first = WorkerPool(stack, spec, "autoscaled")
    first.scale_to(spec.min_replicas)  # starts while the rest comes up
    exporter = stack.start_exporter(wait=False)
    api = stack.start_api("api-autoscale", wait=False)
    prom = stack.start_prometheus(prometheus_config(spec, f"127.0.0.1:{exporter.port}",
                                                    f"127.0.0.1:{api.port}", sizes.scrape_interval))
    exporter.wait_http()
    api.wait_http()
    try:
        auto = one_run(stack, spec, prom.base, api.base, sizes, rep, autoscaled=True, pool=first)
        fixed = one_run(stack, spec, prom.base, api.base, sizes, rep, autoscaled=False)
    finally:
        first.close()
        stack.stop(prom, api, exporter)
    return {
        "what": f"a burst of {sizes.burst_tasks} bench.sleep tasks of {sizes.task_ms[0]}-{sizes.task_ms[1]} "
                f"ms, then {sizes.trickle_rate:g} tasks/s until the pool is back at its minimum; the "
                "chart's HPA (PromQL, targets, behaviour, min/max) applied by this scaler every "
                f"{sizes.sync_period:g}s to real worker processes, Prometheus scraping every "
                f"{sizes.scrape_interval:g}s; then the same load on one fixed worker",
        "hpa": {"name": spec.name, "min_replicas": spec.min_replicas, "max_replicas": spec.max_replicas,
                "metrics": [{"name": m.name, "target_type": m.target_type, "target": m.target,
                             "promql": m.query} for m in spec.metrics],
                "scale_up": spec.as_dict()["scale_up"], "scale_down": spec.as_dict()["scale_down"],
                "worker_env": dict(spec.worker_env), "chart_overrides": overrides,
                "sync_period_s": sizes.sync_period, "scrape_interval_s": sizes.scrape_interval,
                "tolerance": 0.1},
        "autoscaled": auto, "fixed": fixed,
        "speedup": rounded(fixed["time_to_drain_s"] / auto["time_to_drain_s"], 2)
        if auto["time_to_drain_s"] and fixed["time_to_drain_s"] else None,
    }
