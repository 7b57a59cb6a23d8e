"""``taskplane submit | status | wait | ls | cancel | dead-letters | retry``: the API from a
terminal, through :mod:`taskplane.client`.

Reads ``TASKPLANE_URL`` and ``TASKPLANE_TOKEN``. ``--json`` prints the API's JSON for
scripts. The exit code says how the task ended, so ``taskplane submit … --wait && next``
works in a shell, and a reader that stops early (``taskplane ls | head -3``) ends the
command quietly, as it ends any Unix tool.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from .client import Client, Task, TaskplaneError

#: Exit codes: how the task ended, or why the command could not tell.
EXIT_SUCCESS = 0
EXIT_FAILURE = 1  # the task ended FAILURE
EXIT_USAGE = 2  # bad command line (argparse's own code)
EXIT_REVOKED = 3  # the task ended REVOKED
EXIT_NOT_DONE = 4  # the task has not ended (yet, or within --timeout)
EXIT_API_ERROR = 5  # the API refused the request or could not be reached
#: What a shell reports for a Unix tool killed by SIGPIPE (``seq 1e6 | head -1``): the
#: reader of our output went away. Python ignores SIGPIPE (a write raises instead), and
#: the client's sockets need it ignored, so the CLI exits with the same status by hand.
EXIT_CLOSED_PIPE = 128 + signal.SIGPIPE
#: Ctrl-C while following a task: the shell's status for SIGINT, with no traceback.
EXIT_INTERRUPTED = 128 + signal.SIGINT

_BY_STATE = {"SUCCESS": EXIT_SUCCESS, "FAILURE": EXIT_FAILURE, "REVOKED": EXIT_REVOKED}
COMMANDS = ("submit", "status", "wait", "ls", "cancel", "dead-letters", "retry")


def exit_code(task: Task) -> int:
    return _BY_STATE.get(task.state, EXIT_NOT_DONE)


def _value(text: str) -> Any:
    """``key=value`` values are JSON when they parse as JSON (3, true, [1,2]), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


#: The submit command's argument forms, shown by ``--help`` and by a malformed argument.
SUBMIT_FORMS = """\
arguments:
  key=value        a keyword argument, anywhere on the line (before or after options);
                   the value is JSON when it parses as JSON (3, true, [1,2], "3"), else text
  --arg VALUE      one positional argument; repeat it for more, in order
examples:
  taskplane submit long_running_task --arg hello seconds=0
  taskplane submit long_running_task data=hello seconds=2 --wait
  taskplane submit long_running_task --arg hello --arg 0"""


def _parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"taskplane {command}",
        epilog=SUBMIT_FORMS if command == "submit" else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    if command == "submit":
        p.add_argument("task", help="task type, e.g. reports.summary")
        p.add_argument("kwargs", nargs="*", metavar="key=value",
                       help="keyword arguments; values are JSON when they parse as JSON")
        p.add_argument("--arg", action="append", default=[], type=_value, dest="args",
                       metavar="VALUE",
                       help="one positional argument (repeat for more); key=value may follow")
        p.add_argument("--queue")
        p.add_argument("--countdown", type=float)
        p.add_argument("--priority", type=int, choices=range(10))
        p.add_argument("--idempotency-key")
        p.add_argument("--wait", action="store_true", help="follow the task until it ends")
    if command in ("status", "wait", "cancel", "retry"):
        p.add_argument("id")
    if command in ("submit", "wait"):
        p.add_argument("--timeout", type=float, help="stop following after this many seconds")
    if command == "cancel":
        p.add_argument("--terminate", action="store_true", help="stop it even if running")
    if command == "ls":
        p.add_argument("--state")
        p.add_argument("--task")
        p.add_argument("--queue")
        p.add_argument("--limit", type=int, default=20)
    if command == "dead-letters":
        p.add_argument("--limit", type=int, default=20)
    return p


