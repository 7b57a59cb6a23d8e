"""``taskplane dev``: the whole platform on one machine, stopped by one Ctrl-C.

Starts Redis (unless ``REDIS_URL`` names one), the API, a worker, the scheduler and
the queue exporter under honcho, which stops all of them when any one exits or on
Ctrl-C. Settings already in the environment win.

Two stacks live side by side (two clones, one machine): every port whose default is
taken falls back to a free one, and the banner says so. The stack says where it is in
``.run/env``, a file a shell can source (``REDIS_URL``, ``API_URL``, the tokens, every
metrics URL), which ``make celery`` and ``make flower`` read so they reach this stack
and no other. A development tenant token and an operator token (who sees every tenant,
``system`` included: what stock Celery clients sent) are made when none are configured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .localproc import (
    LOOPBACK,
    MissingBinary,
    port_or_free,
    prometheus_command,
    prometheus_config,
    redis_command,
)
from .settings import Settings

__all__ = ["ENV_FILE", "RULE_FILES", "RUN_DIR", "Plan", "banner", "env_file", "main", "plan",
           "prometheus_config"]

#: Where the stack keeps Redis data, its tokens and ``env`` between runs (relative to the
#: directory ``make run`` runs in: each clone has its own).
RUN_DIR = Path(".run")
#: The file a shell sources to reach this stack (``. .run/env``).
ENV_FILE = "env"
#: Rule files a local Prometheus loads (paths relative to the repository root).
RULE_FILES = ("monitoring/rules/taskplane.rules.yaml",)
#: Tenant of the development token, and name of the operator (API_ADMIN_TOKENS).
DEV_TENANT, DEV_OPERATOR = "dev", "ops"
#: Redis' and Prometheus' usual ports; Taskplane's own come from ``Settings``' defaults.
REDIS_PORT, PROMETHEUS_PORT = 6379, 9090

#: What each port serves, by the setting that holds it: banner, env file and fallbacks.
SERVED_PORTS = {
    "API_PORT": "API",
    "EXPORTER_PORT": "exporter",
    "WORKER_METRICS_PORT": "worker",
    "SCHEDULER_METRICS_PORT": "scheduler",
}


def _default(env_name: str) -> int:
    """A port setting's documented default (settings.py is the one source)."""
    f = next(f for f in dataclasses.fields(Settings) if f.metadata["env"] == env_name)
    assert isinstance(f.default, int), env_name
    return f.default


@dataclass
class Plan:
    """What ``taskplane dev`` will run: commands, their shared environment, what it made."""

    procs: dict[str, str]
    env: dict[str, str]
    #: The private Redis' command line (none when ``REDIS_URL`` names one): started before
    #: and stopped after the rest, so a worker stops warm, with its broker still there.
    redis: list[str] | None = None
    token: str = ""
    operator_token: str = ""
    #: ``what → (default port, port taken instead)`` for every default that was busy.
    fallbacks: dict[str, tuple[int, int]] = field(default_factory=dict)
    run_dir: Path = RUN_DIR

    def urls(self) -> dict[str, str]:
        """The variables of ``.run/env``, in the order they are printed."""
        host = f"http://{LOOPBACK}"
        out = {
            "REDIS_URL": self.env["REDIS_URL"],
            "API_URL": f"{host}:{self.env['API_PORT']}",
            "TOKEN": self.token,
            "OPERATOR_TOKEN": self.operator_token,
            "API_METRICS_URL": f"{host}:{self.env['API_PORT']}/metrics",
            "EXPORTER_METRICS_URL": f"{host}:{self.env['EXPORTER_PORT']}/metrics",
            "WORKER_METRICS_URL": f"{host}:{self.env['WORKER_METRICS_PORT']}/metrics",
            "SCHEDULER_METRICS_URL": f"{host}:{self.env['SCHEDULER_METRICS_PORT']}/metrics",
        }
        if "PROMETHEUS_PORT" in self.env:
            out["PROMETHEUS_URL"] = f"{host}:{self.env['PROMETHEUS_PORT']}"
        # the CLI's own names (client_cli.py), so `taskplane ls` works after `. .run/env`
        out["TASKPLANE_URL"] = out["API_URL"]
        out["TASKPLANE_TOKEN"] = self.token
        return out


