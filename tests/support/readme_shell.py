"""One bash a test types README commands into, as a reader types them into a terminal:
variables, ``export``, ``. .run/env`` and an activated virtualenv carry from one command to
the next. Each command's stdout, stderr and exit status are kept apart in files."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Ran:
    command: str
    status: int
    stdout: str
    stderr: str
    seconds: float = 0.0

    def show(self) -> str:
        return (f"$ {self.command}\n(exit {self.status}, {self.seconds:.2f} s)\n"
                f"--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}")


class Shell:
    """``bash`` in ``cwd``, reading commands from a pipe; stopped with its process group."""

    def __init__(self, cwd: Path, env: Mapping[str, str]) -> None:
        self.cwd = cwd
        self.scratch = cwd / ".readme-shell"
        self.scratch.mkdir()
        self.count = 0
        self.proc = subprocess.Popen(["bash", "--noprofile", "--norc"], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     cwd=cwd, env=dict(env), text=True, start_new_session=True)

    def run(self, command: str, timeout: float = 120) -> Ran:
        """Type ``command``; its exit status once it ends (a timeout stops the shell)."""
        self.count += 1
        out, err, status = (self.scratch / f"{self.count}.{name}" for name in ("out", "err", "rc"))
        assert self.proc.stdin is not None
        # a group, not a subshell: assignments and `.` stay for the next command
        self.proc.stdin.write(f"{{ {command}\n}} >'{out}' 2>'{err}' </dev/null\n"
                              f"echo $? >'{status}.tmp' && mv '{status}.tmp' '{status}'\n")
        self.proc.stdin.flush()
        began = time.monotonic()
        deadline = began + timeout
        while not status.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the shell exited ({self.proc.returncode}) running:\n{command}")
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError(f"still running after {timeout}s:\n{command}\n--- stdout\n"
                                   f"{_text(out)[-2000:]}\n--- stderr\n{_text(err)[-2000:]}")
            time.sleep(0.02)
        return Ran(command, int(status.read_text()), _text(out), _text(err),
                   time.monotonic() - began)

    def environment(self) -> dict[str, str]:
        """What the shell exports now (``. .run/env``, an activated virtualenv included)."""
        ran = self.run("env -0")
        return dict(item.split("=", 1) for item in ran.stdout.split("\0") if "=" in item)

    def close(self) -> None:
        """End of input ends bash; whatever it left running goes with its process group."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        try:  # background jobs may outlive bash, in its process group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
