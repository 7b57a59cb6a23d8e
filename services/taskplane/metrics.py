"""Every Prometheus metric Taskplane exports: names, types, labels, buckets, gauge modes.

This module is the one source of metric names. The alert and recording rules, the
Grafana dashboard, the Helm chart's autoscaler queries and the README's reference
table are all checked against ``CATALOGUE`` by tests.

Three kinds of process export metrics, each on its own endpoint:

* the API (gunicorn, several worker processes) serves ``/metrics`` on its own port;
* each worker pod (Celery main process plus prefork children) serves ``/metrics``
  on ``WORKER_METRICS_PORT``;
* the exporter (one replica) serves the queue metrics on ``EXPORTER_PORT``, read
  from Redis at scrape time, so per-queue series are not repeated by every pod;
* each scheduler replica (one process) serves the schedule metrics on
  ``SCHEDULER_METRICS_PORT``; only the replica that scans records them.

API and worker record from several processes, so they use prometheus-client's
multiprocess mode: each process writes its own files under
``PROMETHEUS_MULTIPROC_DIR``, which is emptied when the pod starts, and the files
are merged at scrape time. ``PROMETHEUS_MULTIPROC_DIR`` must be set before
``prometheus_client`` is first imported: :func:`prepare_multiprocess_dir` does it in
the process that owns the directory, at its start (never on import).

Labels are bounded by construction: ``task`` is a registered task name (unknown
names are rejected before anything is counted), ``queue`` a configured queue,
``route`` a URL rule template (never a raw path or an id), ``reason`` an error code.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # imported for real only once the multiprocess directory is set
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Task wait, run and end-to-end times span a few milliseconds (a no-op task on an
#: idle worker) to the longest hard time limits (tens of minutes). Roughly x2-x2.5 steps
#: keep quantile error below ~25 % across that whole range with 18 buckets.
TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                120.0, 300.0, 600.0, 1800.0, 3600.0)
#: The API answers from one or two Redis round trips: a millisecond to a few hundred;
#: anything near the top buckets is an outage (REDIS_TIMEOUT is 2 s by default).
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: A gone client is looked for every 0.25 s (``api/gone.py``): detection takes up to that,
#: plus the scheduling delay of a busy process; beyond a second is the target missed.
GONE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
#: Why a follow request was refused, as counted in ``taskplane_api_followers_refused_total``.
FOLLOWER_REFUSALS = ("tenant", "process", "unavailable")

#: How a task ended, as counted in ``taskplane_tasks_total``.
#: ``redelivered`` counts runs of a message that came back (its worker or process died);
#: ``poisoned`` counts tasks quarantined after MAX_DELIVERIES such deaths; ``postponed``
#: (behind Sentinel) deliveries of a task another live worker runs, sent again for later.
OUTCOMES = ("succeeded", "failed", "retried", "revoked", "dead_lettered", "rejected",
            "redelivered", "poisoned", "postponed")


#: How a gauge's per-process values merge at scrape time (prometheus-client's modes).
GaugeMode = Literal["all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum",
                    "mostrecent", "livemostrecent"]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    type: str  # counter, gauge, histogram
    labels: tuple[str, ...]
    help: str
    use: str  # what an operator or autoscaler uses it for
    endpoint: str  # api, worker, exporter, scheduler
    multiprocess_mode: GaugeMode | Literal[""] = ""  # gauges only


def _m(name: str, type_: str, labels: tuple[str, ...], help_: str, use: str, endpoint: str,
       mode: GaugeMode | Literal[""] = "") -> MetricSpec:
    return MetricSpec(name, type_, labels, help_, use, endpoint, mode)


QUEUE_WAITING = _m(
    "taskplane_queue_waiting", "gauge", ("queue",),
    "Messages waiting in the queue, all priority lists together.",
    "Backlog; with reserved, the autoscaling signal.", "exporter")
QUEUE_RESERVED = _m(
    "taskplane_queue_reserved", "gauge", ("queue",),
    "Messages delivered to a worker and not yet acknowledged (running or prefetched).",
    "Work in hand; backlog = waiting + reserved.", "exporter")
QUEUE_SCHEDULED = _m(
    "taskplane_queue_scheduled", "gauge", ("queue",),
    "Messages held by a worker until their countdown/ETA; not backlog.",
    "Delayed work; excluded from autoscaling.", "exporter")
QUEUE_OLDEST_AGE = _m(
    "taskplane_queue_oldest_waiting_age_seconds", "gauge", ("queue",),
    "Age of the oldest waiting message, from its enqueue time; 0 when none waits.",
    "Latency signal for autoscaling and the stale-queue alert.", "exporter")
REDIS_UP = _m(
    "taskplane_redis_up", "gauge", (),
    "1 when the exporter's last read of Redis succeeded, else 0.",
    "Redis-down alert.", "exporter")
EXPORTER_SCRAPE_SECONDS = _m(
    "taskplane_exporter_scrape_duration_seconds", "gauge", (),
    "Seconds the exporter took to read the queues from Redis.",
    "Exporter health.", "exporter")

TASK_QUEUE_WAIT = _m(
    "taskplane_task_queue_wait_seconds", "histogram", ("task", "queue"),
    "Seconds from enqueue (or countdown/ETA) to start of a run.",
    "p95 queue wait: are there enough workers?", "worker")
TASK_RUNTIME = _m(
    "taskplane_task_runtime_seconds", "histogram", ("task", "queue"),
    "Seconds a run took, start to end, whatever its outcome.",
    "Task latency; capacity planning.", "worker")
TASK_END_TO_END = _m(
    "taskplane_task_end_to_end_seconds", "histogram", ("task", "queue"),
    "Seconds from enqueue to the end of the run that finished the task.",
    "What clients experience.", "worker")
TASKS = _m(
    "taskplane_tasks_total", "counter", ("task", "queue", "outcome"),
    f"Task runs by how they ended: {', '.join(OUTCOMES)}.",
    "Throughput and failure ratio.", "worker")
WORKER_RUNNING = _m(
    "taskplane_worker_tasks_running", "gauge", (),
    "Tasks running in this worker pod now.",
    "Busy workers; no-consumer alert.", "worker", "livesum")
WORKER_UP = _m(
    "taskplane_worker_up", "gauge", ("worker",),
    "1 while the worker's main process runs and consumes.",
    "Workers per queue; no-consumer alert.", "worker", "livemax")

LEASE_RENEWALS = _m(
    "taskplane_lease_renewals_total", "counter", (),
    "Leases of held messages (running, reserved, waiting for their ETA) renewed.",
    "A worker that stops renewing is dead or stuck.", "worker")
LEASE_OLDEST_AGE = _m(
    "taskplane_lease_oldest_age_seconds", "gauge", (),
    "Seconds since the stalest lease among all unacknowledged messages was renewed.",
    "Near VISIBILITY_TIMEOUT: a worker died or is stuck; its tasks come back soon.", "exporter")

HTTP_REQUESTS = _m(
    "taskplane_http_requests_total", "counter", ("route", "method", "status"),
    "HTTP requests by route template, method and status.",
    "API traffic and error ratio.", "api")
HTTP_DURATION = _m(
    "taskplane_http_request_duration_seconds", "histogram", ("route", "method"),
    "Seconds the API took to answer, by route template.",
    "API latency.", "api")
TASKS_ACCEPTED = _m(
    "taskplane_api_tasks_accepted_total", "counter", ("task",),
    "Tasks accepted (202) by task name.",
    "Submission rate per task type.", "api")
TASKS_REJECTED = _m(
    "taskplane_api_tasks_rejected_total", "counter", ("reason",),
    "Submissions refused, by error code (validation_failed, unknown_task, ...).",
    "Client errors and broker outages at the door.", "api")

# Followers (``?wait`` and event streams, ``api/followers.py``). ``kind`` is ``wait`` or
# ``events``; ``reason`` one of ``FOLLOWER_REFUSALS``: both fixed sets.
FOLLOWERS_OPEN = _m(
    "taskplane_api_followers_open", "gauge", ("kind",),
    "Followers open now: `?wait` requests held and event streams, summed over API processes.",
    "Follower load against MAX_FOLLOWERS x API_WORKERS per pod.", "api", "livesum")
FOLLOWERS_REFUSED = _m(
    "taskplane_api_followers_refused_total", "counter", ("reason",),
    "Follow requests refused: `tenant` (over MAX_FOLLOWERS_PER_TENANT), `process` (the "
    "process holds MAX_FOLLOWERS), `unavailable` (Redis away).",
    "A tenant at its share, a pod at its ceiling, or an outage.", "api")
FOLLOWERS_DROPPED = _m(
    "taskplane_api_followers_dropped_total", "counter", (),
    "Detached followers dropped because their client read nothing for 10 s while answers "
    "waited (or let 256 KiB pile up).",
    "Clients (or proxies) that stop reading streams; their slots are freed.", "api")
FOLLOWER_GONE_SECONDS = _m(
    "taskplane_api_follower_gone_detect_seconds", "histogram", (),
    "Seconds from a follower's socket last seen open to noticing its client had left (an "
    "upper bound of the detection delay).",
    "Slots of departed clients are freed within about a second.", "api")

# The scheduler (``taskplane scheduler``, one process per pod, no multiprocess files).
# ``schedule`` is ``tenant/name``: bounded by the schedules that exist (declared in code or
# created over the API), and its series go when a replica loses the scan lease.
SCHEDULE_FIRES = _m(
    "taskplane_schedule_fires_total", "counter", ("schedule",),
    "Ticks fired: tasks a schedule's fire created (a replayed tick is not counted).",
    "Periodic work is happening; exactly once per tick.", "scheduler")
SCHEDULE_SKIPPED = _m(
    "taskplane_schedule_skipped_total", "counter", ("schedule",),
    "Ticks skipped because the previous run was unfinished (overlap: forbid).",
    "Runs longer than the period.", "scheduler")
SCHEDULE_MISSED = _m(
    "taskplane_schedule_missed_total", "counter", ("schedule",),
    "Ticks not fired because no scheduler ran in time (catch_up none, or beyond its bound).",
    "Scheduler outages; the schedule alert.", "scheduler")
SCHEDULE_FIRE_LAG = _m(
    "taskplane_schedule_fire_lag_seconds", "gauge", ("schedule",),
    "Seconds between a tick and its fire, for the latest fire (actual - scheduled).",
    "Late fires (failover, overload); the schedule alert.", "scheduler", "livemax")
SCHEDULE_NEXT_FIRE = _m(
    "taskplane_schedule_next_fire_timestamp_seconds", "gauge", ("schedule",),
    "Unix time of the schedule's next tick, as the scanning replica computed it.",
    "What fires next; a value in the past means nothing scans.", "scheduler", "livemax")
SCHEDULER_LEADING = _m(
    "taskplane_scheduler_leading", "gauge", (),
    "1 while this scheduler replica holds the scan lease (or scans without one), else 0.",
    "Exactly one replica should scan; none is the scheduler-down alert.", "scheduler",
    "livemax")

# Webhook deliveries (workers). ``outcome`` is one of WEBHOOK_OUTCOMES: bounded.
#: How one delivery attempt went: 2xx, failed and to be retried, failed for good.
WEBHOOK_OUTCOMES = ("delivered", "retried", "dead")
#: A delivery takes a loopback millisecond to WEBHOOK_TIMEOUT (10 s by default).
WEBHOOK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WEBHOOK_DELIVERIES = _m(
    "taskplane_webhook_deliveries_total", "counter", ("outcome",),
    "Webhook delivery attempts by outcome (delivered, retried, dead).",
    "Receivers failing; the webhook alert.", "worker")
WEBHOOK_LATENCY = _m(
    "taskplane_webhook_delivery_seconds", "histogram", (),
    "Seconds a webhook delivery attempt took (connect to answer, or to the timeout).",
    "Slow receivers.", "worker")

# Workflows (the exporter reads the lifecycle's totals from Redis at scrape time: the
# endings happen inside Lua scripts, which no process observes). ``state`` is "created"
# or a final state: bounded.
WORKFLOWS = _m(
    "taskplane_workflows_total", "counter", ("state",),
    "Workflows created, and ended by state (SUCCESS, FAILURE, REVOKED). Running ones: "
    "created minus the ended. A callback is pushed in the same Redis step as its last "
    "member's ending, so there is no callback lag to measure.",
    "Workflow throughput and failures.", "exporter")
# Redis high availability (``redis_conn``, ``sentinel_watch``). The acknowledgement counter
# is recorded by every process that accepts or ends work (API, worker, scheduler); the
# Sentinel view is read by the exporter at scrape time, from the sentinels and the master.
# ``address`` and ``replica`` are host:port of the master set's own nodes: as many series
# as nodes (three in the chart), and a failover moves ``address`` to another of them.
ACK_OUTCOMES = ("confirmed", "timeout")
REPLICA_ACKS = _m(
    "taskplane_redis_replica_acks_total", "counter", ("outcome",),
    "Acknowledged transitions (submit, retry, fire, a run's end) by whether "
    "REDIS_MIN_REPLICAS_ACK replicas confirmed them (WAIT) in time: confirmed, timeout.",
    "Timeouts are 503 outcome_unknown at the API: replicas lagging or gone.", "api")
REDIS_MASTER = _m(
    "taskplane_redis_master", "gauge", ("address",),
    "1 for the master the sentinels name now (host:port); absent without Sentinel.",
    "Which node is the master; a change is a failover.", "exporter")
REDIS_FAILOVERS = _m(
    "taskplane_redis_failovers_total", "counter", (),
    "Master changes the exporter has seen (scrape to scrape) since it started.",
    "The failover-happened alert.", "exporter")
REDIS_REPLICAS = _m(
    "taskplane_redis_replicas_connected", "gauge", (),
    "Replicas connected to the master (its INFO replication).",
    "Below REDIS_MIN_REPLICAS_ACK: every accept is outcome_unknown.", "exporter")
REDIS_REPLICA_LAG = _m(
    "taskplane_redis_replica_lag_bytes", "gauge", ("replica",),
    "Bytes of the master's replication stream a replica has not acknowledged yet.",
    "The replica-lag alert: a lagging replica makes WAIT time out.", "exporter")
REDIS_SENTINELS_UP = _m(
    "taskplane_redis_sentinels_up", "gauge", (),
    "Sentinels that answered the exporter's last scrape.",
    "Fewer than the quorum: no failover possible.", "exporter")
REDIS_SENTINEL_QUORUM = _m(
    "taskplane_redis_sentinel_quorum", "gauge", (),
    "1 when the sentinels can authorise a failover (SENTINEL CKQUORUM), else 0.",
    "The no-quorum alert.", "exporter")
REDIS_MASTER_UNREACHABLE = _m(
    "taskplane_redis_master_unreachable_seconds", "gauge", (),
    "Seconds since the exporter last reached a master through the sentinels; 0 while it does.",
    "Time without a master.", "exporter")

#: Series that exist only where Redis runs behind Sentinel with acknowledged acceptance:
#: a single Redis has no master set to describe and no replica to confirm a write. The
#: dashboard's Redis HA row reads them (tests/ha checks it against a master set; the
#: standalone stack's dashboard test leaves them out).
SENTINEL_ONLY: tuple[MetricSpec, ...] = (
    REPLICA_ACKS, REDIS_MASTER, REDIS_FAILOVERS, REDIS_REPLICAS, REDIS_REPLICA_LAG,
    REDIS_SENTINELS_UP, REDIS_SENTINEL_QUORUM, REDIS_MASTER_UNREACHABLE)

CATALOGUE_SPECS: tuple[MetricSpec, ...] = (
    QUEUE_WAITING, QUEUE_RESERVED, QUEUE_SCHEDULED, QUEUE_OLDEST_AGE, REDIS_UP,
    EXPORTER_SCRAPE_SECONDS, LEASE_OLDEST_AGE, TASK_QUEUE_WAIT, TASK_RUNTIME, TASK_END_TO_END,
    TASKS, WORKER_RUNNING, WORKER_UP, LEASE_RENEWALS, HTTP_REQUESTS, HTTP_DURATION,
    TASKS_ACCEPTED, TASKS_REJECTED, FOLLOWERS_OPEN, FOLLOWERS_REFUSED, FOLLOWERS_DROPPED,
    FOLLOWER_GONE_SECONDS,
    SCHEDULE_FIRES, SCHEDULE_SKIPPED, SCHEDULE_MISSED,
    SCHEDULE_FIRE_LAG, SCHEDULE_NEXT_FIRE, SCHEDULER_LEADING, WEBHOOK_DELIVERIES,
    WEBHOOK_LATENCY, WORKFLOWS, REPLICA_ACKS, REDIS_MASTER,
    REDIS_FAILOVERS, REDIS_REPLICAS, REDIS_REPLICA_LAG, REDIS_SENTINELS_UP,
    REDIS_SENTINEL_QUORUM, REDIS_MASTER_UNREACHABLE,
)
#: Metric name → type, as the chart, rules and dashboard tests read it.
CATALOGUE: dict[str, str] = {m.name: m.type for m in CATALOGUE_SPECS}


def exposed_names() -> set[str]:
    """Every series name Prometheus will see (histograms and counters expand)."""
    names: set[str] = set()
    for m in CATALOGUE_SPECS:
        if m.type == "histogram":
            names |= {f"{m.name}_bucket", f"{m.name}_sum", f"{m.name}_count"}
        elif m.type == "counter":
            names.add(m.name)
            names.add(m.name.removesuffix("_total") + "_created")
        else:
            names.add(m.name)
    return names


def reference_table() -> str:
    """The README's metrics reference, rendered from the catalogue."""
    rows = ["| Metric | Type | Labels | Endpoint | Meaning | Used for |", "|---|---|---|---|---|---|"]
    for m in CATALOGUE_SPECS:
        labels = ", ".join(f"`{label}`" for label in m.labels) or "—"
        rows.append(f"| `{m.name}` | {m.type} | {labels} | {m.endpoint} | {m.help} | {m.use} |")
    return "\n".join(rows)


