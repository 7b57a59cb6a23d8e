"""The load generator's own logic: when wrk's connections count as evenly spread."""

from __future__ import annotations

from bench.loadgen import even


def test_an_even_split_gives_every_worker_half_its_fair_share() -> None:
    assert even([8, 8], 16) and even([4, 12], 16) and even([11, 5], 16)
    assert not even([16, 0], 16) and not even([3, 13], 16)
    assert even([1, 3], 4) and not even([0, 4], 4)
    assert not even([], 16)
