"""Celery's Redis result backend, wired to the task lifecycle.

Celery stores a task's states through its backend (``store_result``). Here every such
write is a lifecycle step (``lifecycle/transitions.py``) instead of Celery's GET-then-SETEX, which
is two round trips and not atomic: a late RETRY could land on a SUCCESS that raced it,
and a REVOKED on a task that had just ended. So:

* a final state (SUCCESS, FAILURE, REVOKED) is never overwritten, by anyone;
* SUCCESS and REVOKED end the task in the same step as the result is stored (record,
  tenant slot), when results live in the records' Redis;
* FAILURE ends the task with its dead letter (``mark_as_failure`` → ``fail``);
* RETRY stores the retry count on the record with the result.

When ``RESULT_BACKEND_URL`` names another Redis, results are written there by one
guarded script, and the record moves in its own lifecycle step (``worker.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

from . import lifecycle
from .lifecycle import ResultWrite
from .redis_conn import MasterConnection, MasterSSLConnection, is_sentinel


class ResultBackend(RedisBackend):
    """``RedisBackend`` whose state writes are lifecycle steps."""

    #: Called with (task name, task id, queue) when a failure filed a dead letter (the
    #: worker counts it); the backend itself knows no metrics.
    on_dead_letter: Callable[[str, str, str], None] | None = None

    def mark_as_failure(self, task_id: str, exc: BaseException, traceback: Any = None,
                        request: Any = None, store_result: bool = True,
                        call_errbacks: bool = True, state: str = states.FAILURE) -> None:
        """FAILURE ends the task with its dead letter in one lifecycle step (``fail``).

        Celery calls this wherever a task fails for good: in the pool process (an
        exception), and in the worker's main process (a hard time limit, a lost process
        that is not handed back). Chords, chains and errbacks then go on as Celery's.
        """
        runtime = getattr(self.app, "runtime", None)
        if not store_result or runtime is None or request is None or state != states.FAILURE:
            super().mark_as_failure(task_id, exc, traceback, request, store_result,
                                    call_errbacks, state)
            return
        life = runtime.lifecycle
        write = self.encode_state(task_id, self.encode_result(exc, state), state, traceback,
                                  request)
        task = self.app.tasks.get(getattr(request, "task", None) or "")
        letter = lifecycle.dead_letter(task_id, getattr(task, "name", "") or "", exc,
                                       getattr(request, "args", None),
                                       getattr(request, "kwargs", None),
                                       tuple(getattr(task, "autoretry_for", ()) or ()))
        if life.results_here:
            outcome = life.fail(task_id, letter, tenant=lifecycle.tenant_hint(request),
                                result=write)
        else:
            self.ensure(self._write, write)
            outcome = life.fail(task_id, letter, tenant=lifecycle.tenant_hint(request))
        if outcome.outcome == "done" and self.on_dead_letter is not None:
            info = getattr(request, "delivery_info", None) or {}
            self.on_dead_letter(letter["task"], task_id, str(info.get("routing_key") or ""))
        super().mark_as_failure(task_id, exc, traceback, request, store_result=False,
                                call_errbacks=call_errbacks, state=state)

    def _store_result(self, task_id: str, result: Any, state: str, traceback: Any = None,
                      request: Any = None, **kwargs: Any) -> Any:
        write = self.encode_state(task_id, result, state, traceback, request)
        runtime = getattr(self.app, "runtime", None)
        life = runtime.lifecycle if runtime is not None else None
        if life is None or not life.results_here:
            self.ensure(self._write, write)
        elif state in (states.SUCCESS, states.REVOKED):
            life.finish(task_id, state, tenant=lifecycle.tenant_hint(request), result=write,
                        run_ended=_ends_run(task_id, state, request))
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
        meta = self._get_result_meta(result=result, state=state, traceback=traceback,
                                     request=request)
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend", state=state,
                                    task_id=task_id)
        ttl = self.failure_expires if state == states.FAILURE else self.expires
        return bytes_to_str(self.get_key_for_task(task_id)), value, int(ttl or 0)

    @staticmethod
    def started_result(request: Any, pid: int) -> dict[str, Any]:
        """The result Celery's ``task_track_started`` stores with STARTED."""
        return {"pid": pid, "hostname": request.hostname}

    def started_state(self, request: Any, pid: int) -> ResultWrite:
        """``encode_state`` of the STARTED state of the run ``request`` begins."""
        return self.encode_state(request.id, self.started_result(request, pid),
                                 states.STARTED, request=request)

    def _write(self, key: str, value: str, ttl: int) -> int:
        client = self.client
        script = self.__dict__.get("_write_script")
        if script is None or script.registered_client is not client:
            script = self.__dict__["_write_script"] = client.register_script(
                lifecycle.store.source("write_result"))
        return int(script(keys=[key], args=[value, ttl]))


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
    the sentinels (``sentinel://`` ``RESULT_BACKEND_URL`` or ``REDIS_URL``): its pool's
    connections rediscover the master after a failover (also on ``NOREPLICAS``:
    ``redis_conn.MasterConnection``)."""

    connection_class_ssl = MasterSSLConnection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connparams.setdefault("connection_class", MasterConnection)


def backend_url(results_url: str) -> str:
    """``result_backend`` naming this module's backend for ``results_url`` (Celery's
    ``class+url`` form): the Sentinel one for a ``sentinel://`` URL."""
    cls = SentinelResultBackend if is_sentinel(results_url) else ResultBackend
    return f"{__name__}:{cls.__name__}+{results_url}"