#: The process that prepared this process's directory, and the directory: preparing twice
#: in one process (``taskplane worker`` and Celery's ``celeryd_init``) is a no-op.
_prepared: dict[int, Path] = {}


def prepare_multiprocess_dir(role: str, clean: bool = True) -> Path:
    """Point prometheus-client at this pod's directory and empty it; call before importing it.

    Only the process that owns the directory calls this, at its start (a worker's main
    process, gunicorn's master), never on import: a ``celery -A taskplane.worker inspect``
    run inside a live worker's pod must not empty that worker's files.

    A value already in the environment wins (the chart mounts an emptyDir there);
    otherwise a fresh temporary directory is made for this process tree and removed when
    this process exits (not when one of its forked children does).
    """
    pid = os.getpid()
    if pid in _prepared:
        return _prepared[pid]
    current = os.environ.get(MULTIPROC_ENV)
    if current:
        path = Path(current)
        if clean and path.exists():
            for child in path.iterdir():
                if child.is_file() and child.suffix == ".db":
                    child.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix=f"taskplane-{role}-metrics-"))
        os.environ[MULTIPROC_ENV] = str(path)
        atexit.register(_remove_temporary, path, pid)
    path.mkdir(parents=True, exist_ok=True)
    _prepared[pid] = path
    return path


