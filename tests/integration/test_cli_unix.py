"""The ``taskplane`` task commands behave like Unix tools: a reader that stops early ends
them quietly, ``key=value`` may follow ``--arg``, and a 422 names the failing fields.

Each command runs as its own process (the installed ``taskplane`` script) against the
session's real gunicorn API, Celery worker and Redis.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from taskplane import client_cli
from tests.conftest import PARKED
from tests.support.services import ROOT, TEST_TOKENS, VENV_BIN, Api

pytestmark = pytest.mark.integration


def cli_env(api: Api) -> dict[str, str]:
    return {**os.environ, "TASKPLANE_URL": api.base, "TASKPLANE_TOKEN": TEST_TOKENS["acme"],
            "PYTHONPATH": str(ROOT)}


def run_cli(api: Api, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "taskplane"), *args], env=cli_env(api),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def run_into_closed_pipe(api: Api, *args: str) -> tuple[int, str]:
    """Run ``taskplane ARGS`` writing into a pipe whose reader has already gone (what
    ``| head -3`` leaves once head has its lines): every write meets EPIPE."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        proc = subprocess.run([str(VENV_BIN / "taskplane"), *args], env=cli_env(api),
                              stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60,
                              cwd=ROOT)
    finally:
        os.close(writer)
    return proc.returncode, proc.stderr


@pytest.fixture(scope="module")
def listed(api: Api) -> list[str]:
    """A few finished tasks, so that ``ls`` has rows to print."""
    ids = [api.submit("test.echo", kwargs={"value": i})["id"] for i in range(3)]
    for task_id in ids:
        api.wait_state(task_id, "SUCCESS")
    return ids


@pytest.mark.parametrize("args", [("ls",), ("ls", "--json"), ("dead-letters",),
                                  ("status", "--json", "PLACEHOLDER")])
def test_a_closed_pipe_ends_the_command_quietly(api: Api, listed: list[str],
                                                args: tuple[str, ...]) -> None:
    args = tuple(listed[0] if a == "PLACEHOLDER" else a for a in args)
    code, stderr = run_into_closed_pipe(api, *args)
    assert stderr == "", stderr  # no BrokenPipeError traceback, no "Exception ignored"
    assert code == client_cli.EXIT_CLOSED_PIPE == 141  # as a shell reports `seq 1e6 | head -1`


def test_head_reads_the_first_lines_and_nothing_is_printed_on_stderr(api: Api,
                                                                     listed: list[str]) -> None:
    env = cli_env(api)
    for pipeline in (f"{VENV_BIN / 'taskplane'} ls | head -3",
                     f"{VENV_BIN / 'taskplane'} ls --json | head -c 1"):
        proc = subprocess.run(["bash", "-c", pipeline], env=env, capture_output=True,
                              text=True, timeout=60, cwd=ROOT)
        assert proc.returncode == 0 and proc.stderr == "", (pipeline, proc.stderr)
        assert proc.stdout.startswith(("ID ", "[")), proc.stdout


def test_key_value_arguments_may_follow_arg(api: Api) -> None:
    proc = run_cli(api, "submit", "long_running_task", "--arg", "hello", "seconds=0",
                   "--wait", "--json")
    assert proc.returncode == client_cli.EXIT_SUCCESS, proc.stderr
    done = json.loads(proc.stdout)
    assert done["result"] == "Task completed successfully with data: hello"

    # repeated --arg: positional arguments in order (data, seconds)
    proc = run_cli(api, "submit", "--json", "long_running_task", "--arg", "again",
                   "--arg", "0", "--wait")
    assert proc.returncode == client_cli.EXIT_SUCCESS, proc.stderr
    assert json.loads(proc.stdout)["result"].endswith("with data: again")


def test_a_malformed_argument_shows_the_accepted_forms(api: Api) -> None:
    proc = run_cli(api, "submit", "long_running_task", "--arg", "hello", "seconds")
    assert proc.returncode == client_cli.EXIT_USAGE
    assert "not key=value: 'seconds'" in proc.stderr
    assert "--arg VALUE" in proc.stderr and "key=value" in proc.stderr
    helped = run_cli(api, "submit", "--help")
    assert helped.returncode == 0
    assert "taskplane submit long_running_task --arg hello seconds=0" in helped.stdout


def test_a_422_names_the_failing_field(api: Api) -> None:
    proc = run_cli(api, "submit", "long_running_task", "seconds=1")
    assert proc.returncode == client_cli.EXIT_API_ERROR
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("error 422 validation_failed: arguments do not match"), lines
    assert any(line.strip().startswith("data:") for line in lines[1:]), proc.stderr

    proc = run_cli(api, "submit", "long_running_task", "data=x", "seconds=-1")
    assert proc.returncode == client_cli.EXIT_API_ERROR
    assert any(line.strip().startswith("seconds:") for line in proc.stderr.splitlines()[1:]), \
        proc.stderr

    # --json: the whole envelope on stdout, details included
    proc = run_cli(api, "submit", "--json", "long_running_task", "seconds=1")
    body = json.loads(proc.stdout)
    assert body["error"]["status"] == 422
    assert body["error"]["details"]["fields"], body


def test_ctrl_c_while_following_ends_quietly_with_130(api: Api) -> None:
    parked = api.submit("test.echo", kwargs={"value": 1}, queue=PARKED)  # never runs
    proc = subprocess.Popen([str(VENV_BIN / "taskplane"), "wait", parked["id"]], env=cli_env(api),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        # following: the first line the bar prints (not a terminal: one line per change)
        assert proc.stdout is not None and proc.stdout.readline().startswith("PENDING")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == client_cli.EXIT_INTERRUPTED == 130
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    api.delete(f"/v1/tasks/{parked['id']}")