def _private(path: Path, text: str) -> None:
    """Write ``path`` readable by its owner only from the first byte (it holds tokens)."""
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
        fh.write(text)


def _token(path: Path) -> str:
    """The token kept in ``path``, made on first use."""
    if not path.exists():
        _private(path, secrets.token_urlsafe(24))
    return path.read_text().strip()


def _port(env: dict[str, str], name: str, default: int, what: str,
          fallbacks: dict[str, tuple[int, int]]) -> int:
    """Set ``env[name]``: the user's value when given, else ``default`` or a free port."""
    if not env.get(name):
        port = port_or_free(default)
        if port != default:
            fallbacks[what] = (default, port)
        env[name] = str(port)
    return int(env[name])


def plan(env: dict[str, str], monitor: bool = False, run_dir: Path = RUN_DIR) -> Plan:
    """Work out the processes to run and the environment they share."""
    env = dict(env)
    procs: dict[str, str] = {}
    redis: list[str] | None = None
    fallbacks: dict[str, tuple[int, int]] = {}
    run_dir.mkdir(exist_ok=True)
    if not env.get("REDIS_URL"):
        port = _port({}, "REDIS_PORT", REDIS_PORT, "Redis", fallbacks)
        data = run_dir / "redis"
        data.mkdir(exist_ok=True)
        env["REDIS_URL"] = f"redis://{LOOPBACK}:{port}/0"
        redis = redis_command(port, data, "--appendonly", "yes", "--appendfsync", "everysec",
                              "--save", "", "--maxmemory-policy", "noeviction")
    auth = env.get("AUTH_DISABLED", "").lower() not in ("1", "true")
    token = operator = ""
    if auth and not env.get("API_TOKENS"):
        token = _token(run_dir / "dev-token")
        env["API_TOKENS"] = f"{DEV_TENANT}:{token}"
    if auth and not env.get("API_ADMIN_TOKENS"):
        operator = _token(run_dir / "operator-token")
        env["API_ADMIN_TOKENS"] = f"{DEV_OPERATOR}:{operator}"
    for name, what in SERVED_PORTS.items():
        _port(env, name, _default(name), what, fallbacks)
    env.setdefault("PYTHONUNBUFFERED", "1")
    taskplane = shlex.quote(str(Path(sys.executable).parent / "taskplane"))
    for name in ("api", "worker", "exporter", "scheduler"):
        procs[name] = f"{taskplane} {name}"
    if monitor:
        _port(env, "PROMETHEUS_PORT", PROMETHEUS_PORT, "Prometheus", fallbacks)
        config = run_dir / "prometheus.yml"
        config.write_text(prometheus_config({
            "taskplane-api": f"{LOOPBACK}:{env['API_PORT']}",
            "taskplane-worker": f"{LOOPBACK}:{env['WORKER_METRICS_PORT']}",
            "taskplane-exporter": f"{LOOPBACK}:{env['EXPORTER_PORT']}",
            "taskplane-scheduler": f"{LOOPBACK}:{env['SCHEDULER_METRICS_PORT']}",
        }, [str(Path(p).resolve()) for p in RULE_FILES]))
        procs["prometheus"] = shlex.join(prometheus_command(
            config, run_dir / "prometheus", int(env["PROMETHEUS_PORT"])))
    return Plan(procs, env, redis, token, operator, fallbacks, run_dir)


def env_file(p: Plan) -> str:
    """``.run/env``: ``export NAME='value'`` lines any POSIX shell can source."""
    lines = ["# Written by `taskplane dev` (make run) while this stack runs; removed when it stops.",
             "# . .run/env && celery --broker=\"$REDIS_URL\" inspect ping",
             f"export STACK_PID={os.getpid()}"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in p.urls().items()]
    return "\n".join(lines) + "\n"


