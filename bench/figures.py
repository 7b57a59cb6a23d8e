"""Figures 1, 2, 3 and 5 of the benchmark (figure 4, the cost of metrics, is read off 1 and 2).

Each function starts what it measures on the run's private Redis, runs it, stops it,
and returns a JSON-ready dict. Runs of the sides being compared are interleaved
round by round (in a rotating order) and summarised by their median, so a noisy
neighbour on this 2-core machine hurts every side alike.
"""

from __future__ import annotations

import json
import logging
import signal as signals
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from tests.support.procs import Proc, free_port, rss_kib

from taskplane import broker

from . import cpu_profile
from .loadgen import Client, connection_split, paced, redis_benchmark, run_wrk
from .stack import BASELINE, ROOT, Stack

SUBMIT_PATH = "/v1/tasks"
NOOP_BODY = {"task": "bench.noop", "kwargs": {"data": "example_data"}}
SEED_PATH = "/start_task/example_data"
RESULT_PREFIX = "celery-task-meta-"
#: Where the post's ``.delay()`` puts its tasks: Celery's default queue.
SEED_QUEUE = "celery"
#: The list the enqueue floor pushes to (``LIST`` in ``baseline/floor.py``, which cannot be
#: imported here: it connects to Redis on import).
FLOOR_LIST = "floor"


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark is; ``FULL`` for ``make bench``, ``SMOKE`` for the tests."""

    enqueue_seconds: float
    enqueue_warmup_seconds: float
    enqueue_rounds: int
    connections: int
    redis_requests: int
    exec_tasks: int
    exec_rounds: int
    capacity_seconds: float
    probe_rate: float
    light_rate: float
    light_seconds: float
    load_seconds: float
    memory_tasks: int
    burst_tasks: int
    task_ms: tuple[int, int]
    trickle_rate: float
    scrape_interval: float
    sync_period: float
    autoscale_max_seconds: float
    fixed_max_seconds: float
    hpa_overrides: tuple[tuple[str, Any], ...]
    profile_rate: int  # py-spy samples per second per process (cpu_profile.py)
    profile_enqueue_seconds: float  # the profiled wrk run of figure 1
    profile_exec_tasks: int  # the backlog of figure 2's profiled drain
    # figure 7 (bench/followers.py): the issue's targets at full size
    follower_streams: int = 2000
    follower_waits: int = 2000
    follower_submit_rate: float = 100.0  # paced submits/s for the latency samples
    follower_submit_samples: int = 500
    follower_memory: int = 1000  # followers of each kind probed (bench/follower_memory.py)
    cost_tasks: int = 2000  # tasks per side and round of "Redis per task" (rediscost.py)
    cost_rounds: int = 5


# Chart values the autoscaling experiment overrides so the whole run fits the bench's
# 15 minutes: the chart's 300 s scale-down window and 25 %-per-60 s policy would take
# more than 8 minutes to come back down. Targets, PromQL, min/max and the scale-up
# policies are the chart's own.
FULL_HPA_OVERRIDES = (
    ("workers.defaults.autoscaling.scaleDown.stabilizationWindowSeconds", 30),
    ("workers.defaults.autoscaling.scaleDown.periodSeconds", 15),
)

# FULL: enqueue and execution (5 interleaved rounds each, and their profiled rounds) took
# 342 s here with enqueue_seconds=6 and profile_exec_tasks=6000; 5 s and 4000 keep `make
# bench` (the other figures take about 470 s) near 13 minutes, under its 15.
FULL = Sizes(
    enqueue_seconds=5, enqueue_warmup_seconds=2, enqueue_rounds=5, connections=16,
    redis_requests=200_000,
    exec_tasks=3000, exec_rounds=5,
    capacity_seconds=6, probe_rate=2000, light_rate=10, light_seconds=15, load_seconds=20,
    memory_tasks=100_000,
    burst_tasks=2000, task_ms=(50, 200), trickle_rate=10.0, scrape_interval=5.0,
    sync_period=15.0, autoscale_max_seconds=260, fixed_max_seconds=200,
    hpa_overrides=FULL_HPA_OVERRIDES,
    profile_rate=200, profile_enqueue_seconds=8, profile_exec_tasks=4000,
)

SMOKE = Sizes(
    enqueue_seconds=1, enqueue_warmup_seconds=0, enqueue_rounds=1, connections=4,
    redis_requests=2000,
    exec_tasks=40, exec_rounds=1,
    capacity_seconds=1, probe_rate=300, light_rate=10, light_seconds=1, load_seconds=1,
    memory_tasks=300,
    burst_tasks=50, task_ms=(50, 100), trickle_rate=10.0, scrape_interval=1.0,
    sync_period=1.0, autoscale_max_seconds=40, fixed_max_seconds=25,
    hpa_overrides=(
        ("workers.defaults.autoscaling.hpa.targetBacklogPerReplica", 5),
        ("workers.defaults.autoscaling.hpa.maxReplicas", 3),
        ("workers.defaults.autoscaling.scaleUp.periodSeconds", 1),
        ("workers.defaults.autoscaling.scaleDown.stabilizationWindowSeconds", 2),
        ("workers.defaults.autoscaling.scaleDown.periodSeconds", 1),
        ("workers.defaults.autoscaling.scaleDown.maxPercent", 100),
        ("workers.defaults.softShutdownTimeout", 2),
    ),
    profile_rate=100, profile_enqueue_seconds=1, profile_exec_tasks=300,
    follower_streams=40, follower_waits=40, follower_submit_rate=50,
    follower_submit_samples=50, follower_memory=30,
    cost_tasks=30, cost_rounds=1,
)


# -- helpers ------------------------------------------------------------------------------

def median(values: Iterable[float]) -> float:
    values = list(values)
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest-rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


class Progress:
    """Logs how far a long step is at every tenth of ``total``: ten lines, in a terminal or CI."""

    def __init__(self, log: logging.Logger, label: str, total: float) -> None:
        self.log, self.label, self.total = log, label, max(total, 1e-9)
        self.decile, self.started = -1, time.monotonic()

    def __enter__(self) -> Progress:
        self.update(0)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.update(self.total)

    def update(self, value: float) -> None:
        decile = int(min(value, self.total) / self.total * 10)
        if decile != self.decile:
            self.decile = decile
            self.log.info("  %s: %3.0f%% (%s/%s, %.1fs)", self.label, decile * 10, f"{value:,.0f}",
                          f"{self.total:,.0f}", time.monotonic() - self.started)


def rounded(value: float, digits: int = 3) -> float:
    return round(value, digits) if value == value else value  # keep NaN


def per_round_ratios(runs: dict[str, list[dict[str, Any]]], key: str,
                     pairs: dict[str, tuple[str, str]]) -> dict[str, list[float | None]]:
    """For each ratio name → (side, baseline): ``side / baseline`` of ``key`` in each round.

    ``runs[side][i]`` is the side's run of round i (every side runs once per round), so
    each side is divided by its baseline measured in the same round, minutes apart at
    most. A round where either value is missing or zero gives None.
    """
    out: dict[str, list[float | None]] = {}
    for name, (side, baseline) in pairs.items():
        values: list[float | None] = []
        for a, b in zip(runs[side], runs[baseline], strict=True):
            x, y = a.get(key), b.get(key)
            values.append(rounded(x / y) if x and y else None)
        out[name] = values
    return out


def median_ratios(per_round: dict[str, list[float | None]]) -> dict[str, float]:
    """The median of each ratio's per-round values (None skipped; NaN if none is left)."""
    return {name: rounded(median(v for v in values if v is not None))
            for name, values in per_round.items()}


