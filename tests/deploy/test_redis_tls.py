"""Redis over TLS (``rediss://``) and a password given apart from the URL.

A real redis-server with TLS on a free port, its certificate signed by a throwaway CA
made with openssl, a password full of URL delimiters. A real `taskplane worker` runs a
task submitted through the API's own code path; certificates are checked by default.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from taskplane import broker
from taskplane.celery_app import create_celery, redis_client, submit
from taskplane.settings import Settings
from tests.support.procs import MissingBinary, Proc, find_binary, free_port

#: Every character that breaks a password pasted into a URL.
PASSWORD = "p@ss/w0rd#1:?%x"
ROOT = Path(__file__).resolve().parents[2]


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@dataclass
class TlsRedis:
    port: int
    ca: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    try:
        server = find_binary("redis-server")
    except MissingBinary:
        server = None
    if server is None or shutil.which("openssl") is None:
        pytest.skip("redis-server and openssl are needed")
    d = tmp_path_factory.mktemp("tls")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=throwaway test CA",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.crt"),
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        str(d / "server.key"),
        "-out",
        str(d / "server.csr"),
    )
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        str(d / "server.csr"),
        "-CA",
        str(d / "ca.crt"),
        "-CAkey",
        str(d / "ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        str(d / "san.ext"),
        "-out",
        str(d / "server.crt"),
    )
    port = free_port()
    proc = Proc(
        "redis-tls",
        [
            server,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(d),
            "--tls-cert-file",
            str(d / "server.crt"),
            "--tls-key-file",
            str(d / "server.key"),
            "--tls-ca-cert-file",
            str(d / "ca.crt"),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            PASSWORD,
        ],
        os.environ,
        log_dir=d,
    )
    # The URL the chart documents (redis.external.url), minus the password, which
    # comes on its own as the chart passes it.
    env = {
        "REDIS_URL": f"rediss://localhost:{port}/0",
        "REDIS_PASSWORD": PASSWORD,
        "REDIS_TLS_CA_FILE": str(d / "ca.crt"),
    }
    client = redis_client(Settings.from_env(env).redis_url, Settings.from_env(env))
    proc.started_or_stopped(client.ping, 20, "PING over TLS")
    try:
        yield TlsRedis(port, d / "ca.crt", env)
    finally:
        proc.stop(timeout=10)


def test_password_with_url_delimiters_is_passed_apart(tls_redis: TlsRedis) -> None:
    settings = Settings.from_env(tls_redis.env)
    assert redis_client(settings.redis_url, settings).ping()
    assert PASSWORD not in str(settings.redacted())


def test_certificates_are_checked_by_default(tls_redis: TlsRedis) -> None:
    """Without the CA the server's certificate is refused, by every client Taskplane makes."""
    env = {k: v for k, v in tls_redis.env.items() if k != "REDIS_TLS_CA_FILE"}
    settings = Settings.from_env(env)
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis_client(settings.redis_url, settings).ping()
    app = create_celery(settings)
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        app.backend.client.ping()


def test_worker_runs_a_task_over_tls(tls_redis: TlsRedis, tmp_path: Path) -> None:
    env = {
        **os.environ,
        **tls_redis.env,
        "WORKER_METRICS_PORT": "0",
        "WORKER_CONCURRENCY": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "LOG_LEVEL": "INFO",
    }
    worker = Proc("worker", [sys.executable, "-m", "taskplane.cli", "worker"], env,
                  log_dir=tmp_path, cwd=tmp_path)
    try:
        app = create_celery(Settings.from_env(tls_redis.env))
        task_id = str(uuid.uuid4())
        submit(
            app,
            tenant="tls",
            name="long_running_task",
            args=[],
            kwargs={"data": "over tls", "seconds": 0},
            queue="default",
            priority=broker.DEFAULT_PRIORITY,
            task_id=task_id,
        )
        worker.wait_until(lambda: app.AsyncResult(task_id).state == "SUCCESS", 60, f"task {task_id} SUCCESS",
                          interval=0.2)
    finally:
        worker.stop(timeout=30)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://r:6379/0", "redis://:p%40ss%2Fw0rd%231%3A%3F%25x@r:6379/0"),
        ("rediss://user@r:6380/2", "rediss://user:p%40ss%2Fw0rd%231%3A%3F%25x@r:6380/2"),
        ("redis://:inline@r:6379/0", "redis://:inline@r:6379/0"),  # a password in the URL wins
    ],
)
def test_redis_password_is_escaped_into_urls_without_one(url: str, expected: str) -> None:
    settings = Settings.from_env({"REDIS_URL": url, "RESULT_BACKEND_URL": url, "REDIS_PASSWORD": PASSWORD})
    assert settings.redis_url == expected and settings.result_backend_url == expected
    assert settings.redacted()["redis_password"] == "<set>"
