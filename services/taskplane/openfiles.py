"""Enough file descriptors for thousands of followers: the API's open-files limit.

Under ``gevent`` a process holds up to ``API_WORKER_CONNECTIONS`` client sockets that
gunicorn serves, plus up to ``MAX_FOLLOWERS`` sockets of detached followers (``api/
detached.py``: connections gunicorn has handed over, no longer in its count), plus its
Redis pool (``API_REDIS_CONNECTIONS``), its one pub/sub connection, and a few dozen files
of its own (the listening socket, the event
loop, pipes, logs, prometheus-client's multiprocess files). A container's default soft
limit is often 1,024, so a process would fail to ``accept`` (``EMFILE``) long before its
``MAX_FOLLOWERS``.

``RLIMIT_NOFILE`` counts per process, and gunicorn's workers inherit the master's, so
:func:`raise_for` runs once in the master (``gunicorn_conf``) and raises the soft limit
to what one process needs, up to the hard limit (which an unprivileged process cannot
raise: the container runtime or ``ulimit -Hn`` sets it). It never lowers a limit. The
pod as a whole needs ``API_WORKERS`` times the per-process figure from the node's
system-wide table, which is far larger on any ordinary node.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

from .settings import Settings

log = logging.getLogger("taskplane.openfiles")

#: Descriptors a process uses besides client sockets and its Redis pool: the listening
#: socket(s), the event loop, gunicorn's pipes and heartbeat file, stdio and log files,
#: prometheus-client's multiprocess files, the pub/sub connection, and room to spare.
MARGIN = 256


def needed(settings: Settings) -> int:
    """Open files one API process needs at its busiest."""
    if settings.api_worker_class == "gevent":  # gunicorn's connections and detached followers
        clients = settings.api_worker_connections + settings.max_followers
    else:  # gthread: gunicorn holds up to worker_connections too (keep-alive), threads serve
        clients = max(settings.api_worker_connections, settings.api_threads)
    return clients + settings.api_redis_connections + MARGIN


@dataclass(frozen=True)
class Outcome:
    """What :func:`raise_for` found and did (soft limits before and after)."""

    needed: int
    soft_before: int
    soft: int
    hard: int

    @property
    def short(self) -> bool:
        return self.soft < self.needed


def plan(need: int, soft: int, hard: int) -> int:
    """The soft limit to set: ``need`` within ``[soft, hard]`` (never lower than now)."""
    if hard != resource.RLIM_INFINITY:
        need = min(need, hard)
    return max(soft, need) if soft != resource.RLIM_INFINITY else soft


def raise_for(settings: Settings) -> Outcome:
    """Raise this process's soft ``RLIMIT_NOFILE`` to what ``settings`` need (up to the hard
    limit); log a warning naming the setting when the hard limit is too low for it."""
    need = needed(settings)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = plan(need, soft, hard)
    if target != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # a sandbox refusing it: keep what we have
            log.warning("could not raise the open-files limit from %d to %d: %s",
                        soft, target, exc)
            target = soft
    outcome = Outcome(need, soft, target, hard)
    if outcome.short:
        log.warning(
            "open-files limit %d (hard %d) is below the %d one API process needs for "
            "%s=%d (plus %s=%d under gevent) plus %s=%d and %d spare: clients beyond it "
            "are refused at accept (EMFILE). Raise the container's nofile limit (ulimit -Hn) "
            "or lower %s.",
            target, hard, need, "API_WORKER_CONNECTIONS", settings.api_worker_connections,
            "MAX_FOLLOWERS", settings.max_followers, "API_REDIS_CONNECTIONS",
            settings.api_redis_connections, MARGIN, "API_WORKER_CONNECTIONS")
    elif target != soft:
        log.info("open-files limit raised from %d to %d (hard %d)", soft, target, hard)
    return outcome
