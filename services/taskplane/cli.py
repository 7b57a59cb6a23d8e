"""``taskplane``: one command for each process of the platform.

``taskplane api`` runs gunicorn, ``taskplane worker`` a Celery worker,
``taskplane dev`` the whole local stack, and ``taskplane settings`` prints the
settings table the README carries. ``submit``, ``status``, ``wait``, ``ls``, ``cancel``,
``dead-letters`` and ``retry`` talk to a running API (``client_cli.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence


def _api(extra: Sequence[str]) -> None:
    os.execvp(sys.executable, [sys.executable, "-m", "gunicorn", "-c",  # noqa: S606
                               "python:taskplane.api.gunicorn_conf", *extra])


def _worker(extra: Sequence[str]) -> None:
    # SIGTERM: the shutdown model of worker.SHUTDOWN_MODEL (warm unless REMAP_SIGTERM says).
    from .settings import Settings
    from .worker import run

    run(Settings.from_env(), extra)


def _exporter(extra: Sequence[str]) -> None:
    from . import logs
    from .exporter import run
    from .settings import Settings

    settings = Settings.from_env()
    logs.configure(settings.log_level)
    run(settings)


def _scheduler(extra: Sequence[str]) -> None:
    from . import logs
    from .scheduler import run
    from .settings import Settings

    settings = Settings.from_env()
    logs.configure(settings.log_level)
    run(settings)


def _dev(extra: Sequence[str]) -> None:
    from .devstack import main as dev_main

    dev_main(list(extra))


def _settings_table(extra: Sequence[str]) -> None:
    from .settings import settings_table

    print(settings_table())


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], None], str]] = {
    "api": (_api, "serve the HTTP API under gunicorn (extra arguments go to gunicorn)"),
    "worker": (_worker, "run a Celery worker (extra arguments go to 'celery worker')"),
    "exporter": (_exporter, "serve the queue metrics read from Redis"),
    "scheduler": (_scheduler, "fire periodic schedules, exactly once per tick (run 2 replicas)"),
    "dev": (_dev, "run the whole local stack: Redis, API, worker"),
    "settings": (_settings_table, "print the settings table (Markdown)"),
}


def _client_command(name: str) -> Callable[[Sequence[str]], None]:
    def run(extra: Sequence[str]) -> None:
        from .client_cli import main as client_main

        sys.exit(client_main(name, extra))

    return run


for _name, _help in (("submit", "submit a task: TASK [key=value ...] [--arg VALUE ...] [--wait] [--json]"),
                     ("status", "show a task: ID"),
                     ("wait", "follow a task to its end with a progress bar: ID"),
                     ("ls", "list your tasks [--state S] [--task T] [--queue Q]"),
                     ("cancel", "revoke a task: ID [--terminate]"),
                     ("dead-letters", "list tasks that failed for good"),
                     ("retry", "enqueue a dead letter again: ID")):
    COMMANDS[_name] = (_client_command(_name), _help + " (TASKPLANE_URL, TASKPLANE_TOKEN)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="taskplane", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(COMMANDS),
                        help="; ".join(f"{k}: {v[1]}" for k, v in sorted(COMMANDS.items())))
    parser.add_argument("extra", nargs=argparse.REMAINDER,
                        help="the command's own arguments (--help after it for its own help)")
    args = parser.parse_args(argv)
    COMMANDS[args.command][0](args.extra)


if __name__ == "__main__":
    main()
