"""Redis per task: the per-task arithmetic, the benchmark's own commands taken out."""

from __future__ import annotations

from bench.rediscost import per_task


def stats(cpu: float, **calls: tuple[int, int]) -> dict:
    return {"cpu_s": cpu, "commands": {k: {"calls": c, "usec": u} for k, (c, u) in calls.items()}}


def test_per_task_takes_the_benchmarks_own_commands_out():
    before = stats(1.0, lpush=(10, 100), get=(5, 5), info=(4, 40))
    after = stats(1.5, lpush=(110, 600), get=(25, 45), info=(6, 60), evalsha=(300, 3000))
    out = per_task(before, after, 100, {"get": 10, "info": 2})
    rows = {r["command"]: r for r in out["commands"]}
    assert "info" not in rows  # only the benchmark sends INFO
    assert rows["get"]["calls_per_task"] == 0.1  # 20 calls, 10 of them the poller's
    assert rows["lpush"]["calls_per_task"] == 1 and rows["evalsha"]["calls_per_task"] == 3
    assert out["cpu_us_per_task"] == 5000.0 and out["tasks_per_s_per_core"] == 200
    assert out["commands_per_task"] == 4.1 and out["scripted"] is True
    # the most expensive command first
    assert out["commands"][0]["command"] == "evalsha"
