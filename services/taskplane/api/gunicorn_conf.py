"""gunicorn settings for the API, from Taskplane's settings.

``gevent`` workers (``API_WORKER_CLASS``): every request is a greenlet, and a request that
waits (``?wait``, an event stream) hands its connection to the process's hub and ends
(``api/detached.py``), so a follower costs a few kilobytes, no thread and no greenlet, and
one process holds thousands of followers (``api/followers.py``) while it keeps answering
submissions. The enqueue path spends its time waiting on Redis, which gevent's patched
sockets turn into switches to other requests; Flask, redis-py (with hiredis) and
prometheus-client's multiprocess files run unchanged. Why gevent and not a separate
follower process: measured in BENCHMARKS.md (followers section) and README. ``gthread``
stays available (a thread per request; followers capped at ``API_THREADS - 1``).
Use it with ``gunicorn -c python:taskplane.api.gunicorn_conf``.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from gunicorn import util

from taskplane import logs, metrics, openfiles
from taskplane.settings import Settings, listen_host

_settings = Settings.from_env()
# The app's own loggers (the access log, errors): set up here, in the master, and
# inherited by every forked worker; create_app touches no logger.
logs.configure(_settings.log_level)
# Every gunicorn worker of this pod writes its metrics under one directory, emptied now,
# before any worker is forked (and before prometheus_client is imported anywhere).
metrics.prepare_multiprocess_dir("api")
# Thousands of followers need as many sockets: the soft open-files limit goes up to what
# one process needs (API_WORKER_CONNECTIONS and its Redis pool), up to the hard limit;
# the workers inherit it. A warning names the setting when the hard limit is too low.
openfiles.raise_for(_settings)

_host = listen_host(_settings.api_host)
bind = [f"[{_host}]:{_settings.api_port}" if ":" in _host else f"{_host}:{_settings.api_port}"]
workers = _settings.api_workers
worker_class = _settings.api_worker_class
if worker_class == "gevent":
    # gunicorn's master imports ssl before its gevent workers patch it after the fork: gevent
    # warns about modules holding names imported from ssl before then. None of those is used
    # here (redis-py looks ``ssl.create_default_context`` up when it connects, so a rediss://
    # connection gets gevent's SSL); the warning would only be noise in every worker's log.
    warnings.filterwarnings("ignore", message="Monkey-patching ssl after ssl has already")
threads = _settings.api_threads  # gthread only
worker_connections = _settings.api_worker_connections  # gevent only
timeout = _settings.api_timeout
graceful_timeout = 20
keepalive = 5
# Bounded request size at the HTTP layer too (the app enforces MAX_BODY_BYTES itself).
limit_request_line = 8190
limit_request_fields = 100
# Each gunicorn on a machine would otherwise share ~/.gunicorn/gunicorn.ctl.
control_socket_disable = True
# The app writes the access log itself (taskplane.api.observe), by route template: a
# raw path carries task arguments (/start_task/<data>) and client-chosen bytes.
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()
wsgi_app = "taskplane.api:create_app()"


def post_worker_init(worker: Any) -> None:
    """Followers end as soon as this worker is told to stop (SIGTERM), not after
    ``graceful_timeout``: their clients reconnect to a pod that stays. Under gevent, two
    per-request costs nothing needs go first (``api/greenlets.py``), and followers are
    detached from their requests' greenlets (``api/detached.py``)."""
    from taskplane.api import followers, greenlets  # after the fork, like the app itself

    detached = False
    if worker_class == "gevent":
        greenlets.tune()  # two per-request costs of gevent that nothing needs
        detached = followers.detach_followers(worker.wsgi)
    followers.end_on_shutdown(worker.wsgi, lambda: bool(worker.alive))
    # its signal handlers are in place by now: a SIGTERM before them is lost (gunicorn)
    followers.log.info("worker %d ready; followers %s", worker.pid,
                       "detached" if detached else "held by their requests")


def worker_exit(server: Any, worker: Any) -> None:
    """In the stopping worker, once it serves no more requests: detached followers are no
    connections of gunicorn's, so they are answered (a wait's ``interrupted``) and closed
    here, before the process exits."""
    from taskplane.api import followers

    if getattr(worker, "wsgi", None) is not None:
        followers.finish(worker.wsgi)


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead gunicorn worker's live gauges from the merged exposition."""
    metrics.mark_process_dead(worker.pid)


def on_starting(server: Any) -> None:
    """Requests gunicorn's parser refuses (malformed framing, NUL in a header, an over-long
    request line) get the API's JSON error envelope too, not gunicorn's HTML page. Set in
    the master before any worker forks; gunicorn has no other hook for this answer."""
    util.write_error = write_json_error


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``util.write_error``, answering in the error envelope."""
    from taskplane.api import errors  # not at import: the metrics directory comes first

    body = json.dumps(errors.envelope(errors.HTTP_CODES.get(status_int, "bad_request"),
                                      (mesg or reason)[:300])).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)
