"""Every Redis client finds the master through Sentinel and follows a failover by itself.

Real processes: a master, two replicas and three sentinels (``tests/support/sentinel.py``),
gunicorn, Celery workers, the scheduler. Each trap of a failover has its own test: the
promoted replica's empty script cache, the demoted master's READONLY, the old master that
keeps answering NOREPLICAS, and configurations that can never find a master.
"""

from __future__ import annotations

import time

import pytest
import redis

from taskplane import redis_conn
from taskplane.celery_app import create_celery
from taskplane.lifecycle import TaskRecord
from taskplane.settings import Settings
from tests.support.sentinel import SentinelSet
from tests.support.services import Api, base_env, start_scheduler, start_worker, wait_for


def settings_for(servers: SentinelSet, **extra: str) -> Settings:
    return Settings.from_env(base_env(servers.url, **servers.env(**extra)))


def test_api_worker_and_scheduler_run_through_sentinel_and_follow_a_planned_failover(
        sentinel_set: SentinelSet) -> None:
    env = sentinel_set.env()
    worker = start_worker(sentinel_set.url, name="ha1", **env)
    api = Api(sentinel_set.url, workers=1, threads=4, **env)
    scheduler = start_scheduler(sentinel_set.url, **env)
    try:
        first = api.submit("test.count", kwargs={"key": "before"})
        assert api.wait_state(first["id"], "SUCCESS")["result"] == 1
        assert api.get("/readyz", tenant=None).status_code == 200

        old = sentinel_set.master()
        sentinel_set.failover()
        new = sentinel_set.wait_new_master(old)

        # the API finds the new master: the first answers may be 503 while it moves
        def accepted() -> str | None:
            r = api.post("/v1/tasks", json={"task": "test.count", "kwargs": {"key": "after"}})
            assert r.status_code in (202, 503), r.text
            return r.json()["id"] if r.status_code == 202 else None

        task_id = wait_for(accepted, 30, "a submission accepted after the failover", 0.1)
        assert api.wait_state(task_id, "SUCCESS", timeout=60)["result"] >= 1
        assert new.client().get("test:count:after") is not None  # written on the new master
        assert api.get("/readyz", tenant=None).status_code == 200
        assert worker.alive() and scheduler.alive() and api.process.alive()
    finally:
        api.close()
        scheduler.stop()
        assert worker.stop() == 0, worker.log()[-3000:]


def _script_cached(node_client: redis.Redis, sha: str) -> bool:
    return bool(node_client.script_exists(sha)[0])


def test_a_promoted_replica_has_no_scripts_and_the_lifecycle_loads_them_again(
        sentinel_set: SentinelSet) -> None:
    """NOSCRIPT on the first EVALSHA after a failover: redis-py's Script reloads the
    script, for a plain call and inside a pipeline alike."""
    settings = settings_for(sentinel_set)
    life = create_celery(settings).runtime.lifecycle
    client = redis_conn.client(settings.redis_url, settings)
    script = client.register_script("return redis.call('INCR', KEYS[1])")
    assert script(keys=["n"]) == 1
    first = _record("before-failover")
    assert life.submit(first, ("default", "{}"), cap=0, rate=0.0, burst=0,
                       idempotency=None).outcome == "created"  # its script is cached there
    old = sentinel_set.master()
    assert _script_cached(old.client(), script.sha)

    old.kill()
    sentinel_set.wipe(old)
    new = sentinel_set.wait_new_master(old)
    assert not _script_cached(new.client(), script.sha)  # the trap is real
    wait_for(lambda: _writable(client), 30, "the new master to take writes")

    assert script(keys=["plain"]) == 1  # NOSCRIPT → SCRIPT LOAD → EVALSHA
    new.client().script_flush()
    with client.pipeline(transaction=False) as pipe:
        script(keys=["piped"], client=pipe)
        pipe.get("piped")
        assert pipe.execute() == [1, b"1"]
    # a lifecycle transition (its script loaded on the old master only) on the new master
    record = _record("after-failover")
    outcome = life.submit(record, ("default", "{}"), cap=0, rate=0.0, burst=0, idempotency=None)
    assert outcome.outcome == "created"
    assert new.client().exists(f"taskplane:task:{record.id}")


