"""``taskplane dev``'s plan: ports that fall back, tokens kept per folder, ``.run/env``.

The stacks themselves run in tests/integration/test_devstack.py.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskplane import devstack
from taskplane.localproc import free_port, port_free, port_or_free

ENV_NAMES = ["REDIS_URL", "API_URL", "TOKEN", "OPERATOR_TOKEN", "API_METRICS_URL",
             "EXPORTER_METRICS_URL", "WORKER_METRICS_URL", "SCHEDULER_METRICS_URL",
             "TASKPLANE_URL", "TASKPLANE_TOKEN"]


@pytest.fixture()
def held() -> Iterator[int]:
    """A port somebody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_a_taken_port_falls_back_to_a_free_one(held: int) -> None:
    assert not port_free(held)
    other = port_or_free(held)
    assert other != held and port_free(other)
    free = free_port()
    assert port_or_free(free) == free


def test_plan_falls_back_for_every_taken_default_and_reports_it(
        tmp_path: Path, held: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devstack, "_default", lambda name: held)
    monkeypatch.setattr(devstack, "REDIS_PORT", held)
    p = devstack.plan({}, run_dir=tmp_path)
    ports = {p.env[name] for name in devstack.SERVED_PORTS}
    assert str(held) not in ports and len(ports) == len(devstack.SERVED_PORTS)
    assert set(p.fallbacks) == {"Redis", *devstack.SERVED_PORTS.values()}
    assert all(default == held for default, _ in p.fallbacks.values())
    assert p.redis is not None and str(held) not in p.redis
    text = devstack.banner(p)
    assert f"API: port {held} is taken, using {p.env['API_PORT']}" in text


def test_ports_and_redis_the_caller_sets_win(tmp_path: Path, held: int) -> None:
    env = {"REDIS_URL": "redis://127.0.0.1:1234/0", "API_PORT": str(held),
           "WORKER_METRICS_PORT": "7001"}
    p = devstack.plan(env, run_dir=tmp_path)
    assert p.redis is None and p.env["REDIS_URL"] == env["REDIS_URL"]
    assert p.env["API_PORT"] == str(held) and p.env["WORKER_METRICS_PORT"] == "7001"
    assert "API" not in p.fallbacks
    assert p.urls()["WORKER_METRICS_URL"] == "http://127.0.0.1:7001/metrics"


def test_tokens_are_made_once_per_folder_beside_an_operator_token(tmp_path: Path) -> None:
    first = devstack.plan({}, run_dir=tmp_path)
    again = devstack.plan({}, run_dir=tmp_path)
    assert first.token and first.operator_token and first.token != first.operator_token
    assert (again.token, again.operator_token) == (first.token, first.operator_token)
    assert first.env["API_TOKENS"] == f"dev:{first.token}"
    assert first.env["API_ADMIN_TOKENS"] == f"ops:{first.operator_token}"
    assert (tmp_path / "operator-token").stat().st_mode & 0o777 == 0o600
    from taskplane.settings import Settings

    settings = Settings.from_env(first.env)  # the names do not collide: the settings load
    assert settings.admin_tokens() == {first.operator_token: "ops"}


def test_configured_tokens_and_disabled_auth_make_none(tmp_path: Path) -> None:
    mine = devstack.plan({"API_TOKENS": "me:my-own-token-0123456789"}, run_dir=tmp_path)
    assert mine.token == "" and mine.env["API_TOKENS"] == "me:my-own-token-0123456789"
    assert mine.operator_token  # an operator still sees the system tenant
    off = devstack.plan({"AUTH_DISABLED": "true"}, run_dir=tmp_path / "off")
    assert off.token == off.operator_token == "" and "API_ADMIN_TOKENS" not in off.env
    assert "TOKEN: yours" in devstack.banner(mine)


def test_env_file_sources_in_a_shell_with_every_name(tmp_path: Path) -> None:
    p = devstack.plan({"API_TOKENS": "it's:a 'quoted' $token-0123456789"}, run_dir=tmp_path)
    path = tmp_path / "env"
    path.write_text(devstack.env_file(p))
    out = subprocess.run(["sh", "-c", f". {path} && env -0"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, timeout=10, check=True)
    sourced = dict(line.split("=", 1) for line in out.stdout.split("\0") if "=" in line)
    for name in ENV_NAMES:
        assert sourced[name] == p.urls()[name], name
    assert sourced["API_URL"] == f"http://127.0.0.1:{p.env['API_PORT']}"
    assert "PROMETHEUS_URL" not in sourced
    text = devstack.banner(p)
    for name in ENV_NAMES[:8]:  # every URL is printed, the worker's included
        assert p.urls()[name] in text or not p.urls()[name], name


STACK_ENV = Path(__file__).resolve().parents[2] / "scripts" / "stack-env.sh"


def stack_env(folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """What `make celery` runs before Celery: source scripts/stack-env.sh in ``folder``."""
    return subprocess.run(["bash", "-c", f". {STACK_ENV} && echo \"$REDIS_URL\""], cwd=folder,
                          env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True,
                          timeout=10)


def test_stack_env_reads_the_live_stacks_file(tmp_path: Path) -> None:
    (tmp_path / ".run").mkdir()
    p = devstack.plan({"REDIS_URL": "redis://127.0.0.1:4242/0"}, run_dir=tmp_path / ".run")
    (tmp_path / ".run" / "env").write_text(devstack.env_file(p))  # STACK_PID: this process
    out = stack_env(tmp_path, REDIS_URL="redis://elsewhere:6379/0")
    assert out.returncode == 0 and out.stdout.strip() == "redis://127.0.0.1:4242/0", out.stderr


def test_stack_env_refuses_a_file_left_by_a_dead_stack(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / ".run").mkdir()
    (tmp_path / ".run" / "env").write_text(
        f"export STACK_PID={dead.pid}\nexport REDIS_URL=redis://127.0.0.1:4242/0\n")
    out = stack_env(tmp_path)
    assert out.returncode == 1 and "no longer runs" in out.stderr


def test_stack_env_without_a_stack_uses_redis_url_or_says_none_runs(tmp_path: Path) -> None:
    out = stack_env(tmp_path, REDIS_URL="redis://elsewhere:6379/0")
    assert out.returncode == 0 and out.stdout.strip() == "redis://elsewhere:6379/0"
    assert "elsewhere" not in out.stderr  # a URL may carry a password: never echoed
    out = stack_env(tmp_path)
    assert out.returncode == 1 and "no local stack runs here" in out.stderr