def banner(p: Plan) -> str:
    urls = p.urls()
    base = urls["API_URL"]
    auth = "-H \"Authorization: Bearer $TOKEN\" " if p.token else ""
    env_path = p.run_dir / ENV_FILE
    taken = [f"  {what}: port {default} is taken, using {port}"
             for what, (default, port) in p.fallbacks.items()]
    width = max(len(name) for name in urls)
    return "\n".join([
        "",
        "Taskplane local stack",
        *(["", "Another process holds a default port (a second stack?):", *taken] if taken else []),
        "",
        *(f"  {name:<{width}}  {value}" for name, value in urls.items()
          if name not in ("TASKPLANE_URL", "TASKPLANE_TOKEN")),
        "",
        f"  OpenAPI: {base}/openapi.json",
        *([f"  Redis keeps its data in {p.run_dir}/redis, its log in {p.run_dir}/redis.log"]
          if p.redis else []),
        f"  TOKEN is tenant '{DEV_TENANT}' ({p.run_dir}/dev-token)" if p.token
        else "  TOKEN: yours, from API_TOKENS",
        f"  OPERATOR_TOKEN is operator '{DEV_OPERATOR}', every tenant's tasks, 'system' "
        f"included ({p.run_dir}/operator-token)" if p.operator_token
        else "  OPERATOR_TOKEN: yours, from API_ADMIN_TOKENS",
        "",
        f"All of these are in {env_path}, for your shell and for `make celery` / `make flower`:",
        f"  . {env_path}",
        f"  curl -s {auth}-H 'Content-Type: application/json' \\",
        "       -d '{\"task\": \"reports.summary\", \"kwargs\": {\"csv\": \"a,b\\n1,2\\n3,4\"}}' \\",
        "       \"$API_URL/v1/tasks\"",
        f"  curl -s {auth}\"$API_URL/v1/tasks/$TASK_ID\"",
        "  make celery ARGS=\"inspect ping\"",
        "",
        "Ctrl-C stops everything.",
        "",
    ])


@contextlib.contextmanager
def _owned(run_dir: Path) -> Iterator[IO[str]]:
    """Hold ``run_dir``'s lock while the stack runs: one stack per run directory (its Redis
    data, its tokens, its ``env``); a second ``make run`` in the same clone is refused."""
    run_dir.mkdir(exist_ok=True)
    with open(run_dir / "lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise SystemExit(f"a stack already runs from {run_dir.resolve()} (pid "
                             f"{lock.read().strip() or '?'}): stop it, or run the second "
                             "stack from another clone") from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        yield lock


@contextlib.contextmanager
def _redis(p: Plan) -> Iterator[None]:
    """The stack's own Redis for the duration of the block, its log in ``.run/redis.log``.

    Not under honcho, which stops everything at once: a worker whose broker vanished
    mid-shutdown cannot stop warm and is killed. This Redis outlives the processes using it.
    """
    if p.redis is None:
        yield
        return
    import redis

    with open(p.run_dir / "redis.log", "ab") as log:
        server = subprocess.Popen(p.redis, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        client = redis.Redis.from_url(p.env["REDIS_URL"], socket_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            if server.poll() is not None:
                raise SystemExit(f"redis-server exited ({server.returncode}); see "
                                 f"{p.run_dir / 'redis.log'}")
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                if client.ping():
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"redis-server did not answer in 20 s; see {p.run_dir / 'redis.log'}")
            time.sleep(0.05)
        client.close()
        yield
    finally:
        server.terminate()  # SIGTERM: Redis fsyncs its append-only file and exits
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


def main(argv: list[str]) -> None:
    from honcho.manager import Manager

    with _owned(RUN_DIR):
        try:
            p = plan(dict(os.environ), monitor="--monitor" in argv)
        except MissingBinary as exc:
            raise SystemExit(str(exc)) from None
        env_path = RUN_DIR / ENV_FILE
        manager = Manager()
        try:
            with _redis(p):
                _private(env_path, env_file(p))
                print(banner(p), flush=True)
                for name, cmd in p.procs.items():
                    manager.add_process(name, cmd, env=p.env)
                manager.loop()
        finally:
            env_path.unlink(missing_ok=True)  # no stack, no env: tools say so, not hang
    sys.exit(manager.returncode)