def _record(task_id: str) -> TaskRecord:
    return TaskRecord(id=task_id, tenant="acme", task="test.echo", queue="default",
                      priority=5, submitted_at=time.time())


def _writable(client: redis.Redis) -> bool:
    try:
        return bool(client.set("probe", 1))
    except (redis.ConnectionError, redis.ResponseError):
        return False


def _pinned(settings: Settings, address: tuple[str, int]) -> redis.Redis:
    """A client whose one connection is open to ``address`` without asking the sentinels:
    a request in flight while the master was demoted (Sentinel's ``CLIENT KILL`` closes
    idle connections, and redis-py drops a stale one when it goes back to the pool)."""
    client = redis_conn.client(settings.redis_url, settings).client()  # single connection
    conn = client.connection
    conn.disconnect()
    conn.host, conn.port = address
    redis.Connection.connect_check_health(conn)  # the stale address, as it was
    return client


def test_a_demoted_master_answers_readonly_and_the_client_rediscovers(
        sentinel_set: SentinelSet) -> None:
    """A connection left on the old master across a failover: its next write is refused
    (``WriteRefused``: nothing applied, never "done"), and the next goes to the new master.
    The lifecycle tries such a refused transition once more, so it lands on the new master
    instead of failing (``lifecycle.store``)."""
    settings = settings_for(sentinel_set)
    client = redis_conn.client(settings.redis_url, settings)
    assert client.set("k", "before")
    old = sentinel_set.master()
    sentinel_set.failover()
    new = sentinel_set.wait_new_master(old)
    wait_for(lambda: old.client().execute_command("ROLE")[0] == b"slave", 30,
             "the old master to be demoted")
    wait_for(lambda: _writable(client), 30, "writes on the new master")

    pinned = _pinned(settings, old.address)
    with pytest.raises(redis_conn.WriteRefused, match="nothing applied"):
        pinned.set("k", "refused")
    assert pinned.set("k", "after")  # the dropped connection asked the sentinels again
    assert new.client().get("k") == b"after"

    life = create_celery(settings).runtime.lifecycle
    life._store.redis = _pinned(settings, old.address)  # its one client, left on the old node
    record = _record("on-demoted")
    # refused there (nothing applied), tried once more on the master the sentinels name now
    outcome = life.submit(record, ("default", "{}"), cap=0, rate=0.0, burst=0,
                          idempotency=None)
    assert outcome.outcome == "created"
    assert new.client().exists(f"taskplane:task:{record.id}")


def test_one_request_waits_out_a_stalled_master_not_every_idle_connection(
        sentinel_set: SentinelSet) -> None:
    """The master stalls (SIGSTOP) and the sentinels promote a replica. The API's pool
    holds idle connections to the old master; the first write waits out ``REDIS_TIMEOUT``
    there, and the next one, even while another request holds a connection, lands on the
    new master at once rather than on another idle connection to the stalled one: the
    failed connection reopens through the sentinels, and finding a new address drops the
    pool's idle connections (redis-py's pool does that; this test keeps it so)."""
    settings = settings_for(sentinel_set, REDIS_TIMEOUT="1", REDIS_ACK_TIMEOUT="0.5")
    client = redis_conn.client(settings.redis_url, settings)
    pool = client.connection_pool
    held = [pool.get_connection() for _ in range(4)]  # four pooled connections, now idle
    for connection in held:
        pool.release(connection)
    assert client.set("k", "before")
    old = sentinel_set.master()
    old.pause()
    try:
        new = sentinel_set.wait_new_master(old)
        with pytest.raises(redis.TimeoutError):
            client.set("k", "stalled")  # an idle connection to the old master: waits it out
        # a request in flight meanwhile holds a connection (the pool hands out the last one
        # released, the failed one, first), so the next write takes another from the pool
        busy = pool.get_connection()
        started = time.monotonic()
        try:
            wait_for(lambda: _writable(client), 10, "a write on the new master")
        finally:
            pool.release(busy)
        # another idle connection to the stalled master would have waited out the timeout
        assert time.monotonic() - started < 0.9
        assert new.client().get("probe") == b"1"
    finally:
        old.resume()


