"""The PNGs, drawn from latest.json alone: ``python -m bench.plot [RESULTS_JSON] [OUT_DIR]``.

* ``figures.png``     figures 1-5: enqueue, execution, latency, cost of metrics, memory
* ``autoscaling.png`` queue backlog, oldest-task age, replicas and throughput over time,
                      the autoscaled pool against one fixed worker
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

COLORS = {"bare": "#9e9e9e", "floor": "#c4c4c4", "seed": "#e07b39", "taskplane": "#2b6cb0",
          "taskplane_metrics_off": "#90b4e0", "fixed": "#e07b39", "autoscaled": "#2b6cb0"}
LABELS = {"bare": "bare Flask", "floor": "floor\n(1 LPUSH)", "seed": "blog post", "taskplane": "Taskplane",
          "taskplane_metrics_off": "Taskplane\n(metrics off)"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bars(ax: Any, names: list[str], values: list[float], fmt: str = "{:,.0f}",
          labels: dict[str, str] | None = None) -> None:
    names_shown = [(labels or {}).get(n) or LABELS.get(n, n) for n in names]
    bars = ax.bar(names_shown, values, color=[COLORS.get(n, "#777") for n in names])
    for bar, value in zip(bars, values, strict=True):
        if value == value:  # not NaN
            ax.annotate(fmt.format(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.margins(y=0.15)


def _missing(ax: Any, title: str, section: dict[str, Any] | None) -> bool:
    if section and "error" not in section:
        return False
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.5, "not run" if not section else "failed:\n" + str(section["error"])[:120],
            ha="center", va="center", transform=ax.transAxes, fontsize=8, wrap=True)
    ax.set_axis_off()
    return True


def figures_png(results: dict[str, Any], out: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    (a1, a2, a3), (a4, a5, a6) = axes

    enq = results.get("enqueue")
    if not _missing(a1, "1. Enqueue (requests/s)", enq):
        names = ["bare", "floor", "seed", "taskplane", "taskplane_metrics_off"]
        _bars(a1, names, [enq["results"][n]["requests_per_s"] for n in names])
        r = enq["ratios"]
        a1.set_title(f"1. Enqueue, {enq['connections']} connections: requests/s\n"
                     f"Taskplane = {r['taskplane_vs_floor']:.0%} of floor, "
                     f"{r['taskplane_vs_seed']:.2f}x post, {r['taskplane_vs_bare']:.0%} of bare",
                     fontsize=10)
        a1.set_ylabel("requests/s")

    if not _missing(a2, "1. Enqueue latency", enq):
        names = ["bare", "floor", "seed", "taskplane", "taskplane_metrics_off"]
        x = range(len(names))
        p50 = [enq["results"][n]["p50_ms"] for n in names]
        p99 = [enq["results"][n]["p99_ms"] for n in names]
        a2.bar([i - 0.2 for i in x], p50, 0.4, label="p50", color="#4a90d9")
        a2.bar([i + 0.2 for i in x], p99, 0.4, label="p99", color="#1c3f66")
        a2.set_xticks(list(x), [LABELS[n] for n in names], fontsize=8)
        a2.set_ylabel("ms")
        a2.legend(fontsize=8)
        a2.set_title("1. Enqueue latency (wrk, closed loop)", fontsize=10)

    exe = results.get("execution")
    if not _missing(a3, "2. Execution (tasks/s)", exe):
        names = [n for n in ("floor", "seed", "taskplane", "taskplane_metrics_off") if n in exe["results"]]
        _bars(a3, names, [exe["results"][n]["tasks_per_s"] for n in names],
              labels={"floor": "floor\n(plain loops)"})
        of_floor = (f", {exe['ratios']['taskplane_vs_floor']:.0%} of floor"
                    if "taskplane_vs_floor" in exe["ratios"] else "")
        a3.set_title(f"2. Execution, one pod (2 processes): tasks/s\n"
                     f"Taskplane = {exe['ratios']['taskplane_vs_seed']:.2f}x post{of_floor}", fontsize=10)
        a3.set_ylabel("tasks/s")

    lat = results.get("latency")
    if not _missing(a4, "3. End-to-end latency", lat):
        groups = [("light\n(polled)", lat["light"]["polled"]),
                  ("light\n(finished_at)", lat["light"]["finished_at"]),
                  (f"80% of capacity\n{lat['at_80pct']['rate_per_s']:.0f}/s", lat["at_80pct"])]
        x = range(len(groups))
        a4.bar([i - 0.2 for i in x], [g["p50_ms"] for _, g in groups], 0.4, label="p50", color="#4a90d9")
        a4.bar([i + 0.2 for i in x], [g["p99_ms"] for _, g in groups], 0.4, label="p99", color="#1c3f66")
        a4.set_xticks(list(x), [name for name, _ in groups], fontsize=8)
        a4.set_ylabel("ms, submit → SUCCESS")
        a4.legend(fontsize=8)
        a4.set_title(f"3. End-to-end latency (capacity {lat['capacity']['tasks_per_s']:.0f} tasks/s)",
                     fontsize=10)

    cost = results.get("metrics_cost")
    if not _missing(a5, "4. Cost of metrics", cost):
        rows = [(k, v) for k, v in cost["results"].items() if v.get("cost_pct") is not None]
        names = [k.replace("_", "\n") for k, _ in rows]
        values = [v["cost_pct"] for _, v in rows]
        bars = a5.bar(names, values, color=["#2b6cb0" if abs(v) < 5 else "#c53030" for v in values])
        for bar, value in zip(bars, values, strict=True):
            a5.annotate(f"{value:+.1f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom" if value >= 0 else "top", fontsize=8)
        a5.axhline(5, color="#c53030", linestyle="--", linewidth=1)
        a5.axhline(0, color="black", linewidth=0.5)
        a5.set_ylabel("% slower with metrics on")
        a5.tick_params(axis="x", labelsize=8)
        a5.set_title("4. Cost of metrics (target < 5%)", fontsize=10)

    mem = results.get("memory")
    if not _missing(a6, "5. Memory", mem):
        series = mem.get("series") or []
        api_n = max(1, mem["api_worker"]["processes"])
        pool_n = max(1, mem["worker_child"]["processes"])
        a6.plot([s["accepted"] for s in series], [s["api_rss_kib"] / 1024 / api_n for s in series],
                label="API worker (mean of gunicorn workers)", color="#2b6cb0")
        a6.plot([s["succeeded"] for s in series], [s["pool_rss_kib"] / 1024 / pool_n for s in series],
                label="worker child (mean of pool processes)", color="#e07b39")
        a6.axvline(mem["checkpoints"][0], color="#999", linestyle=":", linewidth=1)
        a6.set_xlabel("tasks")
        a6.set_ylabel("RSS, MiB")
        a6.legend(fontsize=8)
        a6.set_title(f"5. Memory over {mem['tasks']:,} tasks: peak API "
                     f"{mem['api_worker']['peak_rss_mib']} MiB, "
                     f"child {mem['worker_child']['peak_rss_mib']} MiB",
                     fontsize=10)

    machine = results.get("machine", {})
    fig.suptitle(f"Taskplane benchmarks: {machine.get('nproc', '?')} x {machine.get('cpu_model', '?')}, "
                 f"{machine.get('memory_gib', '?')} GiB; {results.get('mode', '')} run "
                 f"{results.get('finished_at', '')}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path = out / "figures.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def autoscaling_png(results: dict[str, Any], out: Path) -> Path | None:
    auto = results.get("autoscaling")
    if not auto or "error" in auto:
        return None
    plt = _pyplot()
    fig, (q, age, reps, thr) = plt.subplots(4, 1, figsize=(11, 11), sharex=True)
    metrics = auto["hpa"]["metrics"]
    backlog = next((m for m in metrics if m["target_type"] == "AverageValue"), metrics[0])
    oldest = next((m for m in metrics if m["target_type"] == "Value"), None)
    for mode in ("autoscaled", "fixed"):
        run = auto[mode]
        color, label = COLORS[mode], "autoscaled (chart HPA)" if mode == "autoscaled" else "one fixed worker"
        points = run["prometheus"].get(backlog["name"], [])
        q.plot([p[0] for p in points], [p[1] for p in points], color=color, label=label,
               drawstyle="steps-post")
        if oldest:
            points = run["prometheus"].get(oldest["name"], [])
            age.plot([p[0] for p in points], [p[1] for p in points], color=color, label=label,
                     drawstyle="steps-post")
        tl = run["timeline"]
        reps.plot([r["t"] for r in tl], [r["replicas"] for r in tl], color=color, label=f"{label}: replicas",
                  drawstyle="steps-post")
        if mode == "autoscaled":
            reps.plot([r["t"] for r in tl], [r["ready"] for r in tl], color=color, linestyle=":",
                      label="autoscaled: ready", drawstyle="steps-post")
            reps.plot([r["t"] for r in tl], [r["terminating"] for r in tl], color="#c53030",
                      linestyle="--", linewidth=0.8, label="autoscaled: terminating (SIGTERM sent)",
                      drawstyle="steps-post")
        tp = run["throughput_per_s"]
        thr.plot([p[0] for p in tp], [p[1] for p in tp], color=color, label=label, drawstyle="steps-post")
        if run.get("time_to_drain_s") is not None:
            for ax in (q, age, reps, thr):
                ax.axvline(run["time_to_drain_s"], color=color, linestyle="--", linewidth=0.8)
    first_up = auto["autoscaled"].get("time_to_first_scale_up_s")
    if first_up is not None:
        reps.annotate(f"first scale-up {first_up:.0f}s", (first_up, 1), xytext=(5, 10),
                      textcoords="offset points", fontsize=8)
    q.set_ylabel(f"{backlog['name']}\n(waiting + reserved)", fontsize=8)
    q.set_title("Queue backlog as Prometheus saw it (the HPA's PromQL)", fontsize=10)
    age.set_ylabel("oldest waiting, s", fontsize=8)
    age.set_title("Age of the oldest waiting task", fontsize=10)
    reps.set_ylabel("worker pods", fontsize=8)
    reps.yaxis.get_major_locator().set_params(integer=True)
    reps.set_title(f"Replicas ({auto['hpa']['min_replicas']}-{auto['hpa']['max_replicas']}, "
                   f"target {backlog['target']:g} per pod)", fontsize=10)
    thr.set_ylabel("tasks finished / s", fontsize=8)
    thr.set_xlabel("seconds since the burst")
    thr.set_title("Throughput", fontsize=10)
    for ax in (q, age, reps, thr):
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(alpha=0.3)
    a, f = auto["autoscaled"], auto["fixed"]
    fig.suptitle(f"Autoscaling: burst of {a['burst_tasks']} tasks; drained in {a['time_to_drain_s']}s "
                 f"autoscaled vs {f['time_to_drain_s']}s on one worker; lost {a['lost']}, "
                 f"ran twice {a['ran_twice']}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = out / "autoscaling.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [figures_png(results, out)]
    auto = autoscaling_png(results, out)
    if auto:
        paths.append(auto)
    return paths


def main(argv: list[str]) -> int:
    source = Path(argv[0]) if argv else RESULTS / "latest.json"
    out = Path(argv[1]) if len(argv) > 1 else source.parent
    for path in draw(json.loads(source.read_text()), out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
