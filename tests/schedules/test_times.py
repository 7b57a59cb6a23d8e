"""Tick arithmetic: ``every`` on the epoch grid, cron through cronsim in a time zone, and both
DST transitions (Europe/Berlin: 2026-03-29 02:00 jumps to 03:00, 2026-10-25 03:00 falls back
to 02:00)."""

from __future__ import annotations

from datetime import datetime
from itertools import islice
from zoneinfo import ZoneInfo

import pytest

from taskplane.schedules import Schedule, ScheduleError, check, fire_key
from taskplane.tasks.registry import load_task_modules

BERLIN = ZoneInfo("Europe/Berlin")


def at(*fields: int) -> float:
    return datetime(*fields, tzinfo=BERLIN).timestamp()


def local(ts: float) -> str:
    return datetime.fromtimestamp(ts, BERLIN).strftime("%m-%d %H:%M%z")


def cron(expr: str) -> Schedule:
    return Schedule(name="s", task="test.echo", cron=expr, timezone="Europe/Berlin")


def test_every_ticks_sit_on_the_epoch_grid_whatever_the_start() -> None:
    s = Schedule(name="s", task="test.echo", every=15)
    assert list(islice(s.ticks_after(1000.2), 3)) == [1005.0, 1020.0, 1035.0]
    assert list(islice(s.ticks_after(1005.0), 1)) == [1020.0]  # strictly after


def test_every_due_keeps_the_newest_ticks_and_counts_the_rest() -> None:
    s = Schedule(name="s", task="test.echo", every=1)
    ticks, dropped = s.due(100.0, 110.5, limit=3)
    assert ticks == [108.0, 109.0, 110.0] and dropped == 7


def test_a_daily_time_in_the_spring_gap_fires_once_right_after_it() -> None:
    ticks = list(islice(cron("30 2 * * *").ticks_after(at(2026, 3, 28, 12, 0)), 3))
    assert [local(t) for t in ticks] == ["03-29 03:00+0200", "03-30 02:30+0200",
                                         "03-31 02:30+0200"]


def test_a_daily_time_in_the_autumn_repeat_fires_once() -> None:
    ticks = list(islice(cron("30 2 * * *").ticks_after(at(2026, 10, 24, 12, 0)), 2))
    assert [local(t) for t in ticks] == ["10-25 02:30+0200", "10-26 02:30+0100"]
    assert ticks[1] - ticks[0] == 25 * 3600  # the long day


def test_a_half_hourly_cron_fires_in_both_repeated_hours_and_skips_the_gap() -> None:
    autumn = list(islice(cron("*/30 * * * *").ticks_after(at(2026, 10, 25, 1, 50)), 5))
    assert [t - autumn[0] for t in autumn] == [0, 1800, 3600, 5400, 7200]  # 30 real minutes
    assert [local(t) for t in autumn][:4] == ["10-25 02:00+0200", "10-25 02:30+0200",
                                             "10-25 02:00+0100", "10-25 02:30+0100"]
    spring = list(islice(cron("*/30 * * * *").ticks_after(at(2026, 3, 29, 1, 10)), 3))
    assert [local(t) for t in spring] == ["03-29 01:30+0100", "03-29 03:00+0200",
                                         "03-29 03:30+0200"]
    assert spring[1] - spring[0] == 1800  # one real half hour


def test_fire_keys_name_the_tick_and_cannot_be_sent_by_a_client() -> None:
    key = fire_key(Schedule(name="nightly", task="test.echo", every=60), 1800.0)
    assert key == "schedule nightly 1970-01-01T00:30:00+00:00"
    assert " " in key  # the API refuses spaces in Idempotency-Key


@pytest.mark.parametrize(("change", "field"), [
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": None, "every": None}, "cron"),
    ({"cron": None, "every": 0}, "every"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"overlap": "sometimes"}, "overlap"),
    ({"catch_up": "most"}, "catch_up"),
    ({"kwargs": {}}, "kwargs.value"),
    ({"kwargs": {"value": 1, "extra": 2}}, "kwargs"),
    ({"task": "test.nope"}, "task"),
    ({"name": "Bad Name"}, "name"),
])
def test_check_names_the_field_that_is_wrong(change: dict[str, object], field: str) -> None:
    registry = load_task_modules(["tests.support.tasks"])
    base = {"name": "ok", "task": "test.echo", "kwargs": {"value": 1}, "cron": "*/5 * * * *"}
    with pytest.raises(ScheduleError) as caught:
        check(Schedule(**{**base, **change}), registry)  # type: ignore[arg-type]
    assert field in [f["field"] for f in caught.value.fields], caught.value.fields
    check(Schedule(**base), registry)  # type: ignore[arg-type]