def test_the_old_master_cut_off_from_its_replicas_gets_no_write_confirmed(
        sentinel_set: SentinelSet) -> None:
    """SIGSTOP the master past down-after, then SIGCONT. Right after it resumes, Redis
    still counts the replicas it had before the pause (it refreshes that count once a
    second), so ``min-replicas-to-write`` alone lets a write or two in: but no replica
    confirms such a write (``WAIT`` answers 0), which is why accepting waits for one. Within
    seconds the old master refuses writes outright, and a client through the sentinels
    writes to the new master."""
    settings = settings_for(sentinel_set)
    client = redis_conn.client(settings.redis_url, settings)
    assert client.set("k", "before")
    old = sentinel_set.master()
    direct = old.client()
    direct.ping()
    old.pause()
    new = sentinel_set.wait_new_master(old)
    old.resume()

    def refused() -> bool:
        try:
            direct.set("k", "split-brain")
        except redis.ResponseError as exc:
            assert str(exc).startswith(("NOREPLICAS", "READONLY")) or \
                isinstance(exc, redis.ReadOnlyError), exc
            return True
        assert direct.execute_command("WAIT", 1, 200) == 0  # taken, but never confirmed
        return False

    wait_for(refused, 5, "the old master to refuse writes")
    wait_for(lambda: _writable(client), 30, "writes through the sentinels")
    assert new.client().get("k") == b"before"
    wait_for(lambda: old.client().execute_command("ROLE")[0] == b"slave", 30,
             "the old master to become a replica")
    wait_for(lambda: old.client().get("probe") == b"1", 10, "the old master to follow")
    assert old.client().get("k") == b"before"  # what it took alone is gone


@pytest.mark.parametrize("change, code", [
    ({"REDIS_SENTINEL_MASTER": "nosuchmaster"}, "unknown_master"),
    ({"REDIS_SENTINEL_PASSWORD": "wrong-password-123456"}, "sentinel_auth"),
])
def test_a_wrong_master_name_or_sentinel_password_is_named_not_a_hang(
        sentinel_set: SentinelSet, change: dict[str, str], code: str) -> None:
    env = sentinel_set.env(**change)
    settings = Settings.from_env(base_env(sentinel_set.url, **env))
    started = time.monotonic()
    problem = redis_conn.diagnose(settings.redis_url, settings)
    assert problem is not None and problem.code == code
    assert time.monotonic() - started < 5
    # readiness says why; liveness does not care
    api = Api(sentinel_set.url, workers=1, threads=2, **env)
    try:
        ready = api.get("/readyz", tenant=None)
        assert ready.status_code == 503
        assert ready.json()["error"]["details"]["sentinel"] == code
        assert api.get("/healthz", tenant=None).status_code == 200
    finally:
        api.close()
    # the worker gives up after its start-up bound, non-zero, naming the setting
    worker = start_worker(sentinel_set.url, name="bad", wait=False,
                          REDIS_STARTUP_TIMEOUT="2", **env)
    wait_for(lambda: not worker.alive(), 30, "the worker to give up")
    assert worker.stop() != 0
    setting = next(iter(change))
    assert setting in worker.log(), worker.log()[-2000:]


def test_silent_sentinels_make_readiness_fail_and_the_worker_exit(
        sentinel_set: SentinelSet) -> None:
    env = sentinel_set.env()
    for s in sentinel_set.sentinels:
        s.kill()
    settings = Settings.from_env(base_env(sentinel_set.url, **env))
    problem = redis_conn.diagnose(settings.redis_url, settings)
    assert problem is not None and problem.code == "no_sentinel"
    worker = start_worker(sentinel_set.url, name="lonely", wait=False,
                          REDIS_STARTUP_TIMEOUT="1", **env)
    wait_for(lambda: not worker.alive(), 30, "the worker to give up")
    assert worker.stop() != 0
    assert "no sentinel answered" in worker.log()


def test_a_sentinel_url_without_a_master_name_stops_the_api_naming_the_setting(
        sentinel_set: SentinelSet) -> None:
    with pytest.raises(Exception, match="REDIS_SENTINEL_MASTER"):
        Api(sentinel_set.url, workers=1, threads=2, REDIS_SENTINEL_MASTER="")
