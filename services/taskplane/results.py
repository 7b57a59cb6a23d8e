"""Celery's Redis result backend, wired to the task lifecycle: the one object through which
every Celery result is written.

Celery stores a task's states through its backend (``store_result``). Here every such
write is a lifecycle step (``lifecycle/transitions.py``) instead of Celery's
GET-then-SETEX, which is two round trips and not atomic: a late RETRY could land on a
SUCCESS that raced it, and a REVOKED on a task that had just ended. So:

* a final state (SUCCESS, FAILURE, REVOKED) is never overwritten, by anyone;
* SUCCESS and REVOKED end the task in the same step as the result is stored (record,
  tenant slot);
* FAILURE ends the task with its dead letter in the same step (``mark_as_failure`` →
  ``fail``);
* RETRY stores the retry count on the record with the result.

One result store. Results always live in the Redis of ``REDIS_URL``, beside the records,
so that each of these is one script. There was a mode with results in a Redis of their
own (``RESULT_BACKEND_URL`` naming another server); there, no script can reach both
servers, and the claims above did not hold: a failure wrote FAILURE to the results Redis
first and then called ``fail`` on the records' Redis, so a crash or a lost connection
between the two left a FAILURE result beside a task that, by its record, was still
running, with no dead letter and its tenant slot taken; STARTED and the retry of a dead
letter were two writes as well. That mode is gone: ``RESULT_BACKEND_URL`` naming another
Redis is refused at start (``settings.py``). The record's Redis is the one to make highly
available.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol, cast

from celery import states
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

from . import broker, lifecycle
from .lifecycle import ResultWrite, TaskRecord
from .redis_conn import MasterConnection, MasterSSLConnection, is_sentinel

if TYPE_CHECKING:
    from celery import Celery

    from .runtime import Runtime


class ResultBackend(RedisBackend):
    """``RedisBackend`` whose state writes are lifecycle steps.

    The app's :class:`~taskplane.runtime.Runtime` holds what it needs: the lifecycle, and
    ``on_dead_letter`` (the worker counts dead letters; the backend itself knows no
    metrics). An app without a runtime (not built by ``create_celery``) gets Celery's
    plain behaviour.
    """

    def mark_as_failure(self, task_id: str, exc: Exception, traceback: Any = None,
                        request: Any = None, store_result: bool = True,
                        call_errbacks: bool = True, state: str = states.FAILURE) -> None:
        """FAILURE ends the task with its dead letter in one lifecycle step (``fail``).

        Celery calls this wherever a task fails for good: in the pool process (an
        exception), and in the worker's main process (a hard time limit, a lost process
        that is not handed back). Chords, chains and errbacks then go on as Celery's.
        """
        celery = _celery(self)
        runtime: Runtime | None = getattr(celery.app, "runtime", None)
        if not store_result or runtime is None or request is None or state != states.FAILURE:
            super().mark_as_failure(task_id, exc, traceback, request, store_result,
                                    call_errbacks, state)
            return
        life = runtime.lifecycle
        write = self.encode_state(task_id, self.encode_result(exc, state), state, traceback,
                                  request)
        task = celery.app.tasks.get(getattr(request, "task", None) or "")
        letter = lifecycle.dead_letter(task_id, getattr(task, "name", "") or "", exc,
                                       getattr(request, "args", None),
                                       getattr(request, "kwargs", None),
                                       tuple(getattr(task, "autoretry_for", ()) or ()))
        outcome = life.fail(task_id, letter, tenant=lifecycle.tenant_hint(request), result=write)
        if outcome.outcome == "done" and runtime.on_dead_letter is not None:
            info = getattr(request, "delivery_info", None) or {}
            runtime.on_dead_letter(letter["task"], task_id, str(info.get("routing_key") or ""))
        super().mark_as_failure(task_id, exc, traceback, request, store_result=False,
                                call_errbacks=call_errbacks, state=state)

    def _store_result(self, task_id: str, result: Any, state: str, traceback: Any = None,
                      request: Any = None, **kwargs: Any) -> Any:
        runtime: Runtime | None = getattr(_celery(self).app, "runtime", None)
        if runtime is None:  # Celery's own (KeyValueStoreBackend's): a GET, then a SETEX
            return super()._store_result(  # type: ignore[misc]  # absent from celery-types
                task_id, result, state, traceback, request, **kwargs)
        life = runtime.lifecycle
        write = self.encode_state(task_id, result, state, traceback, request)
        if state == states.SUCCESS:
            life.finish(task_id, state, tenant=lifecycle.tenant_hint(request), result=write,
                        run_ended=_ends_run(task_id, state, request))
        elif state == states.REVOKED:  # a revoke the worker received (celery control revoke)
            life.finish(task_id, state, tenant=lifecycle.tenant_hint(request), result=write,
                        adopt=stock_record(task_id, request, getattr(request, "task", None),
                                           runtime.settings.default_queue))
        elif state == states.RETRY:
            retries = (getattr(request, "retries", None) or 0) + 1
            life.write(task_id, write, ["state", lifecycle.RETRY, "retries", str(retries)])
        elif state == states.FAILURE:  # not through mark_as_failure: no dead letter to file
            life.finish(task_id, state, tenant=lifecycle.tenant_hint(request), result=write)
        else:  # STARTED stored apart, PROGRESS
            life.write(task_id, write)
        return result

    def encode_state(self, task_id: str, result: Any, state: str, traceback: Any = None,
                     request: Any = None) -> ResultWrite:
        """The key, stored value and TTL (0: none) of a task's state, as Celery lays them out."""
        celery = _celery(self)
        meta = celery._get_result_meta(result=result, state=state, traceback=traceback,
                                       request=request)
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if len(value) > celery._MAX_STR_VALUE_SIZE:
            raise BackendStoreError(  # type: ignore[call-arg]  # its stub lacks Celery's kwargs
                "value too large for Redis backend", state=state, task_id=task_id)
        ttl = celery.failure_expires if state == states.FAILURE else celery.expires
        return bytes_to_str(self.get_key_for_task(task_id)), value, int(ttl or 0)

    @staticmethod
    def started_result(request: Any, pid: int) -> dict[str, Any]:
        """The result Celery's ``task_track_started`` stores with STARTED."""
        return {"pid": pid, "hostname": request.hostname}

    def started_state(self, request: Any, pid: int) -> ResultWrite:
        """``encode_state`` of the STARTED state of the run ``request`` begins."""
        return self.encode_state(request.id, self.started_result(request, pid),
                                 states.STARTED, request=request)


