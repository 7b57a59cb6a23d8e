"""Request metrics: count and time every request by route template, never by raw path.

Submissions also count as accepted (by task name) or rejected (by error code), so a
dashboard shows what clients get wrong without reading logs.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, Response, g, request

from ..metrics import Metrics

#: One line per request: method, route template, status, time. Never the raw path, the
#: query string or a header, so task data and tokens stay out of the logs.
access = logging.getLogger("taskplane.access")

#: Endpoints that submit tasks: their refusals are counted as rejections.
SUBMITTING = frozenset({"v1.submit_task", "v1.retry_dead_letter", "seed.start_task"})


def accepted(task_name: str) -> None:
    g.accepted_task = task_name


def init_app(app: Flask, metrics: Metrics, access_log: bool = True) -> None:
    """Count and time every request on the app's ``metrics``; ``access_log``: also log a
    line for each (ACCESS_LOG)."""
    m = metrics.instruments
    # The labelled series of each (route, method, status), looked up once: routes are
    # templates and methods a fixed set, so these stay small.
    counted: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    @app.before_request
    def _start() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def _record(response: Response) -> Response:
        started = g.get("request_started")
        elapsed = time.perf_counter() - started if started is not None else None
        rule = request.url_rule
        route = rule.rule if rule is not None else "<unmatched>"
        method = request.method if request.method in _METHODS else "OTHER"
        status = response.status_code
        series = counted.get((route, method, status))
        if series is None:
            series = counted[(route, method, status)] = (
                m.http_requests.labels(route, method, str(status)),
                m.http_duration.labels(route, method))
        series[0].inc()
        if elapsed is not None:
            series[1].observe(elapsed)
        if access_log:
            access.info("%s %s %d %.1fms", method, route, status, 1000 * (elapsed or 0.0))
        if request.endpoint in SUBMITTING:
            if response.status_code < 300 and g.get("accepted_task"):
                m.tasks_accepted.labels(g.accepted_task).inc()
            elif response.status_code >= 400:
                m.tasks_rejected.labels(g.get("error_code", "error")).inc()
        return response


_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
