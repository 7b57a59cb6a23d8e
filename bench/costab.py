"""A/B of Redis per task (issue 29) between versions of Taskplane's code, not part of
``make bench``: ``rediscost.run_side``'s Taskplane side run for each version in turn
(the order flipped every round), plain Celery with acks late once a round as the
yardstick, each run on a fresh private redis-server.

A version is a folder holding ``taskplane/`` (a ``services`` folder), put first on the
``PYTHONPATH`` of the API and worker the run starts; make one of any commit with
``git archive COMMIT services | tar -x -C DIR`` and pass ``DIR/services``::

    python -m bench.costab --tasks 1500 --rounds 6 before=/tmp/a/services after=/tmp/b/services

One round's CPU per task swings by about ±10% on a shared machine, so the report is the
median of per-round ratios, as in ``rediscost.py``; the ``evalsha`` time (commandstats)
moves less than the CPU and shows what the scripts cost. ``--json FILE`` keeps every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import rediscost
from .stack import Stack


@contextmanager
def _code(stack: Stack, path: str | None) -> Iterator[None]:
    """Processes the stack starts meanwhile import Taskplane from ``path`` first."""
    plain = Stack.env

    def env(self: Stack, **extra: Any) -> dict[str, str]:
        out = plain(self, **extra)
        if path:
            out["PYTHONPATH"] = f"{path}:{out['PYTHONPATH']}"
        return out

    stack.env = env.__get__(stack)  # this stack only
    try:
        yield
    finally:
        del stack.env


def run(tasks: int, rounds: int, versions: list[tuple[str, str]], celery: bool = True
        ) -> dict[str, list[dict[str, Any]]]:
    """Every version's runs (and plain Celery's), round by round."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in versions}
    if celery:
        runs[rediscost.BASELINE_SIDE] = []
    with Stack() as stack:
        for rnd in range(rounds):
            for name, path in (versions if rnd % 2 == 0 else versions[::-1]):
                with _code(stack, path):
                    runs[name].append(rediscost.run_side(stack, "taskplane", tasks, rnd))
                print(name, rnd, runs[name][-1]["cpu_us_per_task"], flush=True)
            if celery:
                out = rediscost.run_side(stack, rediscost.BASELINE_SIDE, tasks, rnd)
                runs[rediscost.BASELINE_SIDE].append(out)
    return runs


def summary(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Per version: median CPU, commands and ``evalsha`` time per task; each version's
    per-round ratio to the first and to plain Celery."""
    def evalsha(row: dict[str, Any]) -> float:
        return next((c["usec_per_task"] for c in row["commands"] if c["command"] == "evalsha"), 0.0)

    lines = []
    names = list(runs)
    for name in names:
        rows = runs[name]
        line = (f"{name}: {statistics.median(r['cpu_us_per_task'] for r in rows):.1f} µs, "
                f"{statistics.median(r['commands_per_task'] for r in rows):.2f} commands, "
                f"evalsha {statistics.median(evalsha(r) for r in rows):.1f} µs per task")
        for other in (names[0], rediscost.BASELINE_SIDE):
            if other != name and other in runs:
                ratios = [a["cpu_us_per_task"] / b["cpu_us_per_task"]
                          for a, b in zip(rows, runs[other], strict=True)]
                line += (f"; vs {other} {statistics.median(ratios):.3f}x "
                         f"({', '.join(f'{x:.2f}' for x in ratios)})")
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="+", metavar="NAME=SERVICES_DIR")
    parser.add_argument("--tasks", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--no-celery", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    versions = [tuple(v.split("=", 1)) for v in args.versions]
    if any(len(v) != 2 for v in versions):
        parser.error("each version is NAME=SERVICES_DIR")
    runs = run(args.tasks, args.rounds, [(n, p) for n, p in versions], not args.no_celery)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(runs, out)
    print("\n".join(summary(runs)))


if __name__ == "__main__":
    main()
