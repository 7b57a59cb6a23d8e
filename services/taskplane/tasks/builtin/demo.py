"""The blog post's ``long_running_task``, kept so its routes and habits keep working."""

from __future__ import annotations

import time

from ..base import progress
from ..registry import task


@task(
    "long_running_task",
    schema={
        "properties": {
            "data": {"type": "string", "maxLength": 10_000},
            "seconds": {"type": "number", "minimum": 0, "maximum": 1800},
        },
        "required": ["data"],
    },
    time_limit=1900,
    soft_time_limit=1850,
)
def long_running_task(data: str, seconds: float = 10) -> str:
    """Sleep ``seconds`` (10 by default, as in the post), reporting progress each second."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        progress(100.0 * (seconds - left) / seconds, f"working on {data!r}")
        time.sleep(min(1.0, left))
    return f"Task completed successfully with data: {data}"
