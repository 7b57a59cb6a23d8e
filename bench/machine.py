"""What the benchmark ran on: CPUs, memory, OS, load, and the version of everything measured."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

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
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


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
    prometheus = shutil.which("prometheus")
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
            "redis-server": _version(_first_line([shutil.which("redis-server") or "redis-server",
                                                  "--version"])),
            "redis-benchmark": _version(redis_benchmark_version()),
            "wrk": _version(wrk_version()),
            "prometheus": _version(_first_line([prometheus, "--version"])) if prometheus else "missing",
            "helm": _version(helm),
        },
    }