def main(command: str, argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    # Intermixed: ``submit T --arg hello seconds=0`` puts key=value after an option.
    args = _parser(command).parse_intermixed_args(list(argv))
    url, token = os.environ.get("TASKPLANE_URL"), os.environ.get("TASKPLANE_TOKEN")
    if not url or not token:
        print("set TASKPLANE_URL and TASKPLANE_TOKEN", file=sys.stderr)
        return EXIT_USAGE
    client = Client(url, token)
    try:
        try:
            code = _run(command, args, client, out)
        except TaskplaneError as err:
            _report(err, args.json, out)
            code = EXIT_API_ERROR
        out.flush()  # a closed pipe shows here, not in the interpreter's exit
    except BrokenPipeError:
        _silence(out)
        return EXIT_CLOSED_PIPE
    except KeyboardInterrupt:
        if getattr(out, "isatty", lambda: False)():
            out.write("\n")  # end the progress bar's line
        return EXIT_INTERRUPTED
    return code


def _report(err: TaskplaneError, as_json: bool, out: TextIO) -> None:
    """The API's refusal: ``--json`` prints its envelope on stdout; otherwise one line on
    stderr, then one line per failing field the API named (``details.fields``)."""
    if as_json:
        print(json.dumps({"error": {"status": err.status, "code": err.code,
                                    "message": err.message, "details": err.details}}),
              file=out)
        return
    print(f"error {err.status} {err.code}: {err.message}", file=sys.stderr)
    fields = err.details.get("fields") if isinstance(err.details, dict) else None
    for problem in fields if isinstance(fields, list) else ():
        if isinstance(problem, dict):
            print(f"  {problem.get('field', '?')}: {problem.get('message', '')}",
                  file=sys.stderr)


def _silence(out: TextIO) -> None:
    """Point ``out`` at /dev/null, so the interpreter's own flush at exit finds no closed
    pipe either (it would print "Exception ignored ... BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # not a real file (a test's StringIO): nothing to flush
        pass


def _run(command: str, args: argparse.Namespace, client: Client, out: TextIO) -> int:
    if command == "submit":
        kwargs = {}
        for pair in args.kwargs:
            key, sep, raw = pair.partition("=")
            if not sep or not key:
                print(f"taskplane submit: not key=value: {pair!r}\n{SUBMIT_FORMS}",
                      file=sys.stderr)
                return EXIT_USAGE
            kwargs[key] = _value(raw)
        task = client.submit(args.task, args.args, kwargs, queue=args.queue,
                             countdown=args.countdown, priority=args.priority,
                             idempotency_key=args.idempotency_key)
        if not args.wait:
            _show(task, args.json, out)
            return EXIT_SUCCESS
        return _follow(client, task.id, args.timeout, args.json, out)
    if command == "status":
        task = client.get(args.id)
        _show(task, args.json, out)
        return exit_code(task)
    if command == "wait":
        return _follow(client, args.id, args.timeout, args.json, out)
    if command == "cancel":
        task = client.cancel(args.id, terminate=args.terminate)
        _show(task, args.json, out)
        return EXIT_SUCCESS
    if command == "retry":
        task = client.retry(args.id)
        _show(task, args.json, out)
        return EXIT_SUCCESS
    if command == "ls":
        tasks = []
        for task in client.list(state=args.state, task=args.task, queue=args.queue,
                                page_size=min(200, max(1, args.limit))):
            tasks.append(task)
            if len(tasks) >= args.limit:
                break
        if args.json:
            print(json.dumps([t.raw for t in tasks]), file=out)
        else:
            _table(out, ["ID", "TASK", "STATE", "QUEUE", "SUBMITTED"],
                   [[t.id, t.task, t.state, t.queue or "", t.raw.get("submitted_at", "")]
                    for t in tasks])
        return EXIT_SUCCESS
    letters = []
    for entry in client.dead_letters(page_size=min(200, max(1, args.limit))):
        letters.append(entry)
        if len(letters) >= args.limit:
            break
    if args.json:
        print(json.dumps(letters), file=out)
    else:
        _table(out, ["ID", "TASK", "REASON", "ERROR", "FAILED"],
               [[e["id"], e["task"], e["reason"],
                 f"{e['error'].get('type', '')}: {e['error'].get('message', '')}"[:60],
                 e.get("failed_at", "")] for e in letters])
    return EXIT_SUCCESS


def _follow(client: Client, task_id: str, timeout: float | None, as_json: bool,
            out: TextIO) -> int:
    """Follow the task to its end: a live progress bar on a terminal, a line per change
    otherwise; ``--json`` prints only the final task."""
    bar = _Bar(out) if not as_json else None
    if timeout is not None:
        task = client.wait(task_id, timeout)  # bounded: the server holds each request
        if bar is not None:
            bar.update(task)
    else:
        task = client.get(task_id)
        try:
            for task in client.events(task_id):
                if bar is not None:
                    bar.update(task)
        except TaskplaneError as err:
            if err.status != 429:  # 429: every follower slot is taken; wait instead
                raise
            task = client.wait(task_id)
    if bar is not None:
        bar.finish(task)
    else:
        print(json.dumps(task.raw), file=out)
    return exit_code(task)


class _Bar:
    """``STATE [#####-----]  50%  message``, redrawn in place on a terminal."""

    WIDTH = 30

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last = ""

    def line(self, task: Task) -> str:
        progress = task.progress or {}
        percent = 100.0 if task.state == "SUCCESS" else float(progress.get("percent", 0.0))
        filled = int(self.WIDTH * percent / 100)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        return f"{task.state:<8} [{bar}] {percent:5.1f}%  {progress.get('message', '')}".rstrip()

    def update(self, task: Task) -> None:
        text = self.line(task)
        if text == self.last:
            return
        self.last = text
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns
            self.out.write("\r\x1b[K" + text[: width - 1])
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def finish(self, task: Task) -> None:
        self.update(task)
        if self.tty:
            self.out.write("\n")
        if task.state == "SUCCESS":
            self.out.write(f"{task.id} SUCCESS {json.dumps(task.result)}\n")
        elif task.error:
            self.out.write(f"{task.id} {task.state} {task.error.get('type', '')}: "
                           f"{task.error.get('message', '')}\n")
        else:
            self.out.write(f"{task.id} {task.state}\n")
        self.out.flush()


def _show(task: Task, as_json: bool, out: TextIO) -> None:
    if as_json:
        print(json.dumps(task.raw), file=out)
        return
    extra = ""
    if task.state == "SUCCESS":
        extra = json.dumps(task.result)
    elif task.error:
        extra = f"{task.error.get('type', '')}: {task.error.get('message', '')}"
    elif task.progress:
        extra = f"{task.progress.get('percent', 0):.1f}% {task.progress.get('message', '')}"
    print(f"{task.id} {task.task} {task.state} {extra}".rstrip(), file=out)


def _table(out: TextIO, header: list[str], rows: list[list[Any]]) -> None:
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
