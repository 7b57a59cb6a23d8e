"""redis-py's replies, narrowed to what the lifecycle's client answers.

The lifecycle's client is a bytes client (``decode_responses=False``: ``celery_app.
redis_client``), so every string Redis sends arrives as ``bytes``. redis-py types a reply
for every kind of client at once: ``bytes | str`` for a string, and for a sorted-set range
``withscores`` either form of either protocol. The modules of this package read replies
through these functions, which state the bytes form once, where a reply comes in, instead
of a cast at each use. They check what they promise: a ``str`` means a decoding client,
which the lifecycle does not support, and raises :class:`TypeError` there rather than an
``AttributeError`` on ``.decode()`` further on.

Replies of a pipeline (``execute()``: ``list[Any]``) and of a script (``Store.run``) are
untyped in redis-py, and unpacked where they are used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.typing import ZSetRangeResponse


def data(value: bytes | str) -> bytes:
    """A string reply (``GET``, ``HGET``, a member), as the bytes it is."""
    if not isinstance(value, bytes):
        raise TypeError(f"the lifecycle needs a bytes client (decode_responses=False); "
                        f"got {type(value).__name__}")
    return value


def optional(value: bytes | str | None) -> bytes | None:
    """A string reply that may be nil (a missing key or field)."""
    return None if value is None else data(value)


def text(value: bytes | str) -> str:
    """A string reply decoded (UTF-8: what the lifecycle writes)."""
    return data(value).decode()


def fields(raw: Mapping[bytes | str, bytes | str]) -> dict[bytes, bytes]:
    """An ``HGETALL`` reply ({} for a missing hash)."""
    return {data(k): data(v) for k, v in raw.items()}


def text_fields(raw: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """An ``HGETALL`` reply, field names and values decoded."""
    return {text(k): text(v) for k, v in raw.items()}


def scored(entries: ZSetRangeResponse) -> list[tuple[bytes, float]]:
    """A sorted-set range read ``withscores=True``: (member, score) pairs, in its order."""
    pairs: list[tuple[bytes, float]] = []
    for entry in entries:
        if isinstance(entry, bytes | str):
            raise TypeError("a sorted-set range read without scores")
        member, score = entry
        pairs.append((data(member), float(score)))
    return pairs
