"""``python -m bench`` (or ``bench/run.py``): every benchmark, the autoscaling experiment,
``latest.json``, the PNGs and BENCHMARKS.md.

    python -m bench                      # full size (make bench), about 13 minutes on 2 cores
    python -m bench --smoke [--out DIR]  # tiny sizes (the tests), under a minute
    python -m bench --only enqueue,execution

Everything runs against a private redis-server on a free port, with every process the
run starts stopped at the end. A benchmark that fails is recorded as ``{"error": ...}``,
the others still run, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "bench"

from tests.support.procs import MissingBinary, find_binary

from . import (
    acks,
    autoscale,
    figures,
    follower_memory,
    followers,
    machine,
    plot,
    rediscost,
    report,
)
from .stack import Stack

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BENCHMARKS = ("enqueue", "redis", "execution", "rediscost", "latency", "memory", "autoscaling",
              "followers", "follower_memory", "acks")
STEPS: dict[str, Callable[..., dict[str, Any]]] = {
    "enqueue": figures.enqueue,
    "redis": figures.redis_limits,
    "execution": figures.execution,
    "rediscost": rediscost.redis_cost,
    "latency": figures.latency,
    "memory": figures.memory,
    "autoscaling": autoscale.autoscaling,
    "followers": followers.followers,
    "follower_memory": follower_memory.memory_per_follower,
    "acks": acks.replica_acks,
}


def metrics_cost(results: dict[str, Any]) -> dict[str, Any]:
    """Figure 4: the same runs with instrumentation on and off (interleaved round by round)."""
    rows: dict[str, Any] = {}
    enq, exe = results.get("enqueue"), results.get("execution")

    def row(on: float, off: float, per_round: list[float], higher_is_better: bool = True) -> dict[str, Any]:
        cost = (off - on) / off * 100 if higher_is_better else (on - off) / off * 100
        return {"on": on, "off": off, "cost_pct": round(cost, 2),
                "per_round_pct": [round(x, 2) for x in per_round], "met": abs(cost) < 5}

    if enq and "error" not in enq:
        on, off = enq["results"]["taskplane"], enq["results"]["taskplane_metrics_off"]
        rounds = [(b["requests_per_s"] - a["requests_per_s"]) / b["requests_per_s"] * 100
                  for a, b in zip(on["runs"], off["runs"], strict=False)]
        rows["enqueue requests/s"] = row(on["requests_per_s"], off["requests_per_s"], rounds)
        rows["enqueue p50 ms"] = row(on["p50_ms"], off["p50_ms"], [
            (a["latency_ms"]["p50"] - b["latency_ms"]["p50"]) / b["latency_ms"]["p50"] * 100
            for a, b in zip(on["runs"], off["runs"], strict=False)], higher_is_better=False)
        rows["enqueue p99 ms"] = row(on["p99_ms"], off["p99_ms"], [
            (a["latency_ms"]["p99"] - b["latency_ms"]["p99"]) / b["latency_ms"]["p99"] * 100
            for a, b in zip(on["runs"], off["runs"], strict=False)], higher_is_better=False)
    if exe and "error" not in exe:
        on, off = exe["results"]["taskplane"], exe["results"]["taskplane_metrics_off"]
        rounds = [(b["tasks_per_s"] - a["tasks_per_s"]) / b["tasks_per_s"] * 100
                  for a, b in zip(on["runs"], off["runs"], strict=False)
                  if a["tasks_per_s"] and b["tasks_per_s"]]
        rows["execution tasks/s"] = row(on["tasks_per_s"], off["tasks_per_s"], rounds)
    if not rows:
        return {"error": "needs the enqueue or execution benchmark"}
    throughput = [r for name, r in rows.items() if "/s" in name]
    return {
        "what": "Taskplane with METRICS_ENABLED=false against the same runs with metrics on (API "
                "request and submission metrics; worker task metrics), interleaved with them in "
                "each round; cost = how much worse metrics on is",
        "results": rows,
        "target_pct": 5.0,
        "met": all(r["met"] for r in throughput),
    }


def logger(quiet: bool = False) -> logging.Logger:
    """The run's log lines on stderr, with the time of day; ``quiet`` keeps only warnings."""
    log = logging.getLogger("bench")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[bench %(asctime)s] %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.propagate = False  # Celery's and urllib3's INFO lines stay out of it
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    return log


def _found(name: str) -> bool:
    try:
        find_binary(name)
    except MissingBinary:
        return False
    return True