def met_targets(ratios: dict[str, float], targets: dict[str, float]) -> dict[str, bool]:
    """Each target met (ratio >= target); a NaN ratio is not met."""
    return {name: bool(ratios[name] >= target) for name, target in targets.items()}


def auth_headers(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.token}", "Content-Type": "application/json"}


def taskplane_waiting(stack: Stack, queue: str = "default") -> int:
    client = stack.client()
    keys = broker.queue_keys(queue)
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.llen(key)
        return int(sum(pipe.execute()))


def stored(stack: Stack, side: str) -> int | None:
    """Messages an enqueue side's server has stored since the last flush (None: the bare
    route stores none)."""
    if side.startswith("taskplane"):
        return taskplane_waiting(stack)
    if side == "seed":
        return int(stack.client().llen(SEED_QUEUE))
    if side == "floor":
        return int(stack.client().llen(FLOOR_LIST))
    return None


def result_dates(stack: Stack, ids: list[str]) -> list[float | None]:
    """Celery's ``date_done`` (epoch seconds) of each task id; None while it has no result."""
    client = stack.client()
    out: list[float | None] = []
    for i in range(0, len(ids), 2000):
        for raw in client.mget([RESULT_PREFIX + x for x in ids[i:i + 2000]]):
            if raw is None:
                out.append(None)
                continue
            meta = json.loads(raw)
            if meta.get("status") != "SUCCESS":
                out.append(None)
                continue
            done = datetime.fromisoformat(meta["date_done"])
            if done.tzinfo is None:
                done = done.replace(tzinfo=UTC)
            out.append(done.timestamp())
    return out


