"""Celery's Redis result backend with one change: a state write cannot overwrite SUCCESS.

Celery guards the same rule in Python (``BaseKeyValueStoreBackend._store_result``):
GET the stored state, then SETEX + PUBLISH. That is two round trips and not atomic: a
retry that runs within milliseconds can store RETRY over the SUCCESS that raced it,
and a REVOKED stored by the API can land on a task that has just succeeded. Here the
check and the write are one script, so the rule holds under any interleaving, and each
state write costs one round trip instead of two.

The same script body runs inside the task-start script (``store.start``): a run's
STARTED state is written with its record stamp, in one call, in place of Celery's
``task_track_started`` write.
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

#: A Lua function, prepended to any script that writes a task's state:
#: ``write_state(key, value, ttl)`` stores and publishes ``value`` unless the key
#: already holds a SUCCESS; ``ttl`` 0 keeps it forever. Returns 1 if written, else 0.
WRITE_STATE_LUA = """
local function write_state(key, value, ttl)
  local current = redis.call('GET', key)
  if current and string.find(current, 'SUCCESS', 1, true) then
    local ok, meta = pcall(cjson.decode, current)
    if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then return 0 end
  end
  if tonumber(ttl) > 0 then
    redis.call('SET', key, value, 'EX', ttl)
  else
    redis.call('SET', key, value)
  end
  redis.call('PUBLISH', key, value)
  return 1
end
"""

_WRITE = WRITE_STATE_LUA + "return write_state(KEYS[1], ARGV[1], ARGV[2])\n"


class ResultBackend(RedisBackend):
    """``RedisBackend`` whose state writes are atomic and never overwrite SUCCESS."""

    def _store_result(self, task_id: str, result: Any, state: str, traceback: Any = None,
                      request: Any = None, **kwargs: Any) -> Any:
        key, value, ttl = self.encode_state(task_id, result, state, traceback, request)
        self.ensure(self._write, (key, value, ttl))
        return result

    def encode_state(self, task_id: str, result: Any, state: str, traceback: Any = None,
                     request: Any = None) -> tuple[str, str, int]:
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

    def started_state(self, request: Any, pid: int) -> tuple[str, str, int]:
        """``encode_state`` of the STARTED state of the run ``request`` begins."""
        return self.encode_state(request.id, self.started_result(request, pid),
                                 states.STARTED, request=request)

    def _write(self, key: str, value: str, ttl: int) -> int:
        client = self.client
        script = self.__dict__.get("_write_script")
        if script is None or script.registered_client is not client:
            script = self.__dict__["_write_script"] = client.register_script(_WRITE)
        return int(script(keys=[key], args=[value, ttl]))


def backend_url(results_url: str) -> str:
    """``result_backend`` naming this class for ``results_url`` (Celery's ``class+url`` form)."""
    return f"{__name__}:{ResultBackend.__name__}+{results_url}"
