"""Schemathesis hooks for the fuzz runs (``SCHEMATHESIS_HOOKS=tests.security.fuzz_hooks``).

The description marks a schedule's ``cron`` with ``format: cron`` (five-field cron, as
cronsim reads it): no JSON Schema keyword can say which strings are cron expressions,
and a fuzzer that only knows the length bounds would send random strings, all refused.
This teaches schemathesis the format, from the same fields the server accepts.
"""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st


def _field(low: int, high: int) -> st.SearchStrategy[str]:
    number = st.integers(low, high).map(str)
    step = st.integers(1, high - low + 1).map(lambda n: f"*/{n}")
    span = st.tuples(st.integers(low, high), st.integers(low, high)).map(
        lambda ab: f"{min(ab)}-{max(ab)}")
    return st.one_of(st.just("*"), number, step, span)


#: minute, hour, day of month (1-28: every month has it), month, day of week
CRON = st.tuples(_field(0, 59), _field(0, 23), _field(1, 28), _field(1, 12),
                 _field(0, 6)).map(" ".join)

schemathesis.openapi.format("cron", CRON)