def wait_results(stack: Stack, ids: list[str], timeout: float, progress: Callable[[int], None] | None = None,
                 proc: Proc | None = None) -> list[float]:
    """Wait until every task in ``ids`` has a SUCCESS result; their ``date_done`` times."""
    deadline = time.monotonic() + timeout
    pending = list(range(len(ids)))
    dates: list[float | None] = [None] * len(ids)
    while pending:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} died:\n{proc.log()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} of {len(ids)} tasks unfinished after {timeout:.0f}s")
        # the last task submitted is about the last to finish: look at all only when it is done
        if dates[pending[-1]] is None and result_dates(stack, [ids[pending[-1]]])[0] is None:
            if progress:
                progress(len(ids) - len(pending))
            time.sleep(0.1)
            continue
        fresh = result_dates(stack, [ids[i] for i in pending])
        still = []
        for i, d in zip(pending, fresh, strict=True):
            if d is None:
                still.append(i)
            else:
                dates[i] = d
        pending = still
        if progress:
            progress(len(ids) - len(pending))
        if pending:
            time.sleep(0.1)
    return [d for d in dates if d is not None]


def scrape(url: str) -> dict[str, float]:
    """A /metrics page as {"name{label=value,...}": value} (labels sorted)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def metric_total(samples: dict[str, float], name: str, **labels: str) -> float:
    want = [f"{k}={v}" for k, v in labels.items()]
    total = 0.0
    for key, value in samples.items():
        metric, _, rest = key.partition("{")
        if metric == name and all(w in rest.rstrip("}").split(",") for w in want):
            total += value
    return total


def fill(stack: Stack, side: str, n: int, queue: str = "default") -> list[str]:
    """A backlog of ``n`` no-op tasks, published the way ``side``'s producer does.

    Taskplane's go to ``queue``; the post's to Celery's default queue, as the post has it.
    """
    ids_file = stack.workdir / f"ids-{side}.txt"
    pythonpath = f"{BASELINE}:{ROOT}" if side in ("seed", "ackslate") else str(ROOT)
    env = stack.env(PYTHONPATH=pythonpath, PROMETHEUS_MULTIPROC_DIR=stack.metrics_dir("fill"),
                    DEFAULT_QUEUE=queue)
    out = subprocess.run([sys.executable, "-m", "bench.fill", side, str(n), str(ids_file)],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"filling the {side} backlog failed:\n{out.stderr[-3000:]}")
    ids = ids_file.read_text().split()
    if len(ids) != n:
        raise RuntimeError(f"filled {len(ids)} tasks, wanted {n}")
    return ids


# -- figure 1: enqueue --------------------------------------------------------------------

#: Ratio name → (side, baseline), each computed per round. Only the targets are targets:
#: the others are there to read the targets by.
ENQUEUE_RATIOS = {
    "taskplane_vs_floor": ("taskplane", "floor"),
    "taskplane_vs_seed": ("taskplane", "seed"),
    "taskplane_vs_bare": ("taskplane", "bare"),
    "floor_vs_bare": ("floor", "bare"),
    "floor_vs_seed": ("floor", "seed"),
}
ENQUEUE_TARGETS = {"taskplane_vs_floor": 0.8}

def enqueue(stack: Stack, sizes: Sizes, rep: logging.Logger) -> dict[str, Any]:
    """Requests/s and latency of submitting a task, against the post's app, the bare route
    and the floor (one LPUSH per request)."""
    rep.info("figure 1: starting the bare Flask app, the floor, the post's app and Taskplane's API "
             "(metrics on/off)")
    servers = {
        "bare": stack.start_baseline_api("bare-api", "bare:app", wait=False),
        "floor": stack.start_baseline_api("floor-api", "floor:app", wait=False),
        "seed": stack.start_baseline_api("seed-api", "app:app", wait=False),
        "taskplane": stack.start_api("api-metrics-on", metrics=True, wait=False),
        "taskplane_metrics_off": stack.start_api("api-metrics-off", metrics=False, wait=False),
    }
    for server in servers.values():
        server.wait_http().wait_children(stack.api_workers())  # the split check needs them all
    body = json.dumps(NOOP_BODY)
    requests = {
        "bare": {"url": servers["bare"].base + "/"},
        "floor": {"url": servers["floor"].base + "/", "method": "POST"},
        "seed": {"url": servers["seed"].base + SEED_PATH},
        "taskplane": {"url": servers["taskplane"].base + SUBMIT_PATH, "method": "POST",
                      "body": body, "headers": auth_headers(stack)},
        "taskplane_metrics_off": {"url": servers["taskplane_metrics_off"].base + SUBMIT_PATH,
                                  "method": "POST", "body": body, "headers": auth_headers(stack)},
    }
    names = list(requests)
    spreads = {name: partial(connection_split, servers[name].port, servers[name].children())
               for name in names}
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    if sizes.enqueue_warmup_seconds:
        for name in names:
            run_wrk(seconds=sizes.enqueue_warmup_seconds, connections=sizes.connections,
                    workdir=stack.workdir, **requests[name])
    total = sizes.enqueue_rounds * len(names)
    with Progress(rep, "enqueue (wrk runs)", total) as bar:
        done = 0
        for rnd in range(sizes.enqueue_rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for name in order:
                stack.flush()
                result = run_wrk(seconds=sizes.enqueue_seconds, connections=sizes.connections,
                                 workdir=stack.workdir, spread=spreads[name], **requests[name])
                row = result.as_dict()
                queued = stored(stack, name)
                if queued is not None:
                    row["queued"] = queued
                row["round"] = rnd
                runs[name].append(row)
                done += 1
                bar.update(done)
    profiled = profile_enqueue(stack, servers["taskplane"], requests["taskplane"], spreads["taskplane"],
                               sizes, rep)
    profiled_floor = profile_enqueue(stack, servers["floor"], requests["floor"], spreads["floor"],
                                     sizes, rep, side="floor")
    stack.stop(*servers.values())

    summary = {}
    for name in names:
        rows = runs[name]
        summary[name] = {
            "requests_per_s": rounded(median(r["requests_per_s"] for r in rows), 1),
            "p50_ms": rounded(median(r["latency_ms"]["p50"] for r in rows)),
            "p99_ms": rounded(median(r["latency_ms"]["p99"] for r in rows)),
            "errors": sum(sum(r["errors"].values()) for r in rows),
            "runs": rows,
        }
    per_round = per_round_ratios(runs, "requests_per_s", ENQUEUE_RATIOS)
    ratios = median_ratios(per_round)
    return {
        "what": "POST /v1/tasks (auth, schema validation, rate limit, record + message in one Redis "
                "call, metrics and access log on) vs. the post's GET /start_task/<data> (.delay()) vs. "
                "a constant Flask route (bare) vs. a route that does one LPUSH (floor); all under "
                "Taskplane's gunicorn configuration, driven by wrk on loopback at fixed concurrency",
        "connections": sizes.connections, "seconds_per_run": sizes.enqueue_seconds,
        "rounds": sizes.enqueue_rounds, "results": summary, "ratios": ratios,
        "per_round_ratios": per_round,
        "ratios_how": "each side's requests/s divided by its baseline's in the same round; the "
                      "median of those per-round ratios",
        "targets": dict(ENQUEUE_TARGETS), "met": met_targets(ratios, ENQUEUE_TARGETS),
        "profile": profiled,
        "profile_baseline": profiled_floor,
    }


def redis_limits(stack: Stack, sizes: Sizes, rep: logging.Logger) -> dict[str, Any]:
    rep.info("bare limit: redis-benchmark LPUSH/RPOP on the same Redis")
    stack.flush()
    results = redis_benchmark(stack.redis.port, requests=sizes.redis_requests)
    stack.flush()
    return {"what": "redis-benchmark -t lpush,rpop, 50 clients, on the run's Redis",
            "requests": sizes.redis_requests, "results": results}


# -- figure 2: execution ------------------------------------------------------------------

#: Figure 2's sides, in the order the rounds rotate.
#: ``taskplane_prefetch2`` is not a target: Taskplane with WORKER_PREFETCH_MULTIPLIER=2 (the
#: default, 1, keeps a long task from hiding work from idle workers), to show what the
#: consumer loop's round trips between one task and the next cost at prefetch 1.
EXEC_SIDES = ("taskplane", "taskplane_metrics_off", "seed", "floor", "taskplane_prefetch2")
EXEC_RATIOS = {
    "taskplane_vs_seed": ("taskplane", "seed"),
    "taskplane_vs_floor": ("taskplane", "floor"),
    "seed_vs_floor": ("seed", "floor"),
    "taskplane_metrics_off_vs_floor": ("taskplane_metrics_off", "floor"),
    "taskplane_prefetch2_vs_seed": ("taskplane_prefetch2", "seed"),
}
EXEC_TARGETS = {"taskplane_vs_seed": 1.3}


def floor_list(stack: Stack, queue: str, n: int) -> str:
    """The one list a Taskplane backlog of ``n`` default-priority tasks lies in (the
    execution floor pops it)."""
    key = broker.queue_key(queue, broker.transport_priority(broker.DEFAULT_PRIORITY))
    held = int(stack.client().llen(key))
    if held != n:
        raise RuntimeError(f"the floor's backlog: {held} messages in {key!r}, wanted {n}")
    return key


def execution(stack: Stack, sizes: Sizes, rep: logging.Logger) -> dict[str, Any]:
    """Tasks/s one worker pod (2 processes) drains from a backlog of no-op tasks, against the
    post's worker and the execution floor (``baseline/exec_floor.py``)."""
    sides = list(EXEC_SIDES)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    n = sizes.exec_tasks
    previous: Proc | None = None
    with Progress(rep, "execution (drains)", sizes.exec_rounds * len(sides)) as bar:
        done = 0
        for rnd in range(sizes.exec_rounds):
            order = sides[rnd % len(sides):] + sides[:rnd % len(sides)]
            for side in order:
                # each run has its own queue: nothing of one run can reach the next
                queue = f"bench-exec-{done}"
                if previous is not None:
                    stack.stop(previous, sig=signals.SIGKILL)
                stack.flush()
                # the floor drains real Taskplane messages (same shape and size)
                ids = fill(stack, "seed" if side == "seed" else "taskplane", n, queue)
                started = time.time()
                if side == "seed":
                    worker = stack.start_seed_worker(f"seed-{rnd}")
                elif side == "floor":
                    worker = stack.start_exec_floor(f"exec-floor-{rnd}", floor_list(stack, queue, n))
                else:
                    extra = {"WORKER_PREFETCH_MULTIPLIER": 2} if side == "taskplane_prefetch2" else {}
                    worker = stack.start_worker(f"exec-{side}-{rnd}",
                                                metrics=side != "taskplane_metrics_off",
                                                DEFAULT_QUEUE=queue, **extra)
                ready = time.time()
                dates = wait_results(stack, ids, timeout=60 + n / 20, proc=worker)
                finished = time.time()
                previous = worker
                first, last = min(dates), max(dates)
                runs[side].append({
                    "round": rnd,
                    "tasks": n,
                    "tasks_per_s": rounded((n - 1) / (last - first), 1) if last > first else None,
                    "wall_tasks_per_s": rounded(n / (finished - ready), 1),
                    "startup_s": rounded(ready - started, 2),
                })
                done += 1
                bar.update(done)
    if previous is not None:
        stack.stop(previous, sig=signals.SIGKILL)
    profiled = profile_execution(stack, sizes, rep)
    profiled_seed = profile_execution(stack, sizes, rep, side="seed")
    summary = {s: {"tasks_per_s": rounded(median(r["tasks_per_s"] for r in runs[s] if r["tasks_per_s"]), 1),
                   "runs": runs[s]} for s in sides}
    per_round = per_round_ratios(runs, "tasks_per_s", EXEC_RATIOS)
    ratios = median_ratios(per_round)
    return {
        "what": "one worker pod with 2 pool processes draining a backlog of no-op tasks: Taskplane "
                "(acks late, prefetch 1, results, task records, leases, metrics) vs. the post's worker "
                "(celery -A tasks.celery_app worker -l info --concurrency=2) vs. the execution floor "
                "(2 plain Python processes, each a loop of BLMOVE, decode, no-op, SET result + LREM "
                "ack: bench/baseline/exec_floor.py); rate = (n-1) / (last date_done - first date_done)",
        "tasks_per_run": n, "rounds": sizes.exec_rounds, "results": summary,
        "ratios": ratios, "per_round_ratios": per_round,
        "ratios_how": "each side's tasks/s divided by its baseline's in the same round; the median "
                      "of those per-round ratios",
        "targets": dict(EXEC_TARGETS), "met": met_targets(ratios, EXEC_TARGETS),
        "profile": profiled,
        "profile_baseline": profiled_seed,
    }


