"""gunicorn settings for measuring a follower's memory: Taskplane's own, plus a probe.

``bench/follower_memory.py`` serves the API with ``-c python:bench.memprobe_conf``. Each
worker starts ``tracemalloc`` (``MEMPROBE_FRAMES`` frames deep, 0 for none) before it
serves anything, and a probe (a thread, so a greenlet under gevent) that answers a request
file ``MEMPROBE_DIR/<name>.req`` with ``<name>.json`` (RSS, glibc's heap, greenlets and
their saved C stacks and Python frames, live objects by type) and ``<name>.tm`` (the
tracemalloc snapshot). Nothing here is loaded in production.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

from taskplane.api import gunicorn_conf as _base
from taskplane.api.gunicorn_conf import *  # noqa: F403 - Taskplane's settings, unchanged

_CO_HEAP_FRAME = 0x20 | 0x80 | 0x200  # generator, coroutine, async generator: heap frames
_FRAME_SPECIALS = 9  # words of a 3.11 _PyInterpreterFrame besides its locals and stack
_WORD = 8


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _malloc() -> dict[str, int]:
    """glibc's heap: bytes in use (``uordblks`` + ``hblkhd``) and held (``arena``)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    return {"in_use": info.uordblks + info.hblkhd, "arena": info.arena, "mmapped": info.hblkhd}


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmData"):
                out[key] = int(value.split()[0])
    with open("/proc/self/maps") as fh:
        out["mappings"] = sum(1 for _ in fh)
    return out


def _greenlets(frames: bool) -> dict[str, Any]:
    """Every greenlet's saved C stack; with ``frames``, also the Python frames each is
    suspended in, by stack: those on the 3.11 data stack (``data_stack_bytes``) and those in
    generators' own objects. Reading ``gr_frame`` materialises frame objects that stay while
    the frames live, so only a driver's last probe asks for frames."""
    from greenlet import greenlet

    gs = [o for o in gc.get_objects() if isinstance(o, greenlet)]
    out: dict[str, Any] = {"count": len(gs),
                           "stack_saved": sum(getattr(g, "_stack_saved", 0) for g in gs)}
    if not frames:
        return out
    stacks: dict[str, dict[str, int]] = {}
    for g in gs:
        frame, depth, words, names = g.gr_frame, 0, 0, []
        while frame is not None:
            code = frame.f_code
            depth += 1
            names.append(f"{Path(code.co_filename).name}:{code.co_name}")
            if not code.co_flags & _CO_HEAP_FRAME:
                words += (code.co_nlocals + len(code.co_cellvars) + len(code.co_freevars)
                          + code.co_stacksize + _FRAME_SPECIALS)
            frame = frame.f_back
        row = stacks.setdefault(" < ".join(names[:40]), {"count": 0, "frames": depth,
                                                         "data_stack_bytes": words * _WORD,
                                                         "stack_saved": 0})
        row["count"] += 1
        row["stack_saved"] += getattr(g, "_stack_saved", 0)
    rows = sorted(stacks.items(), key=lambda kv: -kv[1]["count"])[:8]
    out["stacks"] = [{"stack": k, **v, "stack_saved": v["stack_saved"] // v["count"]}
                     for k, v in rows]
    return out


def _types() -> dict[str, int]:
    return dict(Counter(type(o).__qualname__ for o in gc.get_objects()).most_common(80))


def probe(out: Path, name: str, frames: bool = False) -> None:
    gc.collect()
    report: dict[str, Any] = {"pid": os.getpid(), "at": time.time(), "status": _status(),
                              "malloc": _malloc(), "tracemalloc": tracemalloc.is_tracing()}
    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(str(out / f"{name}.tm"))
        report["traced"] = tracemalloc.get_traced_memory()[0]
    report["types"] = _types()
    report["greenlets"] = _greenlets(frames)
    tmp = out / f"{name}.json.tmp"
    tmp.write_text(json.dumps(report))
    tmp.rename(out / f"{name}.json")


def _serve(out: Path) -> None:
    while True:
        for req in sorted(out.glob("*.req")):
            name, frames = req.stem, req.read_text() == "frames"
            req.unlink()
            try:
                probe(out, name, frames)
            except Exception as exc:  # report it to the driver, keep serving
                (out / f"{name}.json").write_text(json.dumps({"error": repr(exc)}))
        time.sleep(0.1)


def post_worker_init(worker: Any) -> None:
    _base.post_worker_init(worker)
    frames = int(os.environ.get("MEMPROBE_FRAMES", "0"))
    if frames:
        tracemalloc.start(frames)
    import threading

    out = Path(os.environ["MEMPROBE_DIR"])
    threading.Thread(target=_serve, args=(out,), name="memprobe", daemon=True).start()
    print(f"memprobe ready in {os.getpid()} ({sys.version.split()[0]})", flush=True)
