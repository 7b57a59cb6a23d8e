"""The CPU breakdown's pure logic: reading py-spy's raw output and classifying samples."""

from __future__ import annotations

import pytest
from bench.cpu_profile import (
    API,
    KERNEL,
    OTHER,
    WORKER,
    Sample,
    classify,
    cpu_shares,
    parse_raw,
    redis_delta,
    shares,
    short_frame,
)

SITE = "/work/x/.venv/lib/python3.11/site-packages"
STDLIB = "/usr/lib/python3.11"
SERVICES = "/work/x/services"


def f(function: str, path: str, line: int = 1) -> str:
    return f"{function} ({path}:{line})"


GUNICORN = f("ThreadWorker.handle", f"{SITE}/gunicorn/workers/gthread.py")
FLASK = f("Flask.wsgi_app", f"{SITE}/flask/app.py")
ROUTE = f("submit_task", f"{SERVICES}/taskplane/api/routes.py")
SUBMIT = f("submit", f"{SERVICES}/taskplane/celery_app.py")
REDIS = f("Redis.execute_command", f"{SITE}/redis/client.py")
SOCKET = f("socket.sendall", f"{STDLIB}/socket.py")
ENCODER = f("JSONEncoder.iterencode", f"{STDLIB}/json/encoder.py")
LOGGING = f("Logger.info", f"{STDLIB}/logging/__init__.py")
GLOGGING = f("Logger.access", f"{SITE}/gunicorn/glogging.py")


def test_the_innermost_recognised_frame_decides():
    assert classify([GUNICORN, FLASK, ROUTE, SUBMIT, REDIS], API)[0] == "redis-py client"
    assert classify([GUNICORN, FLASK, ROUTE, SUBMIT], API)[0] == "Taskplane routes, submit and lifecycle"
    assert classify([GUNICORN, FLASK], API)[0] == "Flask/werkzeug request handling"
    assert classify([GUNICORN], API)[0] == "gunicorn HTTP parsing/writing"


def test_generic_standard_library_frames_go_to_their_caller():
    assert classify([GUNICORN, FLASK, ROUTE, SUBMIT, REDIS, SOCKET], API) == ("redis-py client", REDIS)
    assert classify([GUNICORN, SOCKET], API) == ("gunicorn HTTP parsing/writing", GUNICORN)
    # but the standard library's json and logging are components of their own
    assert classify([GUNICORN, FLASK, ROUTE, ENCODER], API)[0] == "JSON encoding/decoding"
    assert classify([GUNICORN, FLASK, ROUTE, LOGGING], API)[0] == "access log (logging)"


def test_within_one_frame_the_first_row_wins():
    # gunicorn's access logger is the access log, not gunicorn's HTTP handling
    assert classify([GUNICORN, GLOGGING], API)[0] == "access log (logging)"
    # Taskplane's result backend is the result backend, not generic Taskplane code
    results = f("ResultBackend._store_result", f"{SERVICES}/taskplane/results.py")
    assert classify([results], WORKER)[0] == "result backend"
    auth = f("authenticate", f"{SERVICES}/taskplane/api/auth.py")
    assert classify([GUNICORN, FLASK, auth], API)[0] == "auth"


def test_worker_components():
    trace = f("trace_task", f"{SITE}/celery/app/trace.py")
    task = f("noop", "/work/x/bench/tasks.py")
    billiard = f("Connection._recv", f"{SITE}/billiard/connection.py")
    asynpool = f("AsynPool._write_job", f"{SITE}/celery/concurrency/asynpool.py")
    kombu = f("Channel._brpop_read", f"{SITE}/kombu/transport/redis.py")
    backend = f("Backend.store_result", f"{SITE}/celery/backends/base.py")
    signals = f("_on_postrun", f"{SERVICES}/taskplane/worker.py")
    assert classify([trace, task], WORKER)[0] == "the task itself"
    assert classify([trace], WORKER)[0] == "Celery worker/tracer/request"
    assert classify([billiard], WORKER)[0] == "prefork pool IPC (billiard)"
    assert classify([asynpool], WORKER)[0] == "prefork pool IPC (billiard)"
    assert classify([kombu], WORKER)[0] == "kombu consumer/transport"
    assert classify([trace, backend], WORKER)[0] == "result backend"
    assert classify([trace, backend, REDIS, SOCKET], WORKER)[0] == "redis-py client"
    assert classify([trace, signals], WORKER)[0] == "Taskplane worker signals/lifecycle"