# -- where the time goes: one profiled round of figures 1 and 2 ---------------------------

API_ROLES = {"root": "gunicorn master", "children": "gunicorn workers"}
WORKER_ROLES = {"root": "worker main process (consumer)", "children": "pool children"}


def _profile_failed(exc: Exception) -> dict[str, Any]:
    return {"error": f"{type(exc).__name__}: {exc}"[:4000]}


#: What each profiled side is, in the report's words.
PROFILED = {
    "taskplane": "POST /v1/tasks as in the measured rounds (metrics and access log on)",
    "floor": "the floor's POST / (one LPUSH), as in the measured rounds",
}


def profile_enqueue(stack: Stack, server: Proc, request: dict[str, Any],
                    spread: Callable[[], list[int]], sizes: Sizes, rep: logging.Logger,
                    side: str = "taskplane") -> dict[str, Any]:
    """One more wrk run against ``side``'s server (Taskplane's API with metrics on, or the
    floor, whose profile shows what the machinery both share costs) under py-spy: not
    counted above."""
    rep.info(f"figure 1: one more {sizes.profile_enqueue_seconds:g}s run of {side} under "
             "py-spy (CPU breakdown; not counted)")
    try:
        stack.flush()
        client = stack.client()
        with cpu_profile.Sampler(server.pid, rate=sizes.profile_rate, workdir=stack.workdir,
                                 name="enqueue") as sampler, sampler.window(client) as window:
            result = run_wrk(seconds=sizes.profile_enqueue_seconds, connections=sizes.connections,
                             workdir=stack.workdir, spread=spread, **request)
        # every request stored, restarted wrk runs included
        accepted = stored(stack, side) or 0
        out = cpu_profile.breakdown(
            sampler, window, units=accepted, unit="request", table=cpu_profile.API, roles=API_ROLES,
            what=f"{PROFILED[side]}, wrk for {sizes.profile_enqueue_seconds:g} s, py-spy attached "
                 "to gunicorn's master and workers; requests = messages stored in the round")
        out["side"] = side
        out["wrk"] = {"requests": result.requests, "errors": result.errors, "attempts": result.attempts}
        return out
    except Exception as exc:  # the figure stands without its breakdown; run.py reports it
        return _profile_failed(exc)


