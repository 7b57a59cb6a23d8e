"""The Redis the lifecycle lives in, and the one function every script call goes through.

Each transition is a file in ``scripts/`` (``submit.lua``, ``start.lua``…) opening with
its contract. :func:`source` reads it with ``scripts/lib.lua`` (the shared functions) in
front, and :meth:`Store.run` registers each script once per client (``EVALSHA``, loaded
again when Redis answers ``NOSCRIPT``) and runs it. Every state change passes through
:meth:`Store.run`, so what every accepted transition needs (the translation of a lost
reply into :class:`OutcomeUnknown`, later a ``WAIT`` for replicas) is added in one place.

Modules of this package read with :attr:`Store.redis`; nothing outside the package
holds the client: it asks the lifecycle by name (``ping``, ``subscribe``…).
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import redis
from redis.client import PubSub
from redis.commands.core import Script

from .errors import OutcomeUnknown, never_sent

#: The file of Lua every script starts with.
LIB = "lib"


@functools.cache
def source(name: str) -> str:
    """The Lua of ``scripts/{name}.lua`` with ``scripts/lib.lua`` in front."""
    folder = resources.files(__package__).joinpath("scripts")
    lib = folder.joinpath(f"{LIB}.lua").read_text(encoding="utf-8")
    body = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return f"{lib}\n-- ---- {name}.lua ----\n{body}"


class Store:
    """One Redis client and the scripts registered on it."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._scripts: dict[str, Script] = {}

    def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run the script ``name`` (``scripts/{name}.lua``): its reply, or
        :class:`OutcomeUnknown` when the call may have reached Redis but no reply came."""
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.redis.register_script(source(name))
        try:
            return script(keys=keys, args=args)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if never_sent(exc):
                raise
            raise OutcomeUnknown(exc) from exc

    def ping(self) -> bool:
        return bool(self.redis.ping())

    def subscribe(self, *channels: str) -> PubSub:
        """A pub/sub connection subscribed to ``channels`` (a result key is the channel its
        writes are published on: ``lib.lua`` ``write_result``)."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        if channels:
            pubsub.subscribe(*channels)
        return pubsub
