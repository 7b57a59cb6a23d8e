"""BENCHMARKS.md from latest.json: ``python -m bench.report [RESULTS_JSON] [MARKDOWN]``.

Only the part between the ``BEGIN``/``END`` markers is rewritten; text outside them is
kept, so the file can carry hand-written notes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "latest.json"
MARKDOWN = ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- BEGIN bench (python -m bench.report) -->", "<!-- END bench -->"

INTRO = """# Benchmarks

`make bench` measures Taskplane against the blog post's own setup (`bench/baseline/`, its Flask
app, Celery config and worker command, written afresh) and against the bare limits of this
machine (a constant Flask route under the same gunicorn configuration; the enqueue floor, a
route that does one Redis LPUSH per request; the execution floor, two plain Python loops that
each pop, run, store and acknowledge a task in the fewest Redis operations; and
`redis-benchmark` on the same Redis), profiles one more round of each of the first two figures
with py-spy to show where the CPU goes, then runs the autoscaling experiment. It writes
`bench/results/latest.json`, the PNGs next to it, and the section below
(`python -m bench.report` rewrites it from the JSON). Numbers are from one machine and one
run: compare ratios measured in the same run (each side against its baseline in the same
round), not absolute numbers across machines.

"""


def _fmt(value: Any, spec: str = "{:,.1f}") -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and value != value:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, int | float):
        return spec.format(value)
    return str(value)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _met(flag: bool | None) -> str:
    return "—" if flag is None else ("met" if flag else "**not met**")


def _failed(name: str, section: dict[str, Any] | None) -> list[str] | None:
    if section is None:
        return [f"*{name}: not run.*", ""]
    if "error" in section:
        return [f"*{name}: failed: `{section['error'][:300]}`*", ""]
    return None


def render(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    v = m.get("versions", {})
    git = m.get("git", {})
    dirty = " (uncommitted changes)" if git.get("dirty") else ""
    lines = [
        f"Run `{results.get('mode', '?')}` finished {results.get('finished_at', '?')} in "
        f"{_fmt(results.get('seconds'), '{:,.0f}')} s on {m.get('nproc', '?')} x {m.get('cpu_model', '?')}, "
        f"{m.get('memory_gib', '?')} GiB, {m.get('os', '?')} (kernel {m.get('kernel', '?')}); load "
        f"average {m.get('load_average_at_start', '?')} at the start, "
        f"{results.get('load_average_at_end', '?')} at the end; commit `{git.get('commit', '?')}`{dirty}.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
    ]
    merged = results.get("merged")
    if merged:
        runs: dict[str, list[str]] = {}
        for name, finished in merged["sources"].items():
            runs.setdefault(str(finished), []).append(name)
        lines += ["Sections come from more than one run (`python -m bench --only ... --merge`): "
                  + "; ".join(f"{', '.join(names)} from the run that finished {finished}"
                              for finished, names in sorted(runs.items())) + ".", ""]
    lines += _targets(results)
    lines += ["![figures](bench/results/figures.png)", ""]

    enq = results.get("enqueue")
    lines += ["## 1. Enqueue", ""]
    failed = _failed("Enqueue", enq)
    if failed:
        lines += failed
    else:
        lines += [f"{_sentence(enq['what'])}; {enq['connections']} connections, {enq['rounds']} x "
                  f"{enq['seconds_per_run']:g} s per side, median of the rounds.", "",
                  "| Side | Requests/s | p50 ms | p99 ms | Errors |", "|---|---:|---:|---:|---:|"]
        labels = {"bare": "Bare Flask route (constant)",
                  "floor": "Floor: Flask route doing one LPUSH",
                  "seed": "Blog post `/start_task/<data>`",
                  "taskplane": "Taskplane `POST /v1/tasks`",
                  "taskplane_metrics_off": "Taskplane `POST /v1/tasks`, metrics off"}
        for name, label in labels.items():
            r = enq["results"][name]
            lines.append(f"| {label} | {_fmt(r['requests_per_s'], '{:,.0f}')} | "
                         f"{_fmt(r['p50_ms'], '{:.2f}')} | "
                         f"{_fmt(r['p99_ms'], '{:.2f}')} | {r['errors']} |")
        lines += ["", *_ratio_table(enq, ENQUEUE_RATIO_LABELS), "",
                  "The floor is what one Redis round trip per request leaves of the bare route "
                  "on this machine: no API that stores a task before answering can pass it.", "",
                  "gunicorn hands each new connection to whichever worker wakes first, and wrk opens "
                  "all of its keep-alive connections at once, so a run often lands nearly all of them "
                  "on one worker and measures one core. A run whose connections were not spread "
                  "evenly over the workers was stopped and started again "
                  f"({_restarts(enq)} restarts in this run; each run's split is in latest.json).", ""]

    red = results.get("redis")
    if red and "error" not in red:
        r = red["results"]
        lines += [f"Bare Redis limit ({red['what']}, {red['requests']:,} requests): "
                  + ", ".join(f"{k.upper()} {_fmt(x['ops_per_s'], '{:,.0f}')} ops/s "
                              f"(p50 {x.get('p50_ms', '—')} ms)"
                              for k, x in r.items()) + ".", ""]

    exe = results.get("execution")
    lines += ["## 2. Execution", ""]
    failed = _failed("Execution", exe)
    if failed:
        lines += failed
    else:
        lines += [f"{_sentence(exe['what'])}. {exe['tasks_per_run']:,} tasks per run, "
                  f"{exe['rounds']} rounds, median.", "",
                  "| Side | Tasks/s | Runs (tasks/s) |", "|---|---:|---|"]
        labels = {"seed": "Blog post worker", "taskplane": "Taskplane worker",
                  "taskplane_metrics_off": "Taskplane worker, metrics off",
                  "floor": "Floor: 2 plain loops (BLMOVE, SET result + LREM ack)",
                  "taskplane_prefetch2": "Taskplane worker, prefetch 2 (not the default; no target)"}
        for name, label in labels.items():
            r = exe["results"].get(name)
            if r is None:  # results from before the execution floor
                continue
            runs = ", ".join(_fmt(x["tasks_per_s"], "{:,.0f}") for x in r["runs"])
            lines.append(f"| {label} | {_fmt(r['tasks_per_s'], '{:,.0f}')} | {runs} |")
        lines += ["", *_ratio_table(exe, EXEC_RATIO_LABELS), ""]
        if "floor" in exe["results"]:
            lines += ["The execution floor (`bench/baseline/exec_floor.py`) is the fewest Redis "
                      "operations a task that runs at least once and leaves a result can cost: a "
                      "reliable pop (BLMOVE into a processing list), then the result (SET) and the "
                      "acknowledgement (LREM) in one round trip, in as many processes as the pod's "
                      "pool, draining the same Taskplane messages. No worker can pass it; the gap is "
                      "what the worker's own machinery costs.", ""]

    lat = results.get("latency")
    lines += ["## 3. End-to-end latency", ""]
    failed = _failed("Latency", lat)
    if failed:
        lines += failed
    else:
        light, load = lat["light"], lat["at_80pct"]

        def row(label: str, rate: float, block: dict[str, Any]) -> str:
            cells = " | ".join(_fmt(block[k], "{:.1f}") for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))
            return f"| {label} | {rate:g}/s | {block['samples']} | {cells} |"

        lines += [f"{_sentence(lat['what'])}. Capacity: "
                  f"{_fmt(lat['capacity']['tasks_per_s'], '{:,.0f}')} tasks/s "
                  f"({lat['capacity']['how']}).", "",
                  "| Load | Rate | Samples | p50 ms | p90 ms | p99 ms | Max ms |",
                  "|---|---:|---:|---:|---:|---:|---:|",
                  row("Light, polled every 5 ms", light["rate_per_s"], light["polled"]),
                  row("Light, from `finished_at`", light["rate_per_s"], light["finished_at"]),
                  row("80% of capacity, from `finished_at`", load["achieved_rate_per_s"], load), "",
                  f"Light load: {light['how']}. At 80%: {load['how']}; client lag p99 "
                  f"{_fmt(load['client_lag_p99_ms'], '{:.1f}')} ms, submission errors {load['errors']}.", ""]

    cost = results.get("metrics_cost")
    lines += ["## 4. Cost of metrics", ""]
    failed = _failed("Cost of metrics", cost)
    if failed:
        lines += failed
    else:
        lines += [_sentence(cost["what"]) + ".", "",
                  "| Measure | Metrics on | Metrics off | Cost | Per round | Target < 5% |",
                  "|---|---:|---:|---:|---|---|"]
        for name, r in cost["results"].items():
            rounds = ", ".join(f"{x:+.1f}%" for x in r.get("per_round_pct", []))
            lines.append(f"| {name} | {_fmt(r['on'])} | {_fmt(r['off'])} | "
                         f"{_fmt(r['cost_pct'], '{:+.1f}%')} | "
                         f"{rounds} | {_met(r['met'])} |")
        lines.append("")

    mem = results.get("memory")
    lines += ["## 5. Memory", ""]
    failed = _failed("Memory", mem)
    if failed:
        lines += failed
    else:
        lines += [f"{_sentence(mem['what'])}; {mem['seconds']:,.0f} s.", "",
                  f"| Process | Count | Peak RSS MiB | Largest growth {mem['checkpoints'][0]:,} → "
                  f"{mem['checkpoints'][1]:,} | No growth |", "|---|---:|---:|---:|---|"]
        for key, label in (("api_worker", "API (gunicorn) worker"), ("worker_child", "Worker pool child")):
            r = mem[key]
            growth = (f"{r['max_growth_kib']:+,} KiB ({r['max_growth_pct']:+.2f}%)"
                      if r["max_growth_kib"] is not None else "—")
            lines.append(f"| {label} | {r['processes']} | {_fmt(r['peak_rss_mib'])} | {growth} | "
                         f"{_met(r['flat'])} |")
        lines += ["", f"{mem['criterion']}.", ""]

    lines += _profile_section(results)

    auto = results.get("autoscaling")
    lines += ["## Autoscaling", ""]
    failed = _failed("Autoscaling", auto)
    if failed:
        lines += failed
    else:
        hpa = auto["hpa"]
        a, f = auto["autoscaled"], auto["fixed"]
        lines += ["![autoscaling](bench/results/autoscaling.png)", "", _sentence(auto["what"]) + ".", "",
                  f"The HPA, rendered from the chart (`helm template`, overrides: "
                  f"{', '.join(f'`{k}={v}`' for k, v in hpa['chart_overrides'].items()) or 'none'}): "
                  f"{hpa['min_replicas']}-{hpa['max_replicas']} replicas; scale-up "
                  f"{_policies(hpa['scale_up'])}; scale-down {_policies(hpa['scale_down'])}; tolerance "
                  f"{hpa['tolerance']:g}. Metrics, as prometheus-adapter would query them:", ""]
        for metric in hpa["metrics"]:
            lines.append(f"- `{metric['name']}` ({metric['target_type']} {metric['target']:g}): "
                         f"`{metric['promql']}`")
        lines += ["", "| | Autoscaled | One fixed worker |", "|---|---:|---:|",
                  f"| Tasks accepted (burst + trickle) | {a['accepted']:,} | {f['accepted']:,} |",
                  f"| Time to first scale-up | {_fmt(a['time_to_first_scale_up_s'])} s | — |",
                  f"| First added worker ready | {_fmt(a.get('first_added_worker_ready_s'))} s | — |",
                  f"| Time to drain the burst | {_fmt(a['time_to_drain_s'])} s | "
                  f"{_fmt(f['time_to_drain_s'])} s |",
                  f"| Most replicas | {a['max_replicas']} | {f['max_replicas']} |",
                  f"| Scale-downs (SIGTERM) | {len(a['scale_downs'])} | — |",
                  f"| Tasks finished while scaling down | {a['tasks_finished_during_scale_down']:,} | — |",
                  f"| Lost | {a['lost']} | {f['lost']} |",
                  f"| Ran twice | {a['ran_twice']} | {f['ran_twice']} |",
                  f"| Started twice (a run cut short and redone) | {a['started_twice']} | "
                  f"{f['started_twice']} |",
                  "", f"Drain speed-up: **{_fmt(auto.get('speedup'), '{:.2f}')}x**. Scale events: "
                  + "; ".join(f"{e['t']:.0f} s: {e['from']} → {e['to']}"
                              for e in a["scale_ups"] + a["scale_downs"])
                  + ".", ""]
    lines += _followers_section(results.get("followers"))
    lines += _follower_memory_section(results.get("follower_memory"))
    lines += _redis_cost_section(results.get("rediscost"))
    lines += _acks_section(results.get("acks"))
    return "\n".join(lines).rstrip() + "\n"


def _acks_section(acks: dict[str, Any] | None) -> list[str]:
    """Section 9 (``bench/acks.py``): what acknowledged acceptance costs a submit."""
    lines = ["## 9. Acknowledged acceptance", ""]
    failed = _failed("Acknowledged acceptance", acks)
    if failed:
        return lines + failed
    assert acks is not None
    res = acks["results"]
    lines += ["`POST /v1/tasks` through two APIs on one Redis master with one local replica: "
              "`REDIS_MIN_REPLICAS_ACK=1` (each submit answered once the replica confirmed it "
              "with `WAIT`: the default behind Sentinel) against 0, wrk closed loop, "
              "alternating rounds; medians over the rounds. On loopback the replica's round "
              "trip is tiny: a replica in another zone adds its network round trip to every "
              "submit.", "",
              "| `REDIS_MIN_REPLICAS_ACK` | Submits/s | p50 | p99 | Accepted (queued) | Errors |",
              "|---:|---:|---:|---:|---:|---:|"]
    for side in ("ack_1", "ack_0"):
        r = res[side]
        lines.append(f"| {r['replicas_ack']} | {_fmt(r['requests_per_s'], '{:,.0f}')} | "
                     f"{_fmt(r['p50_ms'], '{:.2f}')} ms | {_fmt(r['p99_ms'], '{:.2f}')} ms | "
                     f"{r['queued']:,} | {r['errors']:,} |")
    lines += ["", f"Acknowledged / not: **{_fmt(acks['ack_1_vs_0'], '{:.2f}')}x** the "
                  f"submits/s; p99 {_fmt(acks['p99_added_ms'], '{:+.2f}')} ms.", ""]
    return lines


def _followers_section(fol: dict[str, Any] | None) -> list[str]:
    """Figure 7 (``bench/followers.py``): thousands of ``?wait`` and event-stream followers."""
    lines = ["## 7. Followers", ""]
    failed = _failed("Followers", fol)
    if failed:
        return lines + failed
    assert fol is not None
    where = (f" Measured in its own run (`python -m bench --only followers`, finished "
             f"{fol['finished_at']}, load average {fol['load_average']} at its end)."
             if fol.get("finished_at") else "")
    lines += [f"{fol['streams']:,} event streams and {fol['waits']:,} `?wait=30` requests held "
              f"open at once on one API pod of {fol['api_workers']} gunicorn `gevent` processes "
              f"(all {fol['streams'] + fol['waits']:,} open within "
              f"{_fmt(fol['open_seconds'], '{:.1f}')} s), each on a task due at one common "
              f"moment; then every follower's final answer timed against its task's "
              f"`finished_at`.{where}", "",
              "| Followers | Answered | Missing | After the task ended: p50 | p99 | max |",
              "|---|---:|---:|---:|---:|---:|"]
    for kind, label in (("events", "Event streams"), ("wait", "`?wait=30`")):
        d = fol["delivery"][kind]
        lines.append(f"| {label} | {d['answered']:,} | {d['missing']:,} | "
                     f"{_fmt(d['p50_s'], '{:.3f}')} s | {_fmt(d['p99_s'], '{:.3f}')} s | "
                     f"{_fmt(d['max_s'], '{:.3f}')} s |")
    idle, loaded = fol["submit_idle"], fol["submit_loaded"]
    rss, clients, ceiling = fol["api_rss_mib"], fol["redis_clients"], fol["ceiling"]
    lines += ["", "| | Idle | With every follower open |", "|---|---:|---:|",
              f"| Submit latency p50 (paced, {idle['samples']:,} samples) | "
              f"{_fmt(idle['p50_ms'], '{:.2f}')} ms | {_fmt(loaded['p50_ms'], '{:.2f}')} ms |",
              f"| Submit latency p99 | {_fmt(idle['p99_ms'], '{:.2f}')} ms | "
              f"{_fmt(loaded['p99_ms'], '{:.2f}')} ms |",
              f"| API pod memory (RSS, master + workers) | {_fmt(rss['idle'])} MiB | "
              f"{_fmt(rss['loaded'])} MiB |",
              f"| Redis clients (all) | {clients['idle']:,} | {clients['loaded']:,} |", "",
              f"Per 1,000 followers: **{_fmt(rss['per_1000_followers'])} MiB** of API memory and "
              f"**{_fmt(clients['per_1000_followers'], '{:.2f}')}** Redis clients "
              f"({clients['pubsub']} pub/sub connections in all: one per API process, plus the "
              f"worker's own). Submit p99 loaded / idle: "
              f"**{_fmt(fol['submit_p99_ratio'], '{:.2f}')}x** (target at most 2x: "
              f"{_met(fol['met']['submit_p99_within_2x'])}); every final state within 1 s of "
              f"the task's end: {_met(fol['met']['delivery_within_1s'])}. The pod's follower "
              f"ceiling: `API_WORKERS` x `MAX_FOLLOWERS` = {ceiling['pod']:,} "
              f"({ceiling['max_followers_per_process']:,} per process).", ""]
    classes = fol.get("worker_classes")
    if classes:
        lines += ["The API's worker class, measured on submissions (wrk, interleaved rounds): "
                  "requests/s depend on how much CPU a busy machine grants each side; CPU per "
                  "request is what a submission costs.", "",
                  "| Worker class | Submits/s (rounds) | API CPU per submit (rounds) |",
                  "|---|---:|---:|"]
        for name, c in classes.items():
            cpu = c.get("cpu_us_per_request")
            lines.append(f"| `{name}` | {_fmt(c['requests_per_s'], '{:,.0f}')} "
                         f"({', '.join(_fmt(r, '{:,.0f}') for r in c['rounds'])}) | "
                         f"{_fmt(cpu, '{:,.0f}')} µs "
                         f"({', '.join(_fmt(r, '{:,.0f}') for r in c.get('cpu_rounds', []))}) |")
        lines.append("")
    return lines


def _follower_memory_section(fm: dict[str, Any] | None) -> list[str]:
    """Section 7, continued (``bench/follower_memory.py``): where a follower's memory goes."""
    lines = ["### Memory per follower", ""]
    failed = _failed("Memory per follower", fm)
    if failed:
        return lines + failed
    assert fm is not None
    n, rows = fm["followers"], fm["breakdown"]
    stacks = {("_stream" if "_stream" in r["stack"] else "wait"): r
              for r in fm["rss"].get("stacks", [])}
    lines += [f"One API process (gunicorn `gevent`), {n:,} event streams and then {n:,} `?wait` "
              "held on top of them, each on a task of its own, probed from inside "
              "(`python -m bench --only follower_memory`, `bench/follower_memory.py`, finished "
              f"{fm['finished_at']}, load average {fm['load_average']}): the total is RSS per "
              "follower in a run without tracing; its split comes from a second run under "
              "`tracemalloc`, each allocation charged to the package that made it; the "
              "greenlet's C stack is greenlet's own count of the bytes it saved.", "",
              "| Component | Event stream | `?wait` |", "|---|---:|---:|"]
    for label in rows["streams"]:
        bold = "**" if label.startswith("total") else ""
        lines.append(f"| {bold}{label}{bold} | {bold}{rows['streams'][label]:,} B{bold} | "
                     f"{bold}{rows['waits'][label]:,} B{bold} |")
    floors = fm["floors"]
    held = (", ".join(f"a {'stream' if k == '_stream' else '`?wait`'} {r['frames']} Python "
                      f"frames deep ({r['data_stack_bytes']:,} B of the data stack)"
                      for k, r in stacks.items()) or "none")
    lines += ["", "Followers are detached from their requests (`api/detached.py`): once a "
              "follower is admitted, subscribed and its first answer is ready, its request's "
              "greenlet ends and the process's hub holds the connection (a duplicated "
              "descriptor), a small object, its subscription entry and its socket watch; the "
              "socket's buffers are the kernel's, outside RSS. Greenlets still held per "
              f"follower: {abs(fm['rss']['streams']['greenlets']):g} (streams), "
              f"{abs(fm['rss']['waits']['greenlets']):g} (`?wait`); waiting in a greenlet: "
              f"{held}. The redis-py row is the 64 KiB read buffers of the pool connections "
              "opened during the burst of requests (shared, at most `API_REDIS_CONNECTIONS`); "
              "the untraced row, allocator slack left by those requests' greenlets. Below "
              "Taskplane's stack, a "
              "connection held by a greenlet costs "
              f"**{floors['greenlet']['rss_bytes']:,} B** as a bare gevent greenlet "
              f"(`StreamServer`, an `Event`, 8 calls deep) and **{floors['asyncio']['rss_bytes']:,} "
              "B** as an asyncio coroutine awaiting a future (`bench/follower_floor.py`): "
              "a detached follower is below both, as it holds neither.", "",
              "What was cut (1,000 of each, RSS per follower, measured 2026-12-05 on this "
              "machine): from **34.6 KB** (stream) and **34.2 KB** (`?wait`) to 24.0 KB and "
              "26.0 KB while each follower still held its greenlet (a result backend shared "
              "instead of one per greenlet, ~7 KB; `direct_passthrough` and one copy of the "
              "task; no spawning-stack records, `api/greenlets.py`), then to the totals above "
              "by detaching: the greenlet's C stack (3.8-4.6 KB), its 16 KiB data-stack chunk "
              "(~9 KB untraced), gunicorn's request (~3.9 KB), gevent's greenlet and watchers "
              "(2.2 KB) and Flask's contexts went with the request. What a detached follower "
              "relies on: gunicorn 27's async worker closing only its own socket when the "
              "WSGI callable raises `StopIteration` (`api/handoff.py`, checked by "
              "`tests/integration/test_handoff.py`); TLS, HTTP/2, HTTP/1.0, `HEAD` and "
              "`gthread` keep the greenlet-held path.", "",
              "CPU per submit under `gevent` (wrk, `gevent` and `gthread` rounds interleaved, "
              "3 each, 2026-12-05): **705 µs** against `gthread`'s **804 µs** with the two "
              "cuts of `api/greenlets.py`, 723 µs against 821 µs without them; the +6-25% "
              "measured earlier did not reproduce on a quieter machine. py-spy on a `gevent` "
              "process: what gevent adds is its sockets' `send`/`recv` through the hub and the "
              "hub itself, which go with the worker class, plus two costs nothing needed, now "
              "removed: redis-py's readiness check on every pool checkout was gevent's "
              "`poll` (14.6 µs a call, now the OS's: 3.2 µs), and greenlets recorded their "
              "spawning stack.", ""]
    return lines