class _CeleryParts(Protocol):
    """What Celery's ``RedisBackend`` has that celery-types (0.26) does not declare, as
    Celery 5.7 defines it: the app it serves (``Backend.__init__``), how long a result
    lives (``expires``; ``failure_expires`` for FAILURE: ``RedisBackend.__init__``), the
    largest string Redis stores (a class attribute), and the meta a result is stored as
    (``Backend._get_result_meta``)."""

    app: Celery
    expires: float | None
    failure_expires: float | None
    _MAX_STR_VALUE_SIZE: int

    def _get_result_meta(self, result: Any, state: str, traceback: Any, request: Any,
                         format_date: bool = ..., encode: bool = ...) -> dict[str, Any]: ...


def _celery(backend: RedisBackend) -> _CeleryParts:
    """``backend`` with the parts of :class:`_CeleryParts` visible to the type checker
    (nothing happens at run time). Every attribute this module reads past Celery's stubs
    goes through here; the two calls the stubs do not know (``super()._store_result``,
    ``BackendStoreError``'s keywords) carry their own ``type: ignore``."""
    return cast(_CeleryParts, backend)


def stock_record(task_id: str, request: Any, task: str | None, default_queue: str
                 ) -> TaskRecord | None:
    """The record to adopt for a task sent around the API (its message names no tenant:
    a stock Celery client, ``celery call``), should it have none: under
    :data:`~taskplane.lifecycle.SYSTEM_TENANT`, with the queue and priority it was
    delivered with. ``request`` None (a revoke broadcast for a task this worker never
    received) knows neither its name nor its queue. None for a Taskplane message."""
    if request is not None:
        headers = getattr(request, "headers", None) or {}
        if getattr(request, lifecycle.TENANT_HEADER, None) or headers.get(lifecycle.TENANT_HEADER):
            return None
    info = (getattr(request, "delivery_info", None) or {}) if request is not None else {}
    queue = str(info.get("routing_key") or (default_queue if request is not None else ""))
    return TaskRecord(id=task_id, tenant=lifecycle.SYSTEM_TENANT, task=task or "", queue=queue,
                      priority=broker.api_priority(info.get("priority")),
                      submitted_at=time.time())


#: Set on a run's request once its end was counted with its SUCCESS (see ``_ends_run``).
RUN_ENDED = "taskplane_run_ended"


def _ends_run(task_id: str, state: str, request: Any) -> bool:
    """Whether this SUCCESS write also counts the run as ended: it does when stored by the
    run itself (the request is the running task's), saving the worker's ``task_postrun``
    handler a round trip of its own; the request is marked so that handler knows."""
    if state != states.SUCCESS or request is None or getattr(request, "id", None) != task_id \
            or getattr(request, RUN_ENDED, False):
        return False
    try:
        setattr(request, RUN_ENDED, True)
    except AttributeError:  # a request that takes no attributes: postrun counts the run
        return False
    return True


class SentinelResultBackend(ResultBackend, SentinelBackend):
    """The same lifecycle writes, on the master Celery's ``SentinelBackend`` finds through
    the sentinels (a ``sentinel://`` ``REDIS_URL``): its pool's
    connections rediscover the master after a failover (also on ``NOREPLICAS``:
    ``redis_conn.MasterConnection``)."""

    connection_class_ssl = MasterSSLConnection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connparams.setdefault(  # type: ignore[attr-defined]  # RedisBackend's, untyped
            "connection_class", MasterConnection)


def backend_url(redis_url: str) -> str:
    """``result_backend`` naming this module's backend for ``redis_url`` (Celery's
    ``class+url`` form): the Sentinel one for a ``sentinel://`` URL."""
    cls = SentinelResultBackend if is_sentinel(redis_url) else ResultBackend
    return f"{__name__}:{cls.__name__}+{redis_url}"