def profile_execution(stack: Stack, sizes: Sizes, rep: logging.Logger, side: str = "taskplane"
                      ) -> dict[str, Any]:
    """One more drain by a Taskplane worker pod (metrics on), or by the post's worker (what
    Celery's own loop costs), under py-spy: not counted above.

    The backlog is filled first and moved aside (RENAME) until the worker is up and py-spy
    sampling, then moved back, so the whole drain is sampled.
    """
    n = sizes.profile_exec_tasks
    who = "a Taskplane worker pod" if side == "taskplane" else "the post's worker"
    rep.info(f"figure 2: one more drain of {n:,} tasks by {who} under py-spy "
             "(CPU breakdown; not counted)")
    worker: Proc | None = None
    try:
        queue = "bench-exec-profile"
        stack.flush()
        ids = fill(stack, side, n, queue)
        client = stack.client()
        lists = broker.queue_keys(queue if side == "taskplane" else SEED_QUEUE)
        held = [(key, f"bench:held:{key}") for key in lists if client.exists(key)]
        for key, away in held:
            client.rename(key, away)
        if side == "taskplane":
            worker = stack.start_worker("exec-profile", metrics=True, DEFAULT_QUEUE=queue)
        else:
            worker = stack.start_seed_worker("seed-profile")
        with cpu_profile.Sampler(worker.pid, rate=sizes.profile_rate, workdir=stack.workdir,
                                 name="execution") as sampler, sampler.window(client) as window:
            with client.pipeline(transaction=True) as pipe:
                for key, away in held:
                    pipe.rename(away, key)
                pipe.execute()
            wait_results(stack, ids, timeout=60 + n / 10, proc=worker)
        pod = ("a Taskplane worker pod (2 pool processes, metrics on)" if side == "taskplane"
               else "the post's worker (`celery worker -l info --concurrency=2`)")
        out = cpu_profile.breakdown(
            sampler, window, units=n, unit="task", table=cpu_profile.WORKER, roles=WORKER_ROLES,
            what=f"{pod} draining {n:,} no-op tasks, py-spy attached to the worker's main process "
                 "and its pool children")
        out["side"] = side
        return out
    except Exception as exc:
        return _profile_failed(exc)
    finally:
        if worker is not None:
            stack.stop(worker, sig=signals.SIGKILL)