# -- ratios and targets -------------------------------------------------------------------

#: Ratio name → (label, format): "x" for a multiple, "%" for a fraction.
ENQUEUE_RATIO_LABELS = {
    "taskplane_vs_floor": ("Taskplane / floor (one LPUSH)", "%"),
    "taskplane_vs_seed": ("Taskplane / blog post", "x"),
    "taskplane_vs_bare": ("Taskplane / bare Flask", "%"),
    "floor_vs_bare": ("Floor / bare Flask", "%"),
    "floor_vs_seed": ("Floor / blog post", "x"),
}
EXEC_RATIO_LABELS = {
    "taskplane_vs_seed": ("Taskplane / blog post", "x"),
    "taskplane_vs_floor": ("Taskplane / floor", "%"),
    "seed_vs_floor": ("Blog post / floor", "%"),
    "taskplane_metrics_off_vs_floor": ("Taskplane, metrics off / floor", "%"),
    "taskplane_prefetch2_vs_seed": ("Taskplane at prefetch 2 / blog post", "x"),
}


#: The sides of "Redis per task", in the table's order, with their short names.
COST_SIDES = {"taskplane": "Taskplane", "taskplane_bare": "Taskplane, bare",
              "celery_acks_late": "Plain Celery, acks late",
              "seed": "The post's worker", "floor": "Floor"}


