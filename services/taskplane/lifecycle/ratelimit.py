"""A tenant's request rate: a token bucket in Redis, on Redis' clock.

``scripts/lib.lua`` holds the bucket (``take_token``): a submit spends its token inside
``submit.lua``, in the same step as the task; routes that submit nothing spend one here.
"""

from __future__ import annotations

from .keys import rate_key
from .store import Store


class RateLimit:
    """The rate-limit part of :class:`~taskplane.lifecycle.Lifecycle`."""

    _store: Store

    def take_token(self, tenant: str, rate: float, burst: int) -> float:
        """Spend one of the tenant's request tokens (routes that submit nothing); 0.0 if
        granted, else seconds until one frees up."""
        allowed, wait = self._store.run("take_token", [rate_key(tenant)], [rate, burst])
        return 0.0 if int(allowed) else float(wait)
