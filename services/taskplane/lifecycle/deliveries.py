"""Webhook deliveries in the lifecycle: what a subject asked to be notified of, its
attempts, the dead deliveries of a tenant (``scripts/delivery_log.lua``)."""

from __future__ import annotations

import json
import time
from typing import Any

from .keys import (
    dead_deliveries_key,
    deliveries_key,
    record_key,
    webhook_endpoints_key,
    workflow_key,
)
from .replies import optional, scored, text_fields
from .store import Store

#: Attempts kept per task or workflow.
KEEP_ATTEMPTS = 50
#: Seconds a process keeps the registered endpoints it read: a submission reads them
#: (one HGETALL) at most this often, and a change reaches every API pod within it.
ENDPOINTS_CACHE = 5.0


class Deliveries:
    """The webhook part of :class:`~taskplane.lifecycle.Lifecycle`."""

    _store: Store
    result_ttl: int

    def notify_of(self, kind: str, subject: str) -> tuple[dict[str, Any], str, str] | None:
        """The subject's webhook (``{"url", "secret", ...}``), tenant and end time, if it
        has a webhook and still exists."""
        key = record_key(subject) if kind == "task" else workflow_key(subject)
        raw, tenant, ended = (optional(v) for v in self._store.redis.hmget(
            key, "notify", "tenant", "finished_at"))
        if raw is None:
            return None
        return json.loads(raw), (tenant or b"").decode(), (ended or b"").decode()

    def log_delivery(self, kind: str, subject: str, state: str, tenant: str, attempt: str,
                     dead: bool) -> str:
        """Record an attempt (and, ``dead``, list the delivery as dead)."""
        (outcome,) = self._store.run("delivery_log", [
            deliveries_key(kind, subject), *(dead_deliveries_key(t) for t in (tenant, None))],
            [attempt, f"{kind}:{subject}:{state}", "1" if dead else "0", time.time(),
             self.result_ttl, KEEP_ATTEMPTS])
        return str(outcome.decode() if isinstance(outcome, bytes) else outcome)

    def revive_delivery(self, tenant: str, member: str) -> bool:
        """Take a dead delivery off the lists; True if this call did (then resend it)."""
        (outcome,) = self._store.run("delivery_log", [
            deliveries_key("task", ""), *(dead_deliveries_key(t) for t in (tenant, None))],
            ["", member, "0", time.time(), self.result_ttl, KEEP_ATTEMPTS])
        return bool(outcome == b"revived")

    def delivery_attempts(self, kind: str, subject: str) -> list[dict[str, Any]]:
        return [json.loads(a) for a in self._store.redis.lrange(deliveries_key(kind, subject),
                                                                0, -1)]

    def dead_deliveries(self, tenant: str | None, limit: int) -> list[tuple[str, float]]:
        """The newest dead deliveries: ``({kind}:{id}:{state}, time of death)``."""
        return [(m.decode(), s) for m, s in scored(self._store.redis.zrevrange(
            dead_deliveries_key(tenant), 0, limit - 1, withscores=True))]

    # --- endpoints an operator registered per tenant ---------------------------------

    def set_webhook_endpoint(self, tenant: str, endpoint: dict[str, str] | None) -> bool:
        """Register (or, ``None``, remove) the tenant's webhook; True if it changed."""
        key = webhook_endpoints_key()
        self.__dict__.pop("_endpoints", None)
        if endpoint is None:
            return bool(self._store.redis.hdel(key, tenant))
        self._store.redis.hset(key, tenant, json.dumps(endpoint))
        return True

    def webhook_endpoints(self) -> dict[str, dict[str, str]]:
        """Every tenant's registered webhook (read at most every ``ENDPOINTS_CACHE`` s)."""
        cached = self.__dict__.get("_endpoints")
        if cached is not None and time.monotonic() - cached[0] < ENDPOINTS_CACHE:
            return cached[1]  # type: ignore[no-any-return]
        found = {k: json.loads(v) for k, v in text_fields(
            self._store.redis.hgetall(webhook_endpoints_key())).items()}
        self.__dict__["_endpoints"] = (time.monotonic(), found)
        return found
