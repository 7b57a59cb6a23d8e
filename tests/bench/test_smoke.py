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
    for name in ("taskplane", "celery", "flask", "gunicorn", "redis-server", "wrk", "prometheus", "helm"):
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
    assert set(enq["met"]) == {"taskplane_vs_seed", "taskplane_vs_bare"}
    redis = smoke["results"]["redis"]["results"]
    assert number(redis["lpush"]["ops_per_s"]) and number(redis["rpop"]["ops_per_s"])


def test_execution(smoke):
    exe = smoke["results"]["execution"]
    for side in ("seed", "taskplane", "taskplane_metrics_off"):
        assert number(exe["results"][side]["tasks_per_s"])
    assert number(exe["ratios"]["taskplane_vs_seed"])


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


def test_pngs_and_markdown(smoke):
    for name in ("figures.png", "autoscaling.png"):
        assert (smoke["out"] / name).read_bytes()[:8] == PNG, name
    text = smoke["markdown"].read_text()
    assert "<!-- BEGIN bench" in text and "<!-- END bench -->" in text
    for heading in ("## 1. Enqueue", "## 2. Execution", "## 3. End-to-end latency", "## 4. Cost of metrics",
                    "## 5. Memory", "## Autoscaling"):
        assert heading in text
    assert "failed" not in text.split("<!-- BEGIN bench")[1].lower().split("## 1.")[0]
