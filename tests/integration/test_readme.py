"""Every example of README.md, run as a reader runs it, against a live local stack.

The stack is started as ``make run`` starts it (``taskplane dev``), in a fresh folder that
holds its ``.run/`` state, and stopped with Ctrl-C's signal at the end. The examples are
typed into one bash in that folder (tests/support/readme_shell.py), in README order, with
placeholders filled from the previous command's output (tests/support/readme.py says how
the README is read). The stock Celery tools run from a virtualenv the README's own install
line makes (``pip install "celery[redis]" flower``), not from Taskplane's.

A failure names the README line, the command, its exit status and its output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from taskplane.settings import Settings
from tests.support import readme
from tests.support.procs import Proc, descendants, http_ok
from tests.support.readme_shell import Ran, Shell
from tests.support.services import ROOT, VENV_BIN, free_port

pytestmark = pytest.mark.integration

README = ROOT / "README.md"
#: The environment a stack and a reader start from: the machine's, without any Taskplane
#: setting or client variable a developer or CI may have exported.
SETTING_NAMES = {f.metadata["env"] for f in dataclasses.fields(Settings)}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in SETTING_NAMES and not k.startswith(("TASKPLANE_", "PROMETHEUS_",
                                                            "VIRTUAL_ENV", "PYTHON"))}
    env.update(extra)
    return env


class Stack:
    """``taskplane dev`` in ``folder``, as ``make run`` runs it after its install step: its
    defaults, each port falling back to a free one when taken; ``.run/env`` says where."""

    def __init__(self, folder: Path) -> None:
        self.proc = Proc("readme-stack", [str(VENV_BIN / "taskplane"), "dev"], clean_env(),
                         cwd=folder, log_dir=folder)
        env_file = folder / ".run" / "env"
        self.proc.started_or_stopped(env_file.exists, 60, ".run/env written")
        self.vars = read_env_file(env_file)
        worker = self.vars["WORKER_METRICS_URL"].removesuffix("/metrics") + "/readyz"
        self.proc.started_or_stopped(
            lambda: http_ok(self.vars["API_URL"] + "/readyz") and http_ok(worker), 90,
            "the API and a worker ready")

    def stop(self) -> None:
        """Ctrl-C: SIGINT to the stack's process group; honcho stops every process."""
        children = descendants(self.proc.pid)
        self.proc.stop(signal.SIGINT, timeout=60)
        for pid in children:  # each in its own session: none should be left, make sure
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            name, _, value = line.removeprefix("export ").partition("=")
            out[name] = shlex.split(value)[0] if value else ""
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the reader stands: the stack's state (``.run/``), Taskplane's virtualenv as
    ``.venv`` (what ``make run`` installed), and a home of its own for ``~/...`` paths."""
    here = tmp_path_factory.mktemp("readme")
    (here / ".venv").symlink_to(Path(sys.prefix))
    (here / "services").symlink_to(ROOT / "services")  # the clone's files the README names
    (here / "home").mkdir()
    return here


@pytest.fixture(scope="module")
def stack(folder: Path) -> Iterator[Stack]:
    began = time.monotonic()
    s = Stack(folder)
    print(f"the stack answered in {time.monotonic() - began:.1f}s")
    yield s
    s.stop()


def reader_env(folder: Path) -> dict[str, str]:
    """A terminal after ``. .venv/bin/activate``: ``taskplane`` and Taskplane's python
    first on the PATH. pip keeps its usual cache, so the install line is not a download
    of everything on each run."""
    cache = os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")
    return clean_env(HOME=str(folder / "home"), PIP_CACHE_DIR=cache,
                     VIRTUAL_ENV=str(folder / ".venv"),
                     PATH=f"{folder / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}")


def check(step: readme.Step, ran: Ran) -> None:
    where = f"README.md:{step.line}"
    assert ran.status == step.exits, f"{where}: exit {ran.status}, expected {step.exits}\n{ran.show()}"
    codes = readme.error_codes(ran.stdout)
    expected = step.expected_error()
    if expected is None:
        assert not codes, f"{where}: the API answered an error\n{ran.show()}"
    else:
        assert codes and (not expected or expected in codes), \
            f"{where}: expected the error {expected!r}, got {codes}\n{ran.show()}"
    problems = readme.sample_mismatches(step, ran.stdout + ran.stderr)
    assert not problems, f"{where}: output unlike its sample: {problems}\n{ran.show()}"


def serve(shell: Shell, step: readme.Step, url: str, folder: Path) -> None:
    """Start a server example with the shell's environment, on a free port in place of the
    one written; wait until ``url`` answers 200, check the login it names, stop it (Ctrl-C)."""
    where = f"README.md:{step.line}"
    written = urlsplit(url).port
    port = free_port()
    command = step.text.replace(f"--port={written}", f"--port={port}")
    assert command != step.text, f"{where}: no --port={written} to move to a free port"
    url = url.replace(f":{written}/", f":{port}/", 1)
    proc = Proc(f"readme-server-{step.line}", ["bash", "-c", command], shell.environment(),
                cwd=folder, log_dir=folder)
    try:
        proc.wait_until(lambda: http_ok(url), 60, f"{where}: 200 from {url}")
        login = re.search(r"--basic-auth=(\S+?):(\S+)", command)
        if login:  # the login it names is asked for, and lets in
            root = f"http://127.0.0.1:{port}/"
            assert requests.get(root, timeout=10).status_code == 401, where
            assert requests.get(root, auth=login.groups(), timeout=10).status_code == 200, where
    finally:
        proc.stop(signal.SIGINT, timeout=20)


def test_every_readme_example_runs(stack: Stack, folder: Path) -> None:
    blocks = readme.read(README)
    shell = Shell(folder, reader_env(folder))
    ran_steps = 0
    previous: Ran | None = None
    transcript = folder / "transcript.txt"  # every command and its output, in order
    began = time.monotonic()
    try:
        for block in blocks:
            if block.skip:
                continue
            if block.server:
                (step,) = block.steps()
                serve(shell, step, block.server, folder)
                ran_steps += 1
                continue
            for step in block.steps():
                where = f"README.md:{step.line}"
                if step.kind == "fill":
                    assert previous is not None, f"{where}: {step.text} has no command before it"
                    value = readme.first_task_id(previous.stdout)
                    assert value, f"{where}: no task id to put in {step.text}\n{previous.show()}"
                    shell.run(f"{step.text}={value}")
                    continue
                if step.kind == "file":
                    path = folder / step.path
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with open(path, "a") as f:
                        f.write(step.text)
                    module = step.path.removesuffix(".py").replace("/", ".")
                    command = (f"PYTHONPATH=. {VENV_BIN / 'python'} -c "
                               f"{shlex.quote(f'import {module}')}")
                elif step.kind == "python":
                    script = shell.scratch / f"snippet-{step.line}.py"
                    script.write_text(step.text)
                    command = f"python3 {shlex.quote(str(script))}"
                else:
                    command = step.text
                ran = shell.run(command)
                with open(transcript, "a") as f:
                    f.write(f"--- README.md:{step.line}\n{ran.show()}\n")
                check(step, ran)
                previous = ran
                ran_steps += 1
    finally:
        shell.close()
    skipped = [b for b in blocks if b.skip]
    assert ran_steps >= 30, f"only {ran_steps} README steps ran"
    print(f"{ran_steps} README steps ran in {time.monotonic() - began:.1f}s; "
          f"{len(skipped)} blocks skipped: " + "; ".join(f"line {b.line}: {b.skip}" for b in skipped))


def test_a_placeholder_pasted_unfilled_gets_a_clear_error(stack: Stack, folder: Path) -> None:
    """``TASK_ID=3f0c…`` pasted as written, then the command that uses it: the API's or the
    CLI's own error (an unknown task), never something the shell made of it."""
    pairs = []
    for block in readme.read(README):
        steps = [] if block.skip or block.language != "bash" else block.steps()
        for i, fill in enumerate(steps):
            uses = [s for s in steps[i + 1:] if s.kind == "command" and f"${fill.text}" in s.text]
            if fill.kind == "fill" and uses:
                pairs.append((fill, uses[0]))  # the first command that uses it
    assert len(pairs) >= 5
    shell = Shell(folder / "home", reader_env(folder))
    try:
        shell.run(f". {shlex.quote(str(folder / '.run' / 'env'))}")
        for fill, then in pairs:
            shell.run(f"{fill.text}={fill.literal}")
            ran = shell.run(then.text)
            where = f"README.md:{then.line} after {fill.text}={fill.literal}"
            if then.text.startswith("taskplane"):
                assert ran.status == 5 and "error 404" in ran.stderr, f"{where}\n{ran.show()}"
            else:
                assert readme.error_codes(ran.stdout), f"{where}\n{ran.show()}"
    finally:
        shell.close()
