"""A Sentinel master set of each test's own: fault tests kill, pause and fail it over."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.sentinel import SentinelSet


@pytest.fixture
def sentinel_set() -> Iterator[SentinelSet]:
    servers = SentinelSet().start()
    yield servers
    servers.close()