def check_tools(selected: list[str]) -> list[str]:
    """What is missing for the selected benchmarks (each with how to get it)."""
    import shutil

    missing = []
    if not _found("redis-server"):
        missing.append("redis-server (Debian's redis-server)")
    if {"enqueue", "memory", "acks"} & set(selected) and not shutil.which("wrk"):
        missing.append("wrk (bench/install-tools.sh)")
    if {"enqueue", "execution"} & set(selected):
        from .cpu_profile import py_spy_binary

        try:
            py_spy_binary()
        except RuntimeError:
            missing.append("py-spy in the venv (make install: the dev extra)")
    if "redis" in selected and not shutil.which("redis-benchmark"):
        missing.append("redis-benchmark (Debian's redis-tools)")
    if "autoscaling" in selected:
        if not _found("prometheus"):
            missing.append("prometheus (scripts/monitoring-tools.sh)")
        try:
            from .hpa import helm_binary

            helm_binary()
        except RuntimeError:
            missing.append("helm (scripts/chart-tools.sh)")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        missing.append("matplotlib in the venv (bench/install-tools.sh)")
    return missing


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False, allow_nan=True) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that everything runs")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for latest.json and the PNGs (default bench/results; "
                             "with --smoke a new temporary directory)")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="BENCHMARKS.md to update (default: ./BENCHMARKS.md for full runs, "
                             "none for --smoke)")
    parser.add_argument("--no-markdown", action="store_true", help="do not write BENCHMARKS.md")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep every process's log (where is printed at the end)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--merge", action="store_true",
                        help="with --only: keep the other benchmarks' results of the existing "
                             "latest.json (their run's machine line and times stay theirs)")
    args = parser.parse_args(argv)

    selected = [s.strip() for s in args.only.split(",") if s.strip()] or list(BENCHMARKS)
    unknown = set(selected) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    if args.smoke and args.out is None:  # smoke results never replace bench/results
        args.out = Path(tempfile.mkdtemp(prefix="taskplane-bench-smoke-"))
    out = args.out or RESULTS
    markdown = args.markdown or (None if args.smoke else ROOT / "BENCHMARKS.md")
    if args.no_markdown:
        markdown = None
    sizes = figures.SMOKE if args.smoke else figures.FULL
    rep = logger(quiet=args.quiet)

    missing = check_tools(selected)
    if missing:
        print("bench: missing: " + "; ".join(missing), file=sys.stderr)
        return 2

    started = time.time()
    results: dict[str, Any] = {
        "mode": "smoke" if args.smoke else "full",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine.describe(),
        "sizes": asdict(sizes),
    }
    rep.info(f"{results['mode']} run: {', '.join(selected)}; results in {out}")
    failed = []
    with Stack(keep_logs=args.keep_logs) as stack:
        stack.start_redis()
        results["redis_server"] = {"url": stack.redis_url, "persistence": "none (--save '' --appendonly no)"}
        for name in selected:
            t = time.time()
            rep.info(f"== {name}")
            try:
                results[name] = STEPS[name](stack, sizes, rep)
            except Exception as exc:
                failed.append(name)
                results[name] = {"error": f"{type(exc).__name__}: {exc}"[:4000],
                                 "traceback": traceback.format_exc()[-4000:]}
                rep.info(f"{name} FAILED: {type(exc).__name__}: {str(exc)[:500]}")
                # a half-finished benchmark may leave processes behind: stop them before the next
                stack.stop(*stack.procs)
            results[name]["seconds"] = round(time.time() - t, 1)
            profiled = results[name].get("profile")
            if isinstance(profiled, dict) and "error" in profiled:
                # the figure stands; its CPU breakdown is missing, and the run says so
                failed.append(f"{name}.profile")
                rep.info(f"{name}: the profiled round FAILED: {profiled['error'][:500]}")
            rep.info(f"== {name} done in {time.time() - t:.0f}s")
        if args.keep_logs:
            rep.info(f"process logs kept in {stack.workdir}")

    if "enqueue" in results or "execution" in results:
        results["metrics_cost"] = metrics_cost(results)
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["seconds"] = round(time.time() - started, 1)
    results["load_average_at_end"] = machine.load_average()
    results["failed"] = failed

    if args.merge and (out / "latest.json").exists():
        earlier = json.loads((out / "latest.json").read_text())
        merged = {k: v for k, v in earlier.items() if k in BENCHMARKS or k == "metrics_cost"}
        merged.update({k: v for k, v in results.items() if k in selected or k == "metrics_cost"})
        # which run each section comes from (a merge of a merge keeps the older sources)
        sources = dict(earlier.get("merged", {}).get("sources")
                       or {k: earlier[k].get("finished_at") or earlier.get("finished_at")
                           for k in BENCHMARKS if isinstance(earlier.get(k), dict)})
        sources.update({k: results["finished_at"] for k in selected})
        results = {**earlier, **{k: v for k, v in results.items() if k not in BENCHMARKS},
                   **merged, "merged": {"sources": sources},
                   "failed": [*earlier.get("failed", []), *failed]}
        if "enqueue" in results or "execution" in results:  # from the sections now held
            results["metrics_cost"] = metrics_cost(results)
    write_json(out / "latest.json", results)
    for path in plot.draw(results, out):
        rep.info(f"wrote {path}")
    rep.info(f"wrote {out / 'latest.json'}")
    if markdown is not None:
        report.write(results, markdown)
        rep.info(f"wrote {markdown}")
    print(summary(results))
    return 1 if failed else 0