def _remove_temporary(path: Path, owner: int) -> None:
    """atexit: forked children (pool processes, gunicorn workers) inherit the handler;
    only the process that made the directory removes it."""
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Instruments:
    """The live prometheus-client objects of one app (or the stand-ins when switched off)."""

    task_queue_wait: Any
    task_runtime: Any
    task_end_to_end: Any
    tasks: Any
    worker_running: Any
    worker_up: Any
    lease_renewals: Any
    http_requests: Any
    http_duration: Any
    tasks_accepted: Any
    tasks_rejected: Any
    followers_open: Any
    followers_refused: Any
    followers_dropped: Any
    follower_gone: Any
    schedule_fires: Any
    schedule_skipped: Any
    schedule_missed: Any
    schedule_fire_lag: Any
    schedule_next_fire: Any
    scheduler_leading: Any
    webhook_deliveries: Any
    webhook_latency: Any
    replica_acks: Any


class _Null:
    """Stands in for every instrument when metrics are switched off."""

    def labels(self, *_: Any) -> _Null:
        return self

    def inc(self, *_: Any) -> None: ...
    def dec(self, *_: Any) -> None: ...
    def set(self, *_: Any) -> None: ...
    def observe(self, *_: Any) -> None: ...
    def clear(self) -> None: ...
    def remove(self, *_: Any) -> None: ...


