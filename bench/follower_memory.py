"""Where a follower's memory goes: one API process under gevent, probed from inside.

Followers there are detached (``api/detached.py``): their requests' greenlets have ended,
and what stays is the hub's small object, the subscription entry, the socket watch and the
kernel's socket (not in RSS). The greenlet columns below stay, to show a held follower.

``python -m bench.follower_memory --followers 500`` serves the API (one gunicorn ``gevent``
process, ``bench/memprobe_conf.py``) on a private Redis, warms it up (followers opened and
closed, so pools, caches and free lists are filled), then opens ``--followers`` event
streams, then as many ``?wait``, each on its own parked task, and probes the process at
each step: RSS, glibc's heap, Python's traced allocations (``tracemalloc``, by component),
live objects by type, and every greenlet's saved C stack and Python frames. Differences
from the warm baseline, divided by the followers open, are the per-follower figures of
BENCHMARKS.md section 7 ("Memory per follower"). ``--frames 0`` skips ``tracemalloc`` (RSS
without its overhead). Prints JSON (``--out`` writes it too).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support.procs import Proc, free_port

from . import follower_floor
from .figures import NOOP_BODY, SUBMIT_PATH, metric_total, scrape
from .followers import Crowd
from .loadgen import Client
from .machine import load_average
from .stack import ROOT, Stack

QUEUE = "parked"
BATCH = 50
#: tracemalloc's depth in the traced run: enough to reach the package that allocated.
TRACE_FRAMES = 12


def _followers_open(api: Proc) -> float:
    try:
        return metric_total(scrape(api.base + "/metrics"), "taskplane_api_followers_open")
    except OSError:
        return -1


def _until_open(api: Proc, count: int, timeout: float = 120) -> None:
    api.wait_until(lambda: _followers_open(api) == count, timeout, f"{count} followers open",
                   interval=0.2)


def _probe(api: Proc, out: Path, name: str, frames: bool = False,
           timeout: float = 120) -> dict[str, Any]:
    (out / f"{name}.req").write_text("frames" if frames else "")
    api.wait_until((out / f"{name}.json").exists, timeout, f"probe {name}'s answer",
                   interval=0.1)
    report: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
    if "error" in report:
        raise RuntimeError(f"probe {name}: {report['error']}")
    return report


def _component(tb: tracemalloc.Traceback) -> str:
    """Who allocated: the innermost frame's package; an allocation inside the standard
    library is charged to the first package outside it (named with the module)."""
    stdlib = None
    for frame in reversed(tb):  # innermost first
        path = frame.filename
        if "site-packages/" in path:
            pkg = path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
            return f"{pkg} ({stdlib})" if stdlib else pkg
        if "/taskplane/" in path:
            mod = "taskplane." + path.split("/taskplane/", 1)[1].removesuffix(".py").replace("/", ".")
            return f"{mod} ({stdlib})" if stdlib else mod
        if stdlib is None:
            stdlib = Path(path).stem
    return f"stdlib {stdlib}" if stdlib else "?"


def _by_component(snapshot: tracemalloc.Snapshot) -> Counter[str]:
    snapshot = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__),
                                       tracemalloc.Filter(False, "*/memprobe_conf.py",
                                                          all_frames=True)])
    sizes: Counter[str] = Counter()
    for stat in snapshot.statistics("traceback"):
        sizes[_component(stat.traceback)] += stat.size
    return sizes


def _per(before: dict[str, Any], after: dict[str, Any], out: Path, n: int) -> dict[str, Any]:
    """What ``n`` followers added, per follower."""
    st_a, st_b = after["status"], before["status"]
    gr_a, gr_b = after["greenlets"], before["greenlets"]
    result: dict[str, Any] = {
        "followers": n,
        "rss_bytes": round((st_a["VmRSS"] - st_b["VmRSS"]) * 1024 / n),
        "rss_anon_bytes": round((st_a["RssAnon"] - st_b["RssAnon"]) * 1024 / n),
        "mappings": round((st_a["mappings"] - st_b["mappings"]) / n, 2),
        "malloc_in_use_bytes": round((after["malloc"]["in_use"] - before["malloc"]["in_use"]) / n),
        "greenlets": round((gr_a["count"] - gr_b["count"]) / n, 2),
        "greenlet_stack_saved_bytes": round((gr_a["stack_saved"] - gr_b["stack_saved"]) / n),
        "objects": {t: round((c - before["types"].get(t, 0)) / n, 2)
                    for t, c in after["types"].items()
                    if (c - before["types"].get(t, 0)) / n >= 0.5},
    }
    if after.get("tracemalloc"):
        result["traced_bytes"] = round((after["traced"] - before["traced"]) / n)
        name_a, name_b = (out / f"{after['name']}.tm"), (out / f"{before['name']}.tm")
        snap_a, snap_b = tracemalloc.Snapshot.load(str(name_a)), tracemalloc.Snapshot.load(str(name_b))
        comp_a, comp_b = _by_component(snap_a), _by_component(snap_b)
        result["traced_by_component"] = dict(sorted(
            ((c, round((comp_a[c] - comp_b.get(c, 0)) / n)) for c in comp_a
             if abs(comp_a[c] - comp_b.get(c, 0)) / n >= 16), key=lambda kv: -kv[1]))
        result["traced_top_lines"] = [  # innermost line
            {"where": f"{Path(s.traceback[-1].filename).name}:{s.traceback[-1].lineno}",
             "bytes": round(s.size_diff / n), "blocks": round(s.count_diff / n, 2)}
            for s in snap_a.compare_to(snap_b, "lineno")[:15]]
    return result


def measure(stack: Stack, n: int, frames: int) -> dict[str, Any]:
    """``n`` streams then ``n`` waits on one probed API process of ``stack`` (its Redis)."""
    out = Path(tempfile.mkdtemp(prefix="memprobe-", dir=stack.workdir))
    port = free_port()
    env = stack.env(API_PORT=port, API_WORKERS=1, QUEUES=QUEUE, MAX_FOLLOWERS=max(3000, n),
                    API_WORKER_CONNECTIONS=max(4000, n + 1000),
                    MAX_FOLLOWERS_PER_TENANT=max(3000, n), METRICS_ENABLED="true",
                    PROMETHEUS_MULTIPROC_DIR=stack.metrics_dir("api-mem"),
                    MEMPROBE_DIR=str(out), MEMPROBE_FRAMES=frames,
                    # tracemalloc slows every request: no 503 for a pool wait meanwhile
                    REDIS_TIMEOUT=30, MAX_WAIT=600)
    api = stack.spawn("api-mem", [sys.executable, "-m", "gunicorn", "-c",
                                  "python:bench.memprobe_conf"], env, cwd=ROOT, port=port,
                      probe="/healthz")
    api.wait_http().wait_children(1).wait_log("memprobe ready")
    warm = min(n, 25)
    sub = Client(api.base, stack.token)
    ids = []
    for _ in range(2 * n + 2 * warm):  # each follower its own task
        status, body = sub.request("POST", SUBMIT_PATH, {**NOOP_BODY, "queue": QUEUE})
        assert status == 202, body
        ids.append(body["id"])
    sub.close()

    held = 0

    def crowd(kind: str, tasks: list[str]) -> Crowd:
        """Followers opened in batches (a traced process is slow to admit them)."""
        nonlocal held
        c = Crowd(api.base, stack.token)
        for i, task_id in enumerate(tasks, 1):
            c.open(kind, task_id, wait=600)
            if i % BATCH == 0 or i == len(tasks):
                _until_open(api, held + (i - 1) % BATCH + 1)
                held = _followers_open(api)
        return c

    for _ in range(2):  # warm: pools, caches and lazily built objects, at a small size
        c = crowd("events", ids[:warm])
        c2 = crowd("wait", ids[warm:2 * warm])
        c.close()
        c2.close()
        _until_open(api, 0)
        held = 0
    # streams, then waits on top of them: nothing is freed between two probes, so no
    # follower reuses memory another one left (which would hide its cost)
    probes: dict[str, Any] = {"base": {**_probe(api, out, "base"), "name": "base"}}
    streams = crowd("events", ids[2 * warm:2 * warm + n])
    time.sleep(1)  # the last ones' first writes and switches settle
    probes["streams"] = {**_probe(api, out, "streams"), "name": "streams"}
    waits = crowd("wait", ids[2 * warm + n:2 * warm + 2 * n])
    time.sleep(1)
    probes["waits"] = {**_probe(api, out, "waits"), "name": "waits"}
    # the frames each kind waits in (this materialises frame objects: last, and apart)
    stacks = _probe(api, out, "stacks", frames=True)["greenlets"]["stacks"]
    streams.close()
    waits.close()
    _until_open(api, 0)
    probes["after"] = {**_probe(api, out, "after"), "name": "after"}
    result = {
        "followers": n, "tracemalloc_frames": frames,
        "base": {"rss_kib": probes["base"]["status"]["VmRSS"],
                 "greenlets": probes["base"]["greenlets"]["count"]},
        "streams": _per(probes["base"], probes["streams"], out, n),
        "waits": _per(probes["streams"], probes["waits"], out, n),
        "stacks": [row for row in stacks if row["count"] >= n // 2],
        "left_after_close_bytes": round((probes["after"]["status"]["VmRSS"]
                                         - probes["base"]["status"]["VmRSS"]) * 1024 / n),
    }
    stack.stop(api)
    return result


#: The rows of the breakdown: traced components (``_component``) by what they hold. A
#: detached follower (``api/detached.py``) keeps nothing of its request: the first row is
#: what is left of gunicorn, gevent and Flask per follower (about nothing once detached; a
#: greenlet-held follower's request, parser, contexts and watchers otherwise).
GROUPS = (
    ("the request: gunicorn, gevent, Flask and werkzeug (gone once detached)", (
        "gunicorn", "gevent", "flask", "werkzeug")),
    ("redis-py: reply buffers (shared, grown with load)", ("redis",)),
    ("Taskplane: the detached follower (descriptor, event id, deadline, timer)", (
        "taskplane.api.detached", "taskplane.api.handoff")),
    ("Taskplane: slot, URL, subscription entry, socket watch", (
        "taskplane.api.dispatch", "taskplane.api.follow", "taskplane.api.gone",
        "taskplane.api.routes", "taskplane.lifecycle", "taskplane.api.status")),
)
#: The row charged with the greenlet's saved C stack by ``tracemalloc`` (the line that
#: switched away is in ``dispatch.py``), so the stack is counted once, in its own row.
_SWITCHED_IN = "Taskplane: slot, URL, subscription entry, socket watch"


def breakdown(rss: dict[str, Any], traced: dict[str, Any]) -> dict[str, int]:
    """Bytes per follower by component: the RSS run's total, split with the traced run's
    components, a held greenlet's saved C stack apart (none once detached), and the rest
    as untraced memory."""
    comps: dict[str, int] = dict(traced["traced_by_component"])
    stack_saved = max(0, rss["greenlet_stack_saved_bytes"])
    rows: dict[str, int] = {"greenlet: its C stack, copied out while it waits": stack_saved}
    taken: set[str] = set()
    for label, prefixes in GROUPS:
        names = [c for c in comps if c not in taken and c.startswith(prefixes)]
        taken.update(names)
        rows[label] = sum(comps[c] for c in names)
    rows[_SWITCHED_IN] -= stack_saved
    rows["other traced Python objects"] = sum(v for c, v in comps.items() if c not in taken)
    rows["untraced: allocator slack (and a held greenlet's 16 KiB data-stack chunk)"] = (
        rss["rss_bytes"] - traced["traced_bytes"])
    rows["total (RSS)"] = rss["rss_bytes"]
    return rows


def memory_per_follower(stack: Stack, sizes: Any, rep: logging.Logger) -> dict[str, Any]:
    """BENCHMARKS.md section 7, "Memory per follower": an RSS run (no tracing), a traced
    run (its components), and the floors below Taskplane's stack (``follower_floor.py``)."""
    n = sizes.follower_memory
    rep.info(f"follower memory: {n:,} streams and {n:,} waits on one process, RSS")
    rss = measure(stack, n, frames=0)
    rep.info("follower memory: again under tracemalloc, by component")
    traced = measure(stack, n, frames=TRACE_FRAMES)
    floors = {}
    for kind in ("greenlet", "asyncio"):
        rep.info(f"follower memory: the {kind} floor")
        floors[kind] = follower_floor.measure(kind, max(n, 50))
    return {
        "followers": n, "rss": rss, "traced": traced, "floors": floors,
        "breakdown": {kind: breakdown(rss[kind], traced[kind]) for kind in ("streams", "waits")},
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average": load_average(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.follower_memory",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--followers", type=int, default=500, help="followers of each kind")
    parser.add_argument("--frames", type=int, default=TRACE_FRAMES,
                        help="tracemalloc depth (0: no tracemalloc, RSS only)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--keep", type=Path, default=None, help="keep logs and snapshots here")
    args = parser.parse_args(argv)
    with Stack(keep_logs=args.keep is not None, workdir=args.keep) as stack:
        stack.start_redis()
        result = measure(stack, args.followers, args.frames)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