# -- figure 3: end-to-end latency ---------------------------------------------------------

def _submit(client: Client) -> tuple[int, Any]:
    return client.request("POST", SUBMIT_PATH, NOOP_BODY)


def _finished_at(body: Any) -> float | None:
    if not isinstance(body, dict) or body.get("state") != "SUCCESS" or not body.get("finished_at"):
        return None
    return datetime.fromisoformat(body["finished_at"].replace("Z", "+00:00")).timestamp()


def _fetch_all(api: Proc, token: str, ids: list[str], threads: int = 8) -> list[Any]:
    """GET /v1/tasks/<id> for every id, through the API."""
    bodies: list[Any] = [None] * len(ids)
    lock = threading.Lock()
    cursor = iter(range(len(ids)))

    def run() -> None:
        client = Client(api.base, token)
        try:
            while True:
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                bodies[i] = client.request("GET", f"{SUBMIT_PATH}/{ids[i]}")[1]
        finally:
            client.close()

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return bodies


def _latency_summary(latencies_ms: list[float]) -> dict[str, Any]:
    return {"samples": len(latencies_ms), "p50_ms": rounded(percentile(latencies_ms, 50), 2),
            "p90_ms": rounded(percentile(latencies_ms, 90), 2),
            "p99_ms": rounded(percentile(latencies_ms, 99), 2),
            "max_ms": rounded(max(latencies_ms), 2) if latencies_ms else None}


