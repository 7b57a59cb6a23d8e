"""Every Taskplane setting, read once from the environment into one frozen object.

The API, the worker, the exporter, the chart and the README all read their
configuration from here: each field carries its environment variable, its
default and a sentence of documentation, and ``settings_table()`` renders the
README table from those fields (a test checks the README is current).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from .redis_conn import SentinelUrlError, describe, is_sentinel, parse_sentinel_url

#: Queue names become Redis keys and label values: keep them short and plain.
QUEUE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


#: gunicorn worker classes the API runs under (``api/gunicorn_conf.py``).
API_WORKER_CLASSES = ("gevent", "gthread")


class SettingsError(ValueError):
    """A setting is missing, malformed or inconsistent; the message names it."""


def _setting(env: str, default: Any, doc: str) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Configuration for every Taskplane process. Build it with ``Settings.from_env()``."""

    redis_url: str = _setting(
        "REDIS_URL", "redis://127.0.0.1:6379/0",
        "Redis used as Celery broker, result store and Taskplane's own records.",
    )
    result_backend_url: str = _setting(
        "RESULT_BACKEND_URL", "",
        "Empty, or the same Redis as `REDIS_URL`: results live with the task records, written "
        "in the same atomic step; any other Redis is refused at start "
        "(see \"One result store\").",
    )
    redis_password: str = _setting(
        "REDIS_PASSWORD", "",
        "Password of the Redis in `REDIS_URL` (and in `RESULT_BACKEND_URL`), kept out of the "
        "URL so it needs no escaping: any character works. Used for URLs that carry no "
        "password of their own.",
    )
    redis_tls_ca_file: str = _setting(
        "REDIS_TLS_CA_FILE", "",
        "CA bundle (PEM) that signed the Redis server's certificate, for `rediss://` URLs; "
        "empty means the system's CAs. The certificate and host name are always checked.",
    )
    redis_sentinel_master: str = _setting(
        "REDIS_SENTINEL_MASTER", "",
        "Name of the Sentinel master set, required when `REDIS_URL` is a Sentinel URL "
        "(`sentinel://[:password@]host:26379;sentinel://host2:26379/0`: every client then "
        "finds the master through the sentinels and follows a failover).",
    )
    redis_sentinel_password: str = _setting(
        "REDIS_SENTINEL_PASSWORD", "",
        "The sentinels' own password (`requirepass` of the sentinels), which may differ from "
        "the data password in the URL or `REDIS_PASSWORD`.",
    )
    redis_sentinel_tls: bool = _setting(
        "REDIS_SENTINEL_TLS", False,
        "Speak TLS to the sentinels (checked against `REDIS_TLS_CA_FILE`).",
    )
    redis_min_replicas_ack: str = _setting(
        "REDIS_MIN_REPLICAS_ACK", "auto",
        "Replicas that must confirm (`WAIT`) a transition that accepts work (submit, "
        "dead-letter retry, a schedule's fire) or ends a run before it is answered; unconfirmed "
        "in `REDIS_ACK_TIMEOUT`: `503 outcome_unknown`. `auto`: 1 behind Sentinel, 0 for a "
        "single node. Above the replicas there are, every accept is `outcome_unknown`.",
    )
    redis_ack_timeout: float = _setting(
        "REDIS_ACK_TIMEOUT", 1.0,
        "Seconds `WAIT` waits for `REDIS_MIN_REPLICAS_ACK` replicas; below `REDIS_TIMEOUT`.",
    )
    submit_ride_through: str = _setting(
        "SUBMIT_RIDE_THROUGH", "auto",
        "Seconds a submission keeps trying through a failover (its reply lost, its write "
        "refused by a demoted master, no master named yet, no replica confirming) before it "
        "answers 503. Safe: a submission tried again never writes its task twice. `auto`: 5 "
        "behind Sentinel, so a failover (or the chart's Redis handover) costs clients slow "
        "answers, not failed ones; 0 for a single node, whose outage lasts until it is back. "
        "Behind your own sentinels set it to their down-after plus about 5 s (the chart "
        "does).",
    )
    redis_startup_timeout: float = _setting(
        "REDIS_STARTUP_TIMEOUT", 60.0,
        "Seconds a worker or scheduler waits at start for the master behind Sentinel; then it "
        "exits non-zero with the reason (wrong master name, sentinel password, no sentinel).",
    )
    redis_master_tls: bool = _setting(
        "REDIS_MASTER_TLS", False,
        "Speak TLS to the master found through Sentinel, set apart from `REDIS_SENTINEL_TLS` "
        "(a single node says it with `rediss://`).",
    )
    api_tokens: str = _setting(
        "API_TOKENS", "",
        "Bearer tokens as `tenant:token,tenant:token`, or the path of a file with one "
        "`tenant:token` per line (a mounted Secret). A value without `:` is a path.",
    )
    api_admin_tokens: str = _setting(
        "API_ADMIN_TOKENS", "",
        "Operator tokens, as `name:token,name:token` or a file path like `API_TOKENS`. An "
        "operator reads, revokes and retries any tenant's tasks and lists every tenant's "
        "dead letters; tasks it submits belong to the tenant `name`. Names must not be "
        "tenant names.",
    )
    auth_disabled: bool = _setting(
        "AUTH_DISABLED", False,
        "Serve without authentication (every caller is tenant `local`). Local development only.",
    )
    api_host: str = _setting(
        "API_HOST", "127.0.0.1",
        "Address gunicorn binds. `::` is every address, IPv6 and IPv4 (the images and the chart "
        "use it; it falls back to `0.0.0.0` where the kernel has no IPv6).",
    )
    api_port: int = _setting("API_PORT", 8000, "Port gunicorn binds.")
    api_workers: int = _setting("API_WORKERS", 2, "gunicorn worker processes.")
    api_worker_class: str = _setting(
        "API_WORKER_CLASS", "gevent",
        "gunicorn worker class of the API: `gevent` (each request a greenlet, so thousands of "
        "`?wait`/event-stream followers per process) or `gthread` (a thread per request; "
        "followers then capped at `API_THREADS - 1` per process).",
    )
    api_worker_connections: int = _setting(
        "API_WORKER_CONNECTIONS", 4000,
        "Open connections one `gevent` API process serves at once (gunicorn "
        "`worker_connections`): requests in progress, and followers that cannot be detached "
        "(TLS, HTTP/2); detached followers are not counted here. Each is a file descriptor: "
        "at start the API raises its soft open-files limit to this plus `MAX_FOLLOWERS` "
        "plus `API_REDIS_CONNECTIONS` plus 256 per process, up to the hard limit "
        "(`ulimit -Hn`), and logs a warning naming this setting when the hard limit is lower.",
    )
    api_threads: int = _setting(
        "API_THREADS", 8,
        "Threads per gunicorn worker under `gthread` (unused under `gevent`).",
    )
    api_redis_connections: int = _setting(
        "API_REDIS_CONNECTIONS", 50,
        "Redis connections one API process opens at most (a blocking pool: a request waits "
        "up to `REDIS_TIMEOUT` for a free one). Under `gevent` many requests run at once; "
        "this keeps Redis's client count per pod fixed, however many follow.",
    )
    max_followers: int = _setting(
        "MAX_FOLLOWERS", 3000,
        "Followers (`?wait` requests and event streams) one API process holds at once; a pod "
        "holds `API_WORKERS` times this. Beyond it an event stream is a 429 and a `?wait` "
        "answers at once with `Taskplane-Wait: refused`. Keep it below "
        "`API_WORKER_CONNECTIONS`, so submissions always find a connection.",
    )
    max_followers_per_tenant: int = _setting(
        "MAX_FOLLOWERS_PER_TENANT", 1000,
        "Followers one tenant holds at once in one API process (so `API_WORKERS` times this "
        "per pod); beyond it that tenant's follow requests are 429 with `Retry-After`, and "
        "other tenants are unaffected.",
    )
    api_timeout: int = _setting("API_TIMEOUT", 30, "gunicorn worker timeout, seconds.")
    metrics_enabled: bool = _setting(
        "METRICS_ENABLED", True,
        "Record task and request metrics (off only to measure what they cost).",
    )
    metrics_host: str = _setting(
        "METRICS_HOST", "127.0.0.1",
        "Address the worker's and the exporter's HTTP servers bind; `::` as for `API_HOST`.",
    )
    exporter_port: int = _setting(
        "EXPORTER_PORT", 9808, "Port of the queue exporter's `/metrics` and `/healthz`.",
    )
    worker_metrics_port: int = _setting(
        "WORKER_METRICS_PORT", 9809,
        "Port of a worker's `/metrics`, `/livez` and `/readyz` (0: no server).",
    )
    max_body_bytes: int = _setting(
        "MAX_BODY_BYTES", 1_048_576, "Largest request body accepted; larger is 413.",
    )
    rate_limit: float = _setting(
        "RATE_LIMIT", 100.0,
        "Requests a second each tenant may make (token bucket shared by all API pods); 0: no limit.",
    )
    rate_limit_burst: int = _setting(
        "RATE_LIMIT_BURST", 200, "Requests a tenant may make at once before `RATE_LIMIT` applies.",
    )
    max_open_tasks_per_tenant: int = _setting(
        "MAX_OPEN_TASKS_PER_TENANT", 100_000,
        "Unfinished tasks a tenant may have; more submissions are 429. 0: no cap.",
    )
    max_schedules_per_tenant: int = _setting(
        "MAX_SCHEDULES_PER_TENANT", 100,
        "Schedules a tenant may store over the API; more creations are 429. 0: no cap.",
    )
    workflow_max_group: int = _setting(
        "WORKFLOW_MAX_GROUP", 10_000,
        "Members a workflow's group may have (`POST /v1/workflows`); more is 413. Each "
        "member counts against `MAX_OPEN_TASKS_PER_TENANT`; the body stays within "
        "`MAX_BODY_BYTES`.",
    )
    workflow_max_chain: int = _setting(
        "WORKFLOW_MAX_CHAIN", 100,
        "Steps a workflow's chain (or a group's `then` chain) may have; more is 413.",
    )
    webhook_allow_private: bool = _setting(
        "WEBHOOK_ALLOW_PRIVATE", False,
        "Let a webhook (`notify.url`) target loopback, link-local, private or metadata "
        "addresses; off, they are 422 at submission and refused again at delivery.",
    )
    webhook_allow_http: bool = _setting(
        "WEBHOOK_ALLOW_HTTP", False,
        "Let a webhook URL be `http://`; off, only `https://`. Other schemes are always 422.",
    )
    webhook_timeout: float = _setting(
        "WEBHOOK_TIMEOUT", 10.0,
        "Seconds a webhook delivery may take (connect and answer) before it counts as failed.",
    )
    webhook_retry_period: int = _setting(
        "WEBHOOK_RETRY_PERIOD", 86_400,
        "Seconds after the event during which failed deliveries are retried (exponential "
        "back-off with jitter, at most an hour apart); then the delivery is dead: listed and "
        "retryable.",
    )
    webhook_queue: str = _setting(
        "WEBHOOK_QUEUE", "webhooks",
        "Queue of webhook deliveries, made by workers, never on the API's request path.",
    )
    task_modules: tuple[str, ...] = _setting(
        "TASK_MODULES", (),
        "Comma-separated modules imported at start-up to register extra tasks "
        "(`myco.tasks,other.tasks`).",
    )
    builtin_tasks: bool = _setting(
        "BUILTIN_TASKS", True, "Register the built-in tasks (`long_running_task`, ...).",
    )
    default_queue: str = _setting("DEFAULT_QUEUE", "default", "Queue of tasks that name none.")
    queues: tuple[str, ...] = _setting(
        "QUEUES", (),
        "Extra queue names a client may choose, beyond the tasks' own default queues.",
    )
    worker_queues: tuple[str, ...] = _setting(
        "WORKER_QUEUES", (),
        "Queues a worker consumes; empty means every known queue.",
    )
    liveness_timeout: float = _setting(
        "LIVENESS_TIMEOUT", 60.0,
        "Seconds without a tick of the worker's consumer loop before its `/livez` fails.",
    )
    worker_concurrency: int = _setting(
        "WORKER_CONCURRENCY", 2, "Prefork pool processes per worker.",
    )
    worker_prefetch_multiplier: int = _setting(
        "WORKER_PREFETCH_MULTIPLIER", 1,
        "Messages each pool process reserves ahead. 1 keeps long tasks from hiding work "
        "from idle workers; a pool of short tasks drains faster at 2 (BENCHMARKS.md, figure 2).",
    )
    worker_soft_shutdown_timeout: float = _setting(
        "WORKER_SOFT_SHUTDOWN_TIMEOUT", 30.0,
        "Seconds a worker told to stop (SIGTERM) lets running tasks finish before it "
        "hands the rest back to the queue.",
    )
    visibility_timeout: int = _setting(
        "VISIBILITY_TIMEOUT", 60,
        "Seconds a message held by a worker may go without its lease being renewed before "
        "Redis hands it to another worker. Live workers renew every `LEASE_INTERVAL`, so "
        "long and delayed tasks are never redelivered while their worker lives; a dead "
        "worker's tasks come back within `VISIBILITY_TIMEOUT + UNACKED_RESTORE_INTERVAL`.",
    )
    lease_interval: float = _setting(
        "LEASE_INTERVAL", 10.0,
        "Seconds between a worker's lease renewals; at most a third of `VISIBILITY_TIMEOUT`.",
    )
    unacked_restore_interval: int = _setting(
        "UNACKED_RESTORE_INTERVAL", 5,
        "Seconds between sweeps that hand expired leases back to their queues.",
    )
    ack_batch_interval: float = _setting(
        "ACK_BATCH_INTERVAL", 0.05,
        "Seconds a worker may hold a finished task's ack to send it with others in one "
        "round trip (0: each ack at once). Sent before the worker stops; a worker killed "
        "outright loses at most this interval's acks, whose messages come back after "
        "`VISIBILITY_TIMEOUT`: a task that ended is then dropped, not run again; an earlier "
        "attempt of a task that asked for a retry may run again, as any task whose worker "
        "died (at least once).",
    )
    max_deliveries: int = _setting(
        "MAX_DELIVERIES", 5,
        "Runs of a task that may end with its process dying before it is dead-lettered as "
        "poisoned instead of run again.",
    )
    result_expires: int = _setting(
        "RESULT_EXPIRES", 86_400, "Seconds results and finished task records are kept.",
    )
    task_record_ttl: int = _setting(
        "TASK_RECORD_TTL", 7 * 86_400,
        "Seconds a submitted task's record lives while it has not finished.",
    )
    idempotency_ttl: int = _setting(
        "IDEMPOTENCY_TTL", 86_400, "Seconds an `Idempotency-Key` is remembered.",
    )
    dead_letter_ttl: int = _setting(
        "DEAD_LETTER_TTL", 14 * 86_400, "Seconds a dead letter is kept for inspection and retry.",
    )
    default_time_limit: int = _setting(
        "DEFAULT_TIME_LIMIT", 300, "Hard time limit, seconds, of tasks that declare none.",
    )
    default_soft_time_limit: int = _setting(
        "DEFAULT_SOFT_TIME_LIMIT", 240,
        "Soft time limit, seconds, of tasks that declare none.",
    )
    max_countdown: int = _setting(
        "MAX_COUNTDOWN", 86_400, "Largest `countdown` a client may ask for, seconds.",
    )
    redis_timeout: float = _setting(
        "REDIS_TIMEOUT", 2.0,
        "Seconds the API waits for Redis before answering 503.",
    )
    retry_after: int = _setting(
        "RETRY_AFTER", 5, "`Retry-After` seconds sent with a 503 when Redis is unreachable.",
    )
    redis_allow_no_password: bool = _setting(
        "REDIS_ALLOW_NO_PASSWORD", False,
        "Accept a Redis URL without a password on a non-loopback host (refused otherwise).",
    )
    max_wait: float = _setting(
        "MAX_WAIT", 60.0,
        "Longest `?wait=` a client may ask of `GET /v1/tasks/<id>`, seconds. Keep it below "
        "the idle timeout of every proxy in front of the API.",
    )
    max_event_stream: int = _setting(
        "MAX_EVENT_STREAM", 300,
        "Seconds an event stream (`GET /v1/tasks/<id>/events`) lasts at most; clients "
        "reconnect (Server-Sent Events do so by themselves).",
    )
    log_level: str = _setting("LOG_LEVEL", "INFO", "Log level of every process.")
    access_log: bool = _setting(
        "ACCESS_LOG", True,
        "Log one line per API request (method, route template, status, time), written to "
        "stderr in logging's format for about 3 µs a line (api/accesslog.py). The request "
        "metrics count every request either way.",
    )
    # --- periodic schedules (taskplane scheduler) ---
    scheduler_metrics_port: int = _setting(
        "SCHEDULER_METRICS_PORT", 9810,
        "Port of a scheduler replica's `/metrics` and `/healthz` (0: no server).",
    )
    scheduler_interval: float = _setting(
        "SCHEDULER_INTERVAL", 0.5,
        "Seconds between a scheduler replica's scans of the schedules (and lease renewals).",
    )
    scheduler_lease_ttl: float = _setting(
        "SCHEDULER_LEASE_TTL", 5.0,
        "Seconds the scheduler replica that scans holds its lease; the standby takes over "
        "when it lapses, so a SIGKILLed replica's ticks fire at most `SCHEDULER_LEASE_TTL + "
        "SCHEDULER_INTERVAL` late. 0: every replica scans (the Idempotency-Key of each tick "
        "keeps fires exactly once either way; the lease only saves work).",
    )
    scheduler_misfire_grace: float = _setting(
        "SCHEDULER_MISFIRE_GRACE", 30.0,
        "Seconds late a tick may fire as usual; later ticks (no scheduler ran) follow the "
        "schedule's `catch_up`. At least `SCHEDULER_LEASE_TTL + 2 * SCHEDULER_INTERVAL`, so "
        "a failover never turns a tick into a miss.",
    )
    scheduler_catch_up_window: int = _setting(
        "SCHEDULER_CATCH_UP_WINDOW", 3600,
        "Oldest tick, seconds back, that `catch_up: all` or `latest` still fires; below "
        "`IDEMPOTENCY_TTL`, so every fired tick's claim outlives it.",
    )
    reconcile_interval: str = _setting(
        "RECONCILE_INTERVAL", "auto",
        "Seconds between the scanning scheduler replica's passes over unfinished tasks "
        "older than this, looking for an accepted (PENDING) task whose message a Redis "
        "failover lost: one seen in no queue list and no unacked entry on two passes "
        "is enqueued again. 0: no pass (a task lost that way stays PENDING). `auto`: 10 "
        "behind Sentinel, where failovers happen, 0 for a single node (each pass reads the "
        "queues' lists: a cost only a failover justifies).",
    )
    reconcile_batch: int = _setting(
        "RECONCILE_BATCH", 1000,
        "Most unfinished tasks one reconcile pass checks (each check reads its queue's "
        "lists: the pass's cost grows with queue length).",
    )
    scheduler_max_catch_up: int = _setting(
        "SCHEDULER_MAX_CATCH_UP", 100,
        "Most missed ticks of one schedule that `catch_up: all` fires (the newest ones).",
    )

    # --- construction -----------------------------------------------------------------

    def __post_init__(self) -> None:
        # REDIS_PASSWORD goes into each URL that has none, escaped: one place, so the
        # broker, the result backend and every Redis client see the same credentials.
        for name in ("redis_url", "result_backend_url"):
            url = getattr(self, name)
            if url and self.redis_password:
                url = with_password(url, self.redis_password)
            if is_sentinel(url):
                url = _normal_sentinel_url(_env(name), url)
            object.__setattr__(self, name, url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every field from ``environ`` (default ``os.environ``); ``overrides`` win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            if f.name in overrides:
                values[f.name] = overrides[f.name]
            elif name in env and env[name] != "":
                values[f.name] = _parse(f, name, env[name])
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse combinations that would lose or duplicate work, with one clear message."""
        for q in (self.default_queue, self.webhook_queue, *self.queues, *self.worker_queues):
            if not QUEUE_NAME_RE.fullmatch(q):
                raise SettingsError(f"queue name {q!r} must match {QUEUE_NAME_RE.pattern}")
        if self.default_soft_time_limit >= self.default_time_limit:
            raise SettingsError("DEFAULT_SOFT_TIME_LIMIT must be below DEFAULT_TIME_LIMIT")
        if self.api_worker_class not in API_WORKER_CLASSES:
            raise SettingsError(f"API_WORKER_CLASS must be one of {', '.join(API_WORKER_CLASSES)}")
        if not 1 <= self.max_followers_per_tenant <= self.max_followers \
                < self.api_worker_connections:
            raise SettingsError(
                "MAX_FOLLOWERS_PER_TENANT must be 1 to MAX_FOLLOWERS, and MAX_FOLLOWERS below "
                "API_WORKER_CONNECTIONS, or followers could take every connection from submits")
        for name in ("api_workers", "api_threads", "api_redis_connections", "worker_concurrency",
                     "worker_prefetch_multiplier", "visibility_timeout", "result_expires",
                     "idempotency_ttl", "max_body_bytes", "workflow_max_group",
                     "workflow_max_chain"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{_env(name)} must be at least 1")
        if self.lease_interval <= 0 or self.lease_interval * 3 > self.visibility_timeout:
            raise SettingsError(
                "LEASE_INTERVAL must be above 0 and at most a third of VISIBILITY_TIMEOUT, "
                "or one late renewal lets a live worker's task be delivered twice")
        if self.max_schedules_per_tenant < 0:
            raise SettingsError("MAX_SCHEDULES_PER_TENANT must be 0 (no cap) or more")
        if not 0 <= self.ack_batch_interval <= self.lease_interval:
            raise SettingsError("ACK_BATCH_INTERVAL must be 0 to LEASE_INTERVAL")
        if self.unacked_restore_interval < 1 or self.max_deliveries < 1:
            raise SettingsError("UNACKED_RESTORE_INTERVAL and MAX_DELIVERIES must be at least 1")
        interval = self.reconcile_interval.strip().lower()
        if (interval != "auto" and not _non_negative_number(interval)) or \
                self.reconcile_batch < 1:
            raise SettingsError("RECONCILE_INTERVAL must be auto or at least 0, and "
                                "RECONCILE_BATCH at least 1")
        if self.scheduler_interval <= 0 or self.scheduler_lease_ttl < 0 or \
                self.scheduler_max_catch_up < 1 or self.scheduler_misfire_grace < \
                self.scheduler_lease_ttl + 2 * self.scheduler_interval:
            raise SettingsError(
                "SCHEDULER_INTERVAL must be above 0, SCHEDULER_MAX_CATCH_UP at least 1, and "
                "SCHEDULER_MISFIRE_GRACE at least SCHEDULER_LEASE_TTL + 2 * SCHEDULER_INTERVAL, "
                "or a failover would count ticks as missed")
        if not self.scheduler_misfire_grace <= self.scheduler_catch_up_window \
                < self.idempotency_ttl:
            raise SettingsError(
                "SCHEDULER_CATCH_UP_WINDOW must be at least SCHEDULER_MISFIRE_GRACE and below "
                "IDEMPOTENCY_TTL, or a caught-up tick's claim could expire and fire it twice")
        for name, url in (("REDIS_URL", self.redis_url),
                          ("RESULT_BACKEND_URL", self.result_backend_url)):
            if url:
                _check_redis_url(name, url, self.redis_allow_no_password)
        ack = self.redis_min_replicas_ack.strip().lower()
        if ack != "auto" and not (ack.isdigit() and int(ack) <= 16):
            raise SettingsError("REDIS_MIN_REPLICAS_ACK must be auto or a number of replicas "
                                "(0-16)")
        if not 0 < self.redis_ack_timeout or (
                self.replicas_ack and self.redis_ack_timeout >= self.redis_timeout):
            raise SettingsError("REDIS_ACK_TIMEOUT must be above 0 and below REDIS_TIMEOUT, or "
                                "the socket times out before WAIT answers")
        if self.result_backend_url and self.result_backend_url != self.redis_url:
            raise SettingsError(
                "RESULT_BACKEND_URL names another Redis than REDIS_URL; results must live in "
                "REDIS_URL's Redis, with the task records, so that each state change writes "
                "record and result in one atomic step. Leave RESULT_BACKEND_URL empty (see "
                "\"One result store\" in README.md)")

        ride = self.submit_ride_through.strip().lower()
        if ride != "auto" and not _non_negative_number(ride):
            raise SettingsError("SUBMIT_RIDE_THROUGH must be auto or a number of seconds "
                                "(0 or more)")
        if is_sentinel(self.redis_url) and not self.redis_sentinel_master:
            raise SettingsError(
                "REDIS_URL is a Sentinel URL: set REDIS_SENTINEL_MASTER to the name of the "
                "master set the sentinels watch")

    # --- derived values ---------------------------------------------------------------

    @property
    def replicas_ack(self) -> int:
        """``REDIS_MIN_REPLICAS_ACK`` as a number: ``auto`` is 1 behind Sentinel (a failover
        must not erase what was answered), 0 for a single node (no replica to wait for)."""
        return int(self._auto(self.redis_min_replicas_ack, behind_sentinel=1, single=0))

    @property
    def submit_ride_through_seconds(self) -> float:
        """``SUBMIT_RIDE_THROUGH`` in seconds: ``auto`` is 5 behind Sentinel (a failover
        takes the sentinels' down-after and a second or two), 0 for a single node."""
        return self._auto(self.submit_ride_through, behind_sentinel=5, single=0)

    @property
    def run_lease(self) -> float:
        """Seconds a running task's lease holds off a second start of it (0: no lease).

        Only with acknowledged writes (``replicas_ack`` > 0: HA), where a failover can hand
        a message to a second worker while its first worker still runs it
        (``lifecycle/run_leases.py``). A live worker renews it every ``LEASE_INTERVAL``; it
        lapses one interval before the broker's own lease (``VISIBILITY_TIMEOUT``), so a
        dead worker's message, handed back by the sweep, is never held back by it."""
        if self.replicas_ack <= 0:
            return 0.0
        return float(self.visibility_timeout) - self.lease_interval

    @property
    def reconcile_seconds(self) -> float:
        """``RECONCILE_INTERVAL`` in seconds: ``auto`` is 10 behind Sentinel, 0 (no pass)
        for a single node."""
        return self._auto(self.reconcile_interval, behind_sentinel=10, single=0)

    def _auto(self, value: str, *, behind_sentinel: float, single: float) -> float:
        """A setting that is ``auto`` or a number (checked in ``__post_init__``): ``auto``
        is ``behind_sentinel`` for a Sentinel ``REDIS_URL``, ``single`` for one node."""
        value = value.strip().lower()
        if value == "auto":
            return float(behind_sentinel if is_sentinel(self.redis_url) else single)
        return float(value)

    def tokens(self) -> dict[str, str]:
        """Map each tenant bearer token to its tenant, reading the token file if one is named."""
        return _token_map("API_TOKENS", self.api_tokens)

    def admin_tokens(self) -> dict[str, str]:
        """Map each operator token to the operator's name (``API_ADMIN_TOKENS``)."""
        operators = _token_map("API_ADMIN_TOKENS", self.api_admin_tokens)
        tenants = self.tokens()
        if set(operators) & set(tenants):
            raise SettingsError("a token is in both API_TOKENS and API_ADMIN_TOKENS")
        if set(operators.values()) & set(tenants.values()):
            raise SettingsError("API_ADMIN_TOKENS names must not be tenant names in API_TOKENS")
        return operators

    def redacted(self) -> dict[str, Any]:
        """Settings safe to log: passwords and tokens replaced."""
        out = dataclasses.asdict(self)
        out["api_tokens"] = "<set>" if self.api_tokens else ""
        out["redis_password"] = "<set>" if self.redis_password else ""
        out["api_admin_tokens"] = "<set>" if self.api_admin_tokens else ""
        out["redis_sentinel_password"] = "<set>" if self.redis_sentinel_password else ""
        for key in ("redis_url", "result_backend_url"):
            if is_sentinel(out[key]):
                out[key] = describe(out[key])
                continue
            parts = urlsplit(out[key])
            if parts.password:
                out[key] = out[key].replace(parts.password, "***", 1)
        return out


def _token_map(env: str, value: str) -> dict[str, str]:
    """``name:token`` entries (comma-separated, or one a line in the file ``value`` names
    when it has no ``:``) → {token: name}."""
    raw = value.strip()
    if not raw:
        return {}
    if ":" not in raw:
        try:
            with open(raw, encoding="utf-8") as fh:
                entries = [ln.strip() for ln in fh if ln.strip() and not ln.startswith("#")]
        except OSError as exc:
            raise SettingsError(f"{env} file {raw!r} cannot be read: {exc}") from exc
    else:
        entries = [e.strip() for e in raw.split(",") if e.strip()]
    tokens: dict[str, str] = {}
    for entry in entries:
        name, sep, token = entry.partition(":")
        if not sep or not name or len(token) < 16:
            raise SettingsError(
                f"{env} entries must be name:token with a token of 16+ characters")
        tokens[token] = name
    return tokens


def _env(field_name: str) -> str:
    return next(str(f.metadata["env"]) for f in dataclasses.fields(Settings)
                if f.name == field_name)


def _parse(f: dataclasses.Field[Any], name: str, raw: str) -> Any:
    default = f.default
    try:
        if isinstance(default, bool):
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(p.strip() for p in raw.split(",") if p.strip())
    except ValueError:
        kind = type(default).__name__
        raise SettingsError(f"{name}={raw!r} is not a valid {kind}") from None
    return raw.strip()


def _normal_sentinel_url(name: str, url: str) -> str:
    try:
        return parse_sentinel_url(url).url()
    except SentinelUrlError as exc:
        raise SettingsError(f"{name}: {exc}") from None


def _check_redis_url(name: str, url: str, allow_no_password: bool) -> None:
    if is_sentinel(url):
        target = parse_sentinel_url(url)
        remote = [h for h, _ in target.sentinels if not is_loopback(h)]
        if remote and not target.password and not allow_no_password:
            raise SettingsError(
                f"{name} names sentinels at {remote[0]}, which is not loopback, and gives the "
                "master no password; set REDIS_PASSWORD (or sentinel://:PASSWORD@host...) or "
                "REDIS_ALLOW_NO_PASSWORD=true")
        return
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise SettingsError(f"{name} must be a redis://, rediss://, unix:// or sentinel:// URL")
    if parts.scheme == "unix":
        return
    if not parts.hostname:
        raise SettingsError(f"{name} has no host")
    if not parts.password and not is_loopback(parts.hostname) and not allow_no_password:
        raise SettingsError(
            f"{name} points at {parts.hostname}, which is not loopback, and has no password; "
            "set one (redis://:PASSWORD@host:6379/0) or REDIS_ALLOW_NO_PASSWORD=true")


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` (percent-escaped) as its password, unless it has one
    (for a Sentinel URL: the master's password, on every sentinel entry)."""
    if is_sentinel(url):
        try:
            target = parse_sentinel_url(url)
        except SentinelUrlError:
            return url  # validate() names the problem
        if target.password:
            return url
        return dataclasses.replace(target, password=password).url()
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or parts.password:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    netloc = f"{userinfo.rstrip(':')}:{quote(password, safe='')}@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc))


def listen_host(host: str) -> str:
    """The address a server binds for ``host``: ``::`` (every IPv6 address and, dual-stack,
    every IPv4 one) becomes ``0.0.0.0`` where the kernel has no IPv6."""
    if host.strip("[]") != "::":
        return host
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError:
        return "0.0.0.0"  # noqa: S104 - the caller asked for every address
    return "::"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def settings_table() -> str:
    """The README's settings table, rendered from the fields above."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for f in dataclasses.fields(Settings):
        default = f.default
        if isinstance(default, tuple):
            default = ",".join(default)
        elif isinstance(default, bool):
            default = "true" if default else "false"
        shown = f"`{default}`" if default != "" else "(empty)"
        rows.append(f"| `{f.metadata['env']}` | {shown} | {f.metadata['doc']} |")
    return "\n".join(rows)


def _non_negative_number(text: str) -> bool:
    try:
        return float(text) >= 0
    except ValueError:
        return False