def _redis_cost_section(cost: dict[str, Any] | None) -> list[str]:
    """Section 8: Redis CPU and commands per task, side by side, and per command."""
    lines = ["## 8. Redis per task", ""]
    failed = _failed("Redis per task", cost)
    if failed:
        return lines + failed
    assert cost is not None
    res, base = cost["results"], cost["baseline"]
    lines += [_sentence(cost["what"]) + f"; {cost['tasks_per_run']:,} tasks per run, "
              f"{cost['rounds']} rounds. The ceiling is what one Redis core carries: "
              "1 / (Redis CPU per task).", ""]
    lines += ["| Side | Redis CPU per task | Commands per task | Ceiling per Redis core | "
              "CPU vs plain Celery acks late (median, per round) |", "|---|---:|---:|---:|---|"]
    for side in COST_SIDES:
        r = res.get(side)
        if r is None:
            continue
        if side == base:
            vs = "1.00x (the yardstick)"
        else:
            name = f"{side}_vs_{base}"
            vs = (f"{_ratio(cost['ratios'].get(name), 'x')} "
                  f"({', '.join(_ratio(x, 'x') for x in cost['per_round_ratios'].get(name, []))})")
        lines.append(f"| {_sentence(r['label'])} | {_fmt(r['cpu_us_per_task'])} µs | "
                     f"{_fmt(r['commands_per_task'])} | {_fmt(r['tasks_per_s_per_core'], '{:,.0f}')} "
                     f"tasks/s | {vs} |")
    for name, target in cost.get("targets", {}).items():
        lines += ["", f"Target: Taskplane's Redis CPU per task at most {_ratio(target, 'x')} plain "
                  f"Celery's with acks late: {_ratio(cost['ratios'].get(name), 'x')}, "
                  f"{_met(cost['met'].get(name))}."]
    lines += ["", _sentence(cost["ratios_how"]) + ". " + _sentence(cost["how"]) + ".", ""]
    # per command: calls and µs (commandstats' own time, network excluded) per task
    commands: dict[str, dict[str, tuple[float, float]]] = {}
    shown = [s for s in COST_SIDES if s in res]
    for side in shown:
        for row in res[side]["commands"]:
            commands.setdefault(row["command"], {})[side] = (row["calls_per_task"], row["usec_per_task"])
    order = sorted(commands, key=lambda c: (-max(v[1] for v in commands[c].values()), c))
    lines += ["Per command (the median round of each side): calls per task / µs per task inside Redis "
              "(`INFO commandstats`; the rest of the CPU is reading and writing the connections).", "",
              "| Command | " + " | ".join(COST_SIDES[s] for s in shown) + " |",
              "|---|" + "---:|" * len(shown)]
    for command in order:
        cells = []
        for side in shown:
            calls, usec = commands[command].get(side, (0.0, 0.0))
            cells.append(f"{calls:g} / {usec:.1f}" if calls else "")
        lines.append(f"| `{command}` | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _ratio(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    return f"{value:.2f}x" if kind == "x" else f"{value:.0%}"


def _ratio_table(section: dict[str, Any], labels: dict[str, tuple[str, str]]) -> list[str]:
    """The ratios (targets first), each with its per-round values when the run has them."""
    ratios, targets, met = section["ratios"], section.get("targets", {}), section.get("met", {})
    per_round = section.get("per_round_ratios")
    names = [n for n in ratios if n in targets] + [n for n in ratios if n not in targets]
    head = "| Ratio | Median | Per round | Target | |" if per_round else "| Ratio | Measured | Target | |"
    rows = [head, "|---|---:|---|---:|---|" if per_round else "|---|---:|---:|---|"]
    for name in names:
        label, kind = labels.get(name, (name, "x"))
        target = f"≥ {_ratio(targets[name], kind)}" if name in targets else ""
        verdict = _met(met.get(name)) if name in targets else ""
        cells = [label, _ratio(ratios[name], kind)]
        if per_round:
            cells.append(", ".join(_ratio(x, kind) for x in per_round.get(name, [])) or "—")
        rows.append("| " + " | ".join([*cells, target, verdict]) + " |")
    if per_round:
        rows += ["", _sentence(section.get("ratios_how", "each side against its baseline in the "
                                                        "same round, median of the rounds")) + "."]
    return rows


def _targets(results: dict[str, Any]) -> list[str]:
    """One table of every target of the run and whether it was met."""
    rows = []
    for key, title, labels in (("enqueue", "Enqueue", ENQUEUE_RATIO_LABELS),
                               ("execution", "Execution", EXEC_RATIO_LABELS)):
        section = results.get(key)
        if not section or "error" in section:
            continue
        for name, target in section.get("targets", {}).items():
            label, kind = labels.get(name, (name, "x"))
            rows.append(f"| {title}: {label} | {_ratio(section['ratios'].get(name), kind)} | "
                        f"≥ {_ratio(target, kind)} | {_met(section['met'].get(name))} |")
    redis_cost = results.get("rediscost")
    if redis_cost and "error" not in redis_cost:
        for name, target in redis_cost.get("targets", {}).items():
            rows.append(f"| Redis CPU per task: Taskplane / plain Celery acks late | "
                        f"{_ratio(redis_cost['ratios'].get(name), 'x')} | ≤ {_ratio(target, 'x')} | "
                        f"{_met(redis_cost['met'].get(name))} |")
    cost = results.get("metrics_cost")
    if cost and "error" not in cost:
        worst = max((abs(r["cost_pct"]) for n, r in cost["results"].items() if "/s" in n), default=None)
        rows.append(f"| Cost of metrics (throughput, worst) | {_fmt(worst, '{:.1f}%')} | "
                    f"< {cost['target_pct']:g}% | {_met(cost['met'])} |")
    mem = results.get("memory")
    if mem and "error" not in mem:
        flat = mem["api_worker"]["flat"] and mem["worker_child"]["flat"]
        rows.append(f"| Memory flat over {mem['tasks']:,} tasks | "
                    f"{'flat' if flat else 'grew'} | flat | {_met(flat)} |")
    if not rows:
        return []
    lines = ["| Goal | Measured | Target | |", "|---|---:|---:|---|", *rows, ""]
    if any(key in results and "error" not in results[key] and "per_round_ratios" not in results[key]
           for key in ("enqueue", "execution")):
        lines += ["*These results predate the per-round ratios, the execution floor and the profiled "
                  "round: the targets above are the ones that run was measured against; `make bench` "
                  "measures the current ones (`bench/figures.py`).*", ""]
    return lines


# -- where the time goes ------------------------------------------------------------------

def _profile_table(prof: dict[str, Any]) -> list[str]:
    unit = prof["unit"]
    rows = [f"| Component | Share of CPU | µs per {unit} | Hottest frames (share of CPU) |",
            "|---|---:|---:|---|"]
    for c in prof["components"]:
        frames = "; ".join(f"`{f['frame']}` {f['share_pct']:.1f}%" for f in c.get("top_frames", []))
        rows.append(f"| {c['component']} | {c['share_pct']:.1f}% | {_fmt(c['us_per_unit'], '{:,.0f}')} | "
                    f"{frames} |")
    rows.append(f"| **total** | 100% | **{_fmt(prof['cpu_us_per_unit'], '{:,.0f}')}** | |")
    procs = "; ".join(f"{role}: {_fmt(p['us_per_unit'], '{:,.0f}')} µs per {unit}, "
                      f"{_fmt(p['cores_busy'], '{:.2f}')} cores busy"
                      for role, p in prof["processes"].items())
    rows += ["", f"{prof['units']:,} {unit}s in {prof['seconds']:g} s under the profiler "
                 f"({_fmt(prof['units_per_s_under_profiler'], '{:,.0f}')}/s, slower than unprofiled: "
                 f"not counted above), {prof['samples']:,} samples; `{prof['profiler']}`. "
                 f"Processes: {procs}."]
    red = prof.get("redis")
    if red:
        top = ", ".join(f"{c['command'].upper()} {c['calls_per_unit']:.2f}/{unit} "
                        f"({c['usec_per_unit']:,.1f} µs)" for c in red["commands"][:6])
        rows += ["", f"Redis server: **{_fmt(red['cpu_us_per_unit'], '{:,.0f}')} µs CPU per {unit}**, "
                     f"{red['commands_per_unit']:.1f} commands per {unit} (inside scripts included); "
                     f"the costliest: {top}."]
    return rows


def _profile_section(results: dict[str, Any]) -> list[str]:
    lines = ["## 6. Where the time goes", ""]
    found = [(k, (results.get(k) or {}).get("profile")) for k in ("enqueue", "execution")]
    if not any(p for _, p in found):
        return [*lines, "*Not in this run: its results predate the profiled round.*", ""]
    lines += ["After the measured rounds of figures 1 and 2, one more round of Taskplane (metrics on) "
              "runs under py-spy (`bench/cpu_profile.py`), and one of the baseline its target is set "
              "against (the floor, the post's worker). Each sample is the stack of the thread "
              "holding its process's GIL, given to the component of its innermost frame that the "
              "component table (`API`, `WORKER`) recognises; the processes' user CPU time (from "
              "/proc) is split by those shares, and their system time is the kernel row (socket "
              "I/O, polling and locks of every component). µs per request or task = share x CPU "
              "time of the round / requests or tasks in it.", ""]
    for key, title in (("enqueue", "### Per request: `POST /v1/tasks`"),
                       ("execution", "### Per task: a worker pod draining no-op tasks")):
        prof = dict(found)[key]
        lines += [title, ""]
        if not prof:
            lines += ["*Not run.*", ""]
        elif "error" in prof:
            lines += [f"*The profiled round failed: `{prof['error'][:300]}`*", ""]
        else:
            lines += [_sentence(prof["what"]) + ".", "", *_profile_table(prof), ""]
            base = (results.get(key) or {}).get("profile_baseline")
            if base and "error" not in base:
                lines += _comparison(key, results[key], prof, base)
    return lines


#: Per figure: the ratio with the target, the baseline's name, the unit, the baseline's
#: side in the results and the rate's key.
_BASELINES = {
    "enqueue": ("taskplane_vs_floor", "the floor", "request", "floor", "requests_per_s"),
    "execution": ("taskplane_vs_seed", "the post's worker", "task", "seed", "tasks_per_s"),
}


def _total(prof: dict[str, Any]) -> float:
    """CPU µs per unit of the profiled processes and of Redis together."""
    return float(prof["cpu_us_per_unit"]) + float((prof.get("redis") or {}).get("cpu_us_per_unit", 0.0))


def _comparison(key: str, figure: dict[str, Any], prof: dict[str, Any],
                base: dict[str, Any]) -> list[str]:
    """Taskplane's profile next to its baseline's, component by component, and the CPU a
    unit may cost for the target to hold if CPU were all that limited both."""
    ratio_name, label, unit, side, rate_key = _BASELINES[key]
    target = (figure.get("targets") or {}).get(ratio_name)
    ours = {c["component"]: c["us_per_unit"] for c in prof["components"]}
    theirs = {c["component"]: c["us_per_unit"] for c in base["components"]}
    names = sorted(set(ours) | set(theirs), key=lambda n: -(ours.get(n, 0.0) - theirs.get(n, 0.0)))
    rows = [f"The same round for {label}, component by component (µs per {unit}): "
            f"{base['what']}.", "",
            f"| Component | Taskplane | {label[0].upper() + label[1:]} | Difference |",
            "|---|---:|---:|---:|"]
    for name in names:
        a, b = ours.get(name, 0.0), theirs.get(name, 0.0)
        rows.append(f"| {name} | {a:,.0f} | {b:,.0f} | {a - b:+,.0f} |")
    ra = float((prof.get("redis") or {}).get("cpu_us_per_unit", 0.0))
    rb = float((base.get("redis") or {}).get("cpu_us_per_unit", 0.0))
    rows.append(f"| Redis server | {ra:,.0f} | {rb:,.0f} | {ra - rb:+,.0f} |")
    ta, tb = _total(prof), _total(base)
    rows.append(f"| **total** | **{ta:,.0f}** | **{tb:,.0f}** | **{ta - tb:+,.0f}** |")
    rows.append("")
    if target:
        budget = tb / float(target)
        rows.append(
            f"Both sides share this machine's 2 cores with Redis, so the CPU one {unit} costs "
            f"bounds its rate. For Taskplane to reach {target:g}x {label}'s rate on CPU alone, "
            f"a {unit} may cost at most {tb:,.0f} / {target:g} = **{budget:,.0f} µs**; it costs "
            f"**{ta:,.0f} µs** ({ta / budget:.0%} of that budget). The rows above show where the "
            "difference lies.")
        results = figure.get("results") or {}
        ours_rate = (results.get("taskplane") or {}).get(rate_key)
        their_rate = (results.get(side) or {}).get(rate_key)
        if ours_rate and their_rate:
            rows[-1] += (
                f" At their measured rates (medians above) these costs keep "
                f"{ours_rate * ta / 1e6:.2f} cores busy for Taskplane and "
                f"{their_rate * tb / 1e6:.2f} for {label}, of the machine's 2: a side well under "
                "2 is held by waiting, not by CPU.")
        rows.append("")
    return rows


def _restarts(enq: dict[str, Any]) -> int:
    return sum(run.get("attempts", 1) - 1 for side in enq["results"].values() for run in side["runs"])


def _policies(rules: dict[str, Any]) -> str:
    pols = ", ".join(f"{p['value']}{'%' if p['type'] == 'Percent' else ' pods'} per {p['period_seconds']} s"
                     for p in rules["policies"])
    return f"{pols} ({rules['select_policy']}), window {rules['stabilization_window_seconds']} s"


def section(results: dict[str, Any]) -> str:
    """The generated part of BENCHMARKS.md, markers included."""
    return f"{BEGIN}\n{render(results)}{END}\n"


def current_section(markdown: Path) -> str | None:
    """The generated part as the file holds it now, or None if it has none."""
    text = markdown.read_text()
    if BEGIN not in text or END not in text:
        return None
    return BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END + "\n"


def write(results: dict[str, Any], markdown: Path) -> Path:
    generated = section(results)
    if markdown.exists():
        text = markdown.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            tail = rest.split(END, 1)[1].lstrip("\n")
            text = head + generated + tail
        else:
            text = text.rstrip() + "\n\n" + generated
    else:
        text = INTRO + generated
    markdown.write_text(text)
    return markdown


def main(argv: list[str]) -> int:
    source = Path(argv[0]) if argv else RESULTS
    target = Path(argv[1]) if len(argv) > 1 else MARKDOWN
    print(write(json.loads(source.read_text()), target))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