class Metrics:
    """One app's instruments, on a ``CollectorRegistry`` of its own.

    The app factory makes one per app (``Runtime.metrics``), so two apps in a process
    never share a series and a test reads a value in-process with
    ``metrics.registry.get_sample_value(name, labels)``. Built on first use, not when the
    app is: ``prometheus_client`` picks its value class (in-memory, or a file per process
    under ``PROMETHEUS_MULTIPROC_DIR``) when first imported, which must come after the
    process that owns the directory prepared it (``prepare_multiprocess_dir``), and
    ``celery -A taskplane.worker worker`` builds the app before the worker starts.

    In multiprocess mode this registry still holds this process's own values (its files):
    the pod's exposition merges every process's files per scrape (:meth:`scrape`). Two
    apps in one multiprocess process would share those files; one app per process is
    the multiprocess deployment (a gunicorn worker, a pool process).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        self._built: tuple[CollectorRegistry, Instruments] | None = None

    @property
    def registry(self) -> CollectorRegistry:
        return self._build()[0]

    @property
    def instruments(self) -> Instruments:
        return self._build()[1]

    def _build(self) -> tuple[CollectorRegistry, Instruments]:
        built = self._built
        if built is None:
            with self._lock:  # two request threads must not register the names twice
                if self._built is None:
                    self._built = _instruments(self.enabled)
                built = self._built
        return built

    def count_replica_ack(self, confirmed: bool) -> None:
        """One acknowledged transition, confirmed by replicas in time or not
        (``lifecycle.store``)."""
        self.instruments.replica_acks.labels(
            ACK_OUTCOMES[0] if confirmed else ACK_OUTCOMES[1]).inc()

    def scrape(self) -> tuple[bytes, str]:
        """The exposition of every process of this pod (multiprocess mode), or of this app.

        Live gauges of processes that died without saying so (a SIGKILLed pool child)
        are dropped first, so ``taskplane_worker_tasks_running`` does not count ghosts.
        """
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        directory = os.environ.get(MULTIPROC_ENV)
        if not directory:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        return generate_latest(_merged(directory)), CONTENT_TYPE_LATEST


def _instruments(enabled: bool) -> tuple[CollectorRegistry, Instruments]:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    registry = CollectorRegistry()
    if not enabled:
        null = _Null()
        return registry, Instruments(*(null,) * len(fields(Instruments)))

    def histogram(spec: MetricSpec, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(spec.name, spec.help, spec.labels, buckets=buckets, registry=registry)

    def counter(spec: MetricSpec) -> Counter:
        return Counter(spec.name, spec.help, spec.labels, registry=registry)

    def gauge(spec: MetricSpec) -> Gauge:
        return Gauge(spec.name, spec.help, spec.labels, registry=registry,
                     multiprocess_mode=spec.multiprocess_mode or "all")

    return registry, Instruments(
        task_queue_wait=histogram(TASK_QUEUE_WAIT, TASK_BUCKETS),
        task_runtime=histogram(TASK_RUNTIME, TASK_BUCKETS),
        task_end_to_end=histogram(TASK_END_TO_END, TASK_BUCKETS),
        tasks=counter(TASKS),
        worker_running=gauge(WORKER_RUNNING),
        worker_up=gauge(WORKER_UP),
        lease_renewals=counter(LEASE_RENEWALS),
        http_requests=counter(HTTP_REQUESTS),
        http_duration=histogram(HTTP_DURATION, HTTP_BUCKETS),
        tasks_accepted=counter(TASKS_ACCEPTED),
        tasks_rejected=counter(TASKS_REJECTED),
        followers_open=gauge(FOLLOWERS_OPEN),
        followers_refused=counter(FOLLOWERS_REFUSED),
        followers_dropped=counter(FOLLOWERS_DROPPED),
        follower_gone=histogram(FOLLOWER_GONE_SECONDS, GONE_BUCKETS),
        schedule_fires=counter(SCHEDULE_FIRES),
        schedule_skipped=counter(SCHEDULE_SKIPPED),
        schedule_missed=counter(SCHEDULE_MISSED),
        schedule_fire_lag=gauge(SCHEDULE_FIRE_LAG),
        schedule_next_fire=gauge(SCHEDULE_NEXT_FIRE),
        scheduler_leading=gauge(SCHEDULER_LEADING),
        webhook_deliveries=counter(WEBHOOK_DELIVERIES),
        webhook_latency=histogram(WEBHOOK_LATENCY, WEBHOOK_BUCKETS),
        replica_acks=counter(REPLICA_ACKS),
    )


_LIVE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _merged(directory: str) -> CollectorRegistry:
    """A registry for one scrape that merges every process's files under ``directory``
    (prometheus-client's multiprocess recipe: a fresh registry per request)."""
    from prometheus_client import CollectorRegistry, multiprocess

    for entry in os.listdir(directory):
        match = _LIVE_FILE.match(entry)
        if match and not _pid_alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), directory)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, directory)
    return registry


def mark_process_dead(pid: int) -> None:
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)