def summary(results: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    lines = [f"bench ({results['mode']}, {results['seconds']:.0f}s):"]
    enq = results.get("enqueue")
    if enq and "error" not in enq:
        r = enq["results"]
        lines.append(f"  enqueue   Taskplane {r['taskplane']['requests_per_s']:,.0f} req/s, post "
                     f"{r['seed']['requests_per_s']:,.0f}, bare {r['bare']['requests_per_s']:,.0f}, "
                     f"floor {r['floor']['requests_per_s']:,.0f}: "
                     f"{enq['ratios']['taskplane_vs_floor']:.0%} of floor (target "
                     f"{enq['targets']['taskplane_vs_floor']:.0%}: "
                     f"{_met(enq['met']['taskplane_vs_floor'])}), "
                     f"{enq['ratios']['taskplane_vs_seed']:.2f}x post, "
                     f"{enq['ratios']['taskplane_vs_bare']:.0%} of bare (medians of per-round ratios)")
    exe = results.get("execution")
    if exe and "error" not in exe:
        r = exe["results"]
        lines.append(f"  execution Taskplane {r['taskplane']['tasks_per_s']:,.0f} tasks/s, post "
                     f"{r['seed']['tasks_per_s']:,.0f}, floor {r['floor']['tasks_per_s']:,.0f}: "
                     f"{exe['ratios']['taskplane_vs_seed']:.2f}x post (target "
                     f"{exe['targets']['taskplane_vs_seed']:g}x: {_met(exe['met']['taskplane_vs_seed'])}), "
                     f"{exe['ratios']['taskplane_vs_floor']:.0%} of floor")
    for name, unit in (("enqueue", "request"), ("execution", "task")):
        prof = (results.get(name) or {}).get("profile")
        if prof and "error" not in prof:
            top = ", ".join(f"{c['component']} {c['share_pct']:.0f}%" for c in prof["components"][:4])
            lines.append(f"  profile   {name}: {prof['cpu_us_per_unit']:,.0f} us CPU per {unit} "
                         f"(+ Redis {prof.get('redis', {}).get('cpu_us_per_unit', float('nan')):,.0f} us): "
                         f"{top}")
    lat = results.get("latency")
    if lat and "error" not in lat:
        lines.append(f"  latency   light p50 {lat['light']['polled']['p50_ms']} ms p99 "
                     f"{lat['light']['polled']['p99_ms']} ms; "
                     f"80% ({lat['at_80pct']['rate_per_s']:.0f}/s) p50 "
                     f"{lat['at_80pct']['p50_ms']} ms p99 {lat['at_80pct']['p99_ms']} ms")
    cost = results.get("metrics_cost")
    if cost and "error" not in cost:
        lines.append("  metrics   " + ", ".join(f"{k} {v['cost_pct']:+.1f}%"
                                                for k, v in cost["results"].items()))
    mem = results.get("memory")
    if mem and "error" not in mem:
        lines.append(f"  memory    peak API worker {mem['api_worker']['peak_rss_mib']} MiB, worker child "
                     f"{mem['worker_child']['peak_rss_mib']} MiB; flat: {mem['api_worker']['flat']}, "
                     f"{mem['worker_child']['flat']}")
    auto = results.get("autoscaling")
    if auto and "error" not in auto:
        a, f = auto["autoscaled"], auto["fixed"]
        lines.append(f"  autoscale first scale-up {a['time_to_first_scale_up_s']}s, "
                     f"drained {a['time_to_drain_s']}s "
                     f"(fixed: {f['time_to_drain_s']}s), lost {a['lost']}, ran twice {a['ran_twice']}")
    for name in results.get("failed", []):
        section, _, part = name.partition(".")
        error = (results[section].get(part) if part else results[section]) or {}
        lines.append(f"  FAILED    {name}: {str(error.get('error', '?'))[:200]}")
    return "\n".join(lines)


def _met(flag: bool) -> str:
    return "met" if flag else "NOT met"


if __name__ == "__main__":
    raise SystemExit(main())