def latency(stack: Stack, sizes: Sizes, rep: logging.Logger) -> dict[str, Any]:
    """Submit → SUCCESS visible through the API, at light load and at 80 % of capacity."""
    stack.flush()
    api = stack.start_api("api-latency")
    worker = stack.start_worker("latency")
    token = stack.token

    def client() -> Client:
        return Client(api.base, token)

    # capacity: tasks/s the pod completes while the API is saturated by this same client
    rep.info("figure 3: capacity probe (API saturated, one worker pod draining)")
    n_probe = int(sizes.probe_rate * sizes.capacity_seconds)
    probe = paced(n_probe, sizes.probe_rate, lambda c, i: (*_submit(c), None), client, threads=16,
                  duration=sizes.capacity_seconds)
    window_start, window_end = min(probe.sent), max(probe.answered)
    probe_ids = [b["id"] for s, b in zip(probe.status, probe.bodies, strict=True) if s == 202]
    dates = wait_results(stack, probe_ids, timeout=120 + len(probe_ids) / 50, proc=worker)
    lead_in = min(1.0, (window_end - window_start) / 4)
    in_window = [d for d in dates if window_start + lead_in <= d <= window_end]
    capacity = len(in_window) / max(1e-9, window_end - window_start - lead_in)
    accepted_rate = len(probe_ids) / max(1e-9, window_end - window_start)

    # light load: every task polled until SUCCESS is visible
    rep.info(f"figure 3: light load, {sizes.light_rate:g} tasks/s, each polled every 5 ms")
    stack.flush()

    def submit_and_poll(c: Client, i: int) -> tuple[int, Any, Any]:
        status, body = _submit(c)
        if status != 202:
            return status, body, None
        path = f"{SUBMIT_PATH}/{body['id']}"
        deadline = time.time() + 30
        while time.time() < deadline:
            _, seen = c.request("GET", path)
            if isinstance(seen, dict) and seen.get("state") == "SUCCESS":
                return status, seen, time.time()
            time.sleep(0.005)
        return status, body, None

    n_light = max(1, int(sizes.light_rate * sizes.light_seconds))
    light = paced(n_light, sizes.light_rate, submit_and_poll, client, threads=8)
    polled = [(seen - sent) * 1000 for sent, seen in zip(light.sent, light.extra, strict=True) if seen]
    stamped = []
    for sent, body in zip(light.sent, light.bodies, strict=True):
        done_at = _finished_at(body)
        if done_at is not None:
            stamped.append((done_at - sent) * 1000)

    # 80 % of capacity: submit only; read each task's finished_at through the API afterwards
    rate = max(1.0, 0.8 * capacity)
    rep.info(f"figure 3: 80% of capacity, {rate:.0f} tasks/s for {sizes.load_seconds:g}s")
    stack.flush()
    n_load = max(1, int(rate * sizes.load_seconds))
    with Progress(rep, "80% load submissions", n_load) as bar:
        load = paced(n_load, rate, lambda c, i: (*_submit(c), None), client, threads=16,
                     progress=bar.update)
    load_ids = [(i, b["id"]) for i, (s, b) in enumerate(zip(load.status, load.bodies, strict=True))
                if s == 202]
    wait_results(stack, [x for _, x in load_ids], timeout=120 + n_load / 50, proc=worker)
    bodies = _fetch_all(api, token, [x for _, x in load_ids])
    skip = n_load // 10  # warm-up: the first tenth
    load_lat = []
    for (i, _), body in zip(load_ids, bodies, strict=True):
        done_at = _finished_at(body)
        if done_at is not None and i >= skip:
            load_lat.append((done_at - load.sent[i]) * 1000)
    lag = [(s - d) * 1000 for s, d in zip(load.sent, load.intended, strict=True)]
    achieved = n_load / max(1e-9, max(load.sent) - min(load.sent)) if n_load > 1 else rate

    stack.stop(worker, sig=signals.SIGKILL)
    stack.stop(api)
    return {
        "what": "submit (POST /v1/tasks) until SUCCESS is visible through GET /v1/tasks/<id>, one API "
                "and one worker pod (2 processes), open-loop arrivals at a fixed rate",
        "capacity": {"tasks_per_s": rounded(capacity, 1), "accepted_per_s": rounded(accepted_rate, 1),
                     "how": "completions/s of the pod while the same client submits as fast as the "
                            "API accepts (both share this machine's cores)"},
        "light": {"rate_per_s": sizes.light_rate, "submitted": n_light,
                  "errors": sum(1 for s in light.status if s != 202),
                  "polled": _latency_summary(polled),
                  "finished_at": _latency_summary(stamped),
                  "how": "polled: GET every 5 ms until SUCCESS, time from just before the POST; "
                         "finished_at: the API's finished_at minus the POST's send time"},
        "at_80pct": {"rate_per_s": rounded(rate, 1), "achieved_rate_per_s": rounded(achieved, 1),
                     "submitted": n_load, "errors": sum(1 for s in load.status if s != 202),
                     "client_lag_p99_ms": rounded(percentile(lag, 99), 2),
                     **_latency_summary(load_lat),
                     "how": "finished_at from GET /v1/tasks/<id> minus the POST's send time; first "
                            "tenth discarded as warm-up"},
    }


# -- figure 5: memory ---------------------------------------------------------------------

