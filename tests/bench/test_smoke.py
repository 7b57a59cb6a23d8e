"""Every benchmark at tiny size through the real entry point (``python -m bench --smoke``).

Asserts only that it runs and writes well-formed results: never a timing or a ratio.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.bench


def number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    markdown = out / "BENCHMARKS.md"
    run = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(out), "--markdown",
                          str(markdown)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, (f"bench --smoke failed ({run.returncode}):\n"
                                 f"{run.stdout[-4000:]}\n{run.stderr[-6000:]}")
    return {"out": out, "markdown": markdown, "results": json.loads((out / "latest.json").read_text()),
            "stdout": run.stdout}


def test_results_describe_the_machine(smoke):
    results = smoke["results"]
    assert results["mode"] == "smoke" and results["failed"] == []
    machine = results["machine"]
    assert number(machine["nproc"]) and machine["cpu_model"] and number(machine["memory_gib"])
    for name in ("taskplane", "celery", "flask", "gunicorn", "redis-server", "wrk", "prometheus", "helm",
                 "py-spy"):
        assert machine["versions"][name] not in ("", "missing"), name


def test_enqueue_and_the_bare_limits(smoke):
    enq = smoke["results"]["enqueue"]
    for side in ("bare", "floor", "seed", "taskplane", "taskplane_metrics_off"):
        row = enq["results"][side]
        assert number(row["requests_per_s"]) and number(row["p50_ms"]) and number(row["p99_ms"])
        assert row["errors"] == 0 and row["runs"]
        for run in row["runs"]:  # every run records how its connections were spread
            assert len(run["split"]) == 2 and sum(run["split"]) > 0 and run["attempts"] >= 1
    for side in ("floor", "seed", "taskplane"):  # every side but bare stored what it accepted
        assert all(run["queued"] > 0 for run in enq["results"][side]["runs"]), side
    for ratio in ("taskplane_vs_seed", "taskplane_vs_bare", "taskplane_vs_floor", "floor_vs_bare"):
        assert number(enq["ratios"][ratio]), ratio
        # one ratio per round, each side against its baseline of that round
        assert len(enq["per_round_ratios"][ratio]) == enq["rounds"], ratio
        assert all(number(x) for x in enq["per_round_ratios"][ratio]), ratio
    assert enq["targets"] == {"taskplane_vs_floor": 0.8}
    assert set(enq["met"]) == {"taskplane_vs_floor"} and isinstance(enq["met"]["taskplane_vs_floor"], bool)
    redis = smoke["results"]["redis"]["results"]
    assert number(redis["lpush"]["ops_per_s"]) and number(redis["rpop"]["ops_per_s"])


def test_execution_and_its_floor(smoke):
    exe = smoke["results"]["execution"]
    for side in ("seed", "taskplane", "taskplane_metrics_off", "floor", "taskplane_prefetch2"):
        assert number(exe["results"][side]["tasks_per_s"]), side
        assert [run["round"] for run in exe["results"][side]["runs"]] == list(range(exe["rounds"])), side
    for ratio in ("taskplane_vs_seed", "taskplane_vs_floor", "seed_vs_floor", "taskplane_prefetch2_vs_seed"):
        assert number(exe["ratios"][ratio]), ratio
        assert len(exe["per_round_ratios"][ratio]) == exe["rounds"], ratio
    assert exe["targets"] == {"taskplane_vs_seed": 1.3}
    assert isinstance(exe["met"]["taskplane_vs_seed"], bool)


@pytest.mark.parametrize(("figure", "unit", "children"), [("enqueue", "request", "gunicorn workers"),
                                                          ("execution", "task", "pool children")])
@pytest.mark.parametrize("key", ["profile", "profile_baseline"])
def test_cpu_breakdown(smoke, figure, unit, children, key):
    """Taskplane's profiled round, and its baseline's (the floor, the post's worker)."""
    prof = smoke["results"][figure][key]
    assert "error" not in prof, prof.get("error")
    assert prof["side"] == ("taskplane" if key == "profile" else
                            {"enqueue": "floor", "execution": "seed"}[figure])
    assert prof["unit"] == unit and prof["units"] > 0 and prof["samples"] > 0
    assert number(prof["cpu_s"]) and prof["cpu_s"] > 0 and number(prof["cpu_us_per_unit"])
    components = {c["component"]: c for c in prof["components"]}
    assert len(components) >= 3  # the kernel row and at least two Python components
    assert abs(sum(c["share_pct"] for c in components.values()) - 100) < 0.5
    assert abs(sum(c["us_per_unit"] for c in components.values()) - prof["cpu_us_per_unit"]) \
        <= 0.01 * prof["cpu_us_per_unit"] + 1
    assert prof["processes"][children]["pids"] and number(prof["processes"][children]["us_per_unit"])
    redis = prof["redis"]
    assert number(redis["cpu_us_per_unit"]) and redis["commands_per_unit"] > 0 and redis["commands"]


def test_redis_per_task(smoke):
    """Issue 29: Redis CPU and commands per task, each side on its own Redis, one ratio per round."""
    cost = smoke["results"]["rediscost"]
    assert cost["baseline"] == "celery_acks_late"
    for side in ("taskplane", "taskplane_bare", "celery_acks_late", "seed", "floor"):
        row = cost["results"][side]
        assert number(row["cpu_us_per_task"]) and row["cpu_us_per_task"] > 0, side
        assert number(row["tasks_per_s_per_core"]) and row["commands"], side
        assert len(row["runs"]) == cost["rounds"], side
        assert "info" not in {c["command"] for c in row["commands"]}, side  # the bench's own INFO
    # what each side must send at least: the floor its LPUSH/BLMOVE/SET/LREM, Taskplane scripts
    floor = {c["command"]: c["calls_per_task"] for c in cost["results"]["floor"]["commands"]}
    assert floor["lpush"] == 1 and floor["set"] == 1 and floor["lrem"] == 1 and floor["blmove"] >= 1
    taskplane = {c["command"] for c in cost["results"]["taskplane"]["commands"]}
    assert "fcall" in taskplane and "brpop" in taskplane
    # the bare side takes no rate token and writes no Idempotency-Key: fewer commands
    assert cost["results"]["taskplane_bare"]["commands_per_task"] < \
        cost["results"]["taskplane"]["commands_per_task"]
    assert cost["results"]["taskplane"]["commands_per_task"] > cost["results"]["floor"]["commands_per_task"]
    for name in ("taskplane_vs_celery_acks_late", "taskplane_bare_vs_celery_acks_late",
                 "seed_vs_celery_acks_late", "floor_vs_celery_acks_late"):
        assert number(cost["ratios"][name]) and len(cost["per_round_ratios"][name]) == cost["rounds"]
    assert isinstance(cost["met"]["taskplane_vs_celery_acks_late"], bool)


def test_latency(smoke):
    lat = smoke["results"]["latency"]
    assert number(lat["capacity"]["tasks_per_s"])
    for block in (lat["light"]["polled"], lat["light"]["finished_at"], lat["at_80pct"]):
        assert block["samples"] > 0 and number(block["p50_ms"]) and number(block["p99_ms"])
    assert lat["light"]["errors"] == 0 and lat["at_80pct"]["errors"] == 0


def test_metrics_cost(smoke):
    cost = smoke["results"]["metrics_cost"]
    assert {"enqueue requests/s", "execution tasks/s"} <= set(cost["results"])
    for row in cost["results"].values():
        assert number(row["cost_pct"]) and isinstance(row["met"], bool)


def test_memory(smoke):
    mem = smoke["results"]["memory"]
    for key in ("api_worker", "worker_child"):
        assert mem[key]["processes"] >= 1 and number(mem[key]["peak_rss_mib"])
        assert number(mem[key]["max_growth_kib"]) and isinstance(mem[key]["flat"], bool)
    assert mem["series"]


def test_autoscaling(smoke):
    auto = smoke["results"]["autoscaling"]
    assert auto["hpa"]["metrics"] and all("promql" in m for m in auto["hpa"]["metrics"])
    for mode in ("autoscaled", "fixed"):
        run = auto[mode]
        assert run["accepted"] >= run["burst_tasks"] > 0
        assert run["drained"] is True and number(run["time_to_drain_s"])
        for key in ("lost", "ran_twice", "started_twice"):
            assert isinstance(run[key], int)
        assert run["timeline"] and run["throughput_per_s"] and run["prometheus"]
    assert auto["autoscaled"]["decisions"]


def test_acknowledged_acceptance(smoke):
    acks = smoke["results"]["acks"]
    assert acks["replica_link"] == "up"  # the acknowledged side had a replica to confirm
    for side, wanted in (("ack_1", 1), ("ack_0", 0)):
        row = acks["results"][side]
        assert row["replicas_ack"] == wanted and row["errors"] == 0, side
        assert number(row["requests_per_s"]) and number(row["p99_ms"]), side
        assert row["queued"] > 0, side  # 202s, not 503 outcome_unknown: nothing queued then
    assert number(acks["ack_1_vs_0"]) and number(acks["p99_added_ms"])


def test_memory_per_follower(smoke):
    fm = smoke["results"]["follower_memory"]
    for kind in ("streams", "waits"):
        rss, traced = fm["rss"][kind], fm["traced"][kind]
        # detached: no greenlet per follower is left waiting (api/detached.py)
        assert rss["followers"] == fm["followers"] > 0 and rss["greenlets"] < 0.1, kind
        # measured, not asserted: at the smoke test's few followers a page freed elsewhere
        # outweighs them (a CI run read -4 kB a wait); BENCHMARKS.md's run is the figure
        assert number(rss["rss_bytes"]), kind
        # live detached followers, each allocated anew (the warm-up's were freed)
        assert traced["traced_by_component"].get("taskplane.api.detached", 0) > 0, kind
        rows = fm["breakdown"][kind]
        assert rows["total (RSS)"] == rss["rss_bytes"] and len(rows) >= 7, kind
    assert fm["rss"]["stacks"] == []  # no greenlet waits in a follower's frames
    for kind in ("greenlet", "asyncio"):
        assert fm["floors"][kind]["rss_bytes"] > 0, kind


def test_pngs_and_markdown(smoke):
    for name in ("figures.png", "autoscaling.png"):
        assert (smoke["out"] / name).read_bytes()[:8] == PNG, name
    text = smoke["markdown"].read_text()
    assert "<!-- BEGIN bench" in text and "<!-- END bench -->" in text
    for heading in ("## 1. Enqueue", "## 2. Execution", "## 3. End-to-end latency", "## 4. Cost of metrics",
                    "## 5. Memory", "## 6. Where the time goes", "## 8. Redis per task",
                    "## 9. Acknowledged acceptance", "### Per request", "### Per task",
                    "## Autoscaling", "### Memory per follower"):
        assert heading in text
    assert "| Floor: 2 plain loops" in text and "| Component | Share of CPU | µs per request" in text
    assert "failed" not in text.split("<!-- BEGIN bench")[1].lower().split("## 1.")[0]
