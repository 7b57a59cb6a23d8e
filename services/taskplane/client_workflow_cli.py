"""``taskplane workflow submit | status | wait | ls | cancel``: workflows from a terminal.

``submit`` reads the body (``{"chain": [...]}`` or ``{"group": [...], "then": ...}``) from
a file or ``-`` (stdin). ``wait`` and ``submit --wait`` draw a progress bar over the
members. Exit codes as for tasks: 0 SUCCESS, 1 FAILURE, 3 REVOKED, 4 not ended, 5 the API
refused or was unreachable, 2 a bad command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from .client import Client, TaskplaneError
from .client_cli import _BY_STATE, EXIT_API_ERROR, EXIT_NOT_DONE, EXIT_USAGE
from .client_workflows import Workflow, WorkflowClient

ACTIONS = ("submit", "status", "wait", "ls", "cancel")
BAR = 30


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="taskplane workflow")
    sub = p.add_subparsers(dest="action", required=True)
    for action in ACTIONS:
        a = sub.add_parser(action)
        a.add_argument("--json", action="store_true", help="print the API's JSON")
        if action == "submit":
            a.add_argument("body", help="a JSON file with the workflow body, or - for stdin")
            a.add_argument("--idempotency-key")
            a.add_argument("--wait", action="store_true", help="follow it until it ends")
        if action in ("status", "wait", "cancel"):
            a.add_argument("id")
        if action in ("submit", "wait"):
            a.add_argument("--timeout", type=float)
        if action == "cancel":
            a.add_argument("--terminate", action="store_true")
        if action == "ls":
            a.add_argument("--limit", type=int, default=20)
    return p


def exit_code(found: Workflow) -> int:
    return _BY_STATE.get(found.state, EXIT_NOT_DONE)


def line(found: Workflow) -> str:
    filled = BAR * found.progress // 100
    counts = " ".join(f"{k.lower()} {v}" for k, v in found.counts.items() if v)
    return (f"{found.id}  {found.kind:5}  [{'#' * filled}{'.' * (BAR - filled)}] "
            f"{found.progress:3d}%  {found.state}  {counts}").rstrip()


def main(argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    args = _parser().parse_args(list(argv))
    url, token = os.environ.get("TASKPLANE_URL"), os.environ.get("TASKPLANE_TOKEN")
    if not url or not token:
        print("set TASKPLANE_URL and TASKPLANE_TOKEN", file=sys.stderr)
        return EXIT_USAGE
    flows = WorkflowClient(Client(url, token))
    try:
        return _run(args, flows, out)
    except TaskplaneError as err:
        print(f"error {err.status} {err.code}: {err.message}"
              + (f" {json.dumps(err.details)}" if err.details else ""), file=sys.stderr)
        return EXIT_API_ERROR


def _run(args: argparse.Namespace, flows: WorkflowClient, out: TextIO) -> int:
    if args.action == "ls":
        shown = 0
        for found in flows.list(page_size=min(args.limit, 200)):
            print(json.dumps(found.raw) if args.json else line(found), file=out)
            shown += 1
            if shown >= args.limit:
                break
        return 0
    if args.action == "submit":
        try:
            text = sys.stdin.read() if args.body == "-" else Path(args.body).read_text()
            body = json.loads(text)
        except (OSError, ValueError) as exc:
            print(f"cannot read the workflow body: {exc}", file=sys.stderr)
            return EXIT_USAGE
        found = flows.submit(body, args.idempotency_key)
        if not args.wait:
            _show(found, args.json, out)
            return exit_code(found)
        return _follow(flows, found.id, args.timeout, args.json, out)
    if args.action == "cancel":
        found = flows.cancel(args.id, args.terminate)
    elif args.action == "wait":
        return _follow(flows, args.id, args.timeout, args.json, out)
    else:
        found = flows.get(args.id)
    _show(found, args.json, out)
    return exit_code(found)


def _follow(flows: WorkflowClient, workflow_id: str, timeout: float | None, as_json: bool,
            out: TextIO) -> int:
    live = out.isatty() and not as_json

    def draw(found: Workflow) -> None:
        if live:
            print("\r" + line(found), end="", file=out, flush=True)

    found = flows.wait(workflow_id, timeout, on_change=draw)
    if live:
        print(file=out)
    else:
        _show(found, as_json, out)
    return exit_code(found)


def _show(found: Workflow, as_json: bool, out: TextIO) -> None:
    print(json.dumps(found.raw) if as_json else line(found), file=out)