def memory(stack: Stack, sizes: Sizes, rep: logging.Logger) -> dict[str, Any]:
    """Peak RSS of API workers and worker pool children over ``memory_tasks`` tasks."""
    stack.flush()
    api = stack.start_api("api-memory")
    worker_metrics = free_port()
    worker = stack.start_worker("memory", metrics_port=worker_metrics)
    api_pids = api.children()
    pool_pids = worker.children()
    total = sizes.memory_tasks
    checkpoints = [total // 2, total]
    samples: dict[str, Any] = {"api": {}, "worker": {}}
    series: list[dict[str, Any]] = []

    def rss(pids: list[int]) -> dict[str, dict[str, int]]:
        out = {}
        for pid in pids:
            value = rss_kib(pid)
            if value:
                out[str(pid)] = {"rss_kib": value[0], "hwm_kib": value[1]}
        return out

    def counts() -> tuple[int, int]:
        accepted = metric_total(scrape(api.base + "/metrics"), "taskplane_api_tasks_accepted_total")
        succeeded = metric_total(scrape(f"http://127.0.0.1:{worker_metrics}/metrics"),
                                 "taskplane_tasks_total", outcome="succeeded")
        return int(accepted), int(succeeded)

    rep.info(f"figure 5: {total:,} tasks through the API and one worker pod")
    body = json.dumps(NOOP_BODY)
    stop = threading.Event()
    wrk_error: list[BaseException] = []

    def drive() -> None:
        try:
            while not stop.is_set():
                accepted, _ = counts()
                if accepted >= total:
                    return
                seconds = max(1, min(5, round((total - accepted) / 2000)))
                run_wrk(api.base + SUBMIT_PATH, seconds=seconds, connections=sizes.connections,
                        method="POST", body=body, headers=auth_headers(stack), workdir=stack.workdir)
        except BaseException as exc:
            wrk_error.append(exc)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    deadline = time.monotonic() + 60 + total / 40
    started = time.time()
    with Progress(rep, "memory run (tasks done)", total) as bar:
        while True:
            if wrk_error:
                raise RuntimeError(f"wrk failed: {wrk_error[0]}")
            if not worker.alive():
                raise RuntimeError(f"worker died:\n{worker.log()[-3000:]}")
            accepted, succeeded = counts()
            series.append({"t": round(time.time() - started, 2), "accepted": accepted,
                           "succeeded": succeeded,
                           "api_rss_kib": sum(v["rss_kib"] for v in rss(api_pids).values()),
                           "pool_rss_kib": sum(v["rss_kib"] for v in rss(pool_pids).values())})
            for mark in checkpoints:
                if accepted >= mark and str(mark) not in samples["api"]:
                    samples["api"][str(mark)] = rss(api_pids)
                if succeeded >= mark and str(mark) not in samples["worker"]:
                    samples["worker"][str(mark)] = rss(pool_pids)
            bar.update(min(accepted, succeeded))
            if all(str(m) in samples["api"] and str(m) in samples["worker"] for m in checkpoints):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"memory run unfinished: accepted {accepted}, succeeded {succeeded}")
            time.sleep(0.5)
    stop.set()
    driver.join(30)
    elapsed = time.time() - started
    final_api, final_pool = rss(api_pids), rss(pool_pids)
    stack.stop(worker, sig=signals.SIGKILL)
    stack.stop(api)

    def growth(role: str, pids: list[int]) -> dict[str, Any]:
        half, full = samples[role][str(checkpoints[0])], samples[role][str(checkpoints[1])]
        per = {}
        for pid in map(str, pids):
            if pid in half and pid in full:
                a, b = half[pid]["rss_kib"], full[pid]["rss_kib"]
                per[pid] = {"rss_at_half_kib": a, "rss_at_end_kib": b, "growth_kib": b - a,
                            "growth_pct": rounded(100.0 * (b - a) / a, 2)}
        worst = max(per.values(), key=lambda v: v["growth_kib"], default=None)
        return {"per_process": per, "max_growth_kib": worst["growth_kib"] if worst else None,
                "max_growth_pct": worst["growth_pct"] if worst else None}

    api_growth, pool_growth = growth("api", api_pids), growth("worker", pool_pids)
    peak_api = max((v["hwm_kib"] for v in final_api.values()), default=0)
    peak_pool = max((v["hwm_kib"] for v in final_pool.values()), default=0)
    # "no growth": at most 2 % (or 1 MiB, whichever is larger) between the two checkpoints
    def flat(g: dict[str, Any], base: int) -> bool:
        return g["max_growth_kib"] is not None and g["max_growth_kib"] <= max(1024, 0.02 * base)

    return {
        "what": f"{total:,} no-op tasks submitted through POST /v1/tasks (wrk) and run by one worker "
                "pod; RSS of each gunicorn worker and each pool child at the halfway point and at the "
                "end (VmRSS), and the peak (VmHWM)",
        "tasks": total, "seconds": rounded(elapsed, 1), "checkpoints": checkpoints,
        "api_worker": {"processes": len(api_pids), "peak_rss_mib": rounded(peak_api / 1024, 1),
                       **api_growth, "flat": flat(api_growth, peak_api)},
        "worker_child": {"processes": len(pool_pids), "peak_rss_mib": rounded(peak_pool / 1024, 1),
                         **pool_growth, "flat": flat(pool_growth, peak_pool)},
        "criterion": "flat = growth between the checkpoints <= max(1 MiB, 2 % of peak RSS)",
        "samples": samples, "series": series[:: max(1, len(series) // 200)],
    }