def test_nothing_recognised_is_other():
    thread = f("Thread.run", f"{STDLIB}/threading.py")
    assert classify([thread], API) == (OTHER, thread)
    assert classify([], API) == (OTHER, None)
    # shortened file names (py-spy without --full-filenames) match the same patterns
    assert classify(["Redis.execute_command (redis/client.py:600)"], API)[0] == "redis-py client"


def test_parse_raw_reads_processes_frames_and_counts():
    text = (
        'process 10:"python -m gunicorn";Arbiter.run (/x/gunicorn/arbiter.py:1) 3\n'
        'process 10:"python -m gunicorn";process 11:"python -m gunicorn";'
        f"{GUNICORN};{FLASK};{REDIS} 7\n"
        "\n"
        "garbage-without-count\n"
    )
    samples = parse_raw(text)
    assert samples == [Sample((10,), ("Arbiter.run (/x/gunicorn/arbiter.py:1)",), 3),
                       Sample((10, 11), (GUNICORN, FLASK, REDIS), 7)]


def test_shares_sum_to_100_and_split_by_process_role():
    samples = [Sample((10,), (GUNICORN,), 10), Sample((10, 11), (GUNICORN, FLASK, REDIS), 30),
               Sample((10, 12), (GUNICORN, FLASK, ROUTE), 60)]
    counted = shares(samples, API, roles={"root": "master", "children": "workers"})
    assert counted["samples"] == 100
    by = {c["component"]: c for c in counted["components"]}
    assert by["Taskplane routes, submit and lifecycle"]["share_pct"] == 60
    assert by["redis-py client"]["share_pct"] == 30
    assert by["gunicorn HTTP parsing/writing"]["by_role_pct"] == {"master": 10}
    assert counted["roles"] == {"workers": {"samples": 90, "share_pct": 90.0},
                                "master": {"samples": 10, "share_pct": 10.0}}
    assert counted["components"][0]["component"] == "Taskplane routes, submit and lifecycle"  # largest first


def test_cpu_shares_add_the_kernel_row_and_give_us_per_unit():
    counted = shares([Sample((1,), (REDIS,), 75), Sample((1,), (FLASK,), 25)], API)
    rows = {r["component"]: r for r in cpu_shares(counted, user_s=0.8, system_s=0.2, units=1000)}
    assert rows[KERNEL]["share_pct"] == 20 and rows[KERNEL]["us_per_unit"] == 200
    assert rows["redis-py client"]["share_pct"] == 60 and rows["redis-py client"]["us_per_unit"] == 600
    assert rows["redis-py client"]["samples_pct"] == 75
    assert rows["Flask/werkzeug request handling"]["us_per_unit"] == 200
    assert sum(r["share_pct"] for r in rows.values()) == pytest.approx(100)
    assert sum(r["us_per_unit"] for r in rows.values()) == pytest.approx(1000)


def test_redis_delta_per_unit():
    before = {"cpu_s": 1.0, "commands": {"lpush": {"calls": 10, "usec": 100}}}
    after = {"cpu_s": 1.5, "commands": {"lpush": {"calls": 1010, "usec": 3100},
                                        "evalsha": {"calls": 1000, "usec": 50000},
                                        "info": {"calls": 2, "usec": 10}}}
    delta = redis_delta(before, after, units=1000)
    assert delta["cpu_us_per_unit"] == 500
    assert [c["command"] for c in delta["commands"]] == ["evalsha", "lpush", "info"]
    assert delta["commands"][1] == {"command": "lpush", "calls_per_unit": 1.0, "usec_per_unit": 3.0}
    assert delta["commands_per_unit"] == pytest.approx(2.0, abs=0.01)


def test_short_frame_drops_the_site_prefix_and_line():
    assert short_frame(REDIS) == "Redis.execute_command (redis/client.py)"
    assert short_frame(ENCODER) == "JSONEncoder.iterencode (json/encoder.py)"
    assert short_frame(ROUTE) == "submit_task (taskplane/api/routes.py)"
