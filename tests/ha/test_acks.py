"""Acknowledged acceptance: a 202 only for what a replica has (``WAIT`` after the script).

Real processes: a Sentinel master set and gunicorn. Replicas are paused (SIGSTOP) to
make ``WAIT`` time out while the master still counts them (``min-replicas-max-lag``), which
is the window where a failover would erase an unconfirmed write.
"""

from __future__ import annotations

import uuid

from taskplane.settings import Settings
from tests.support.scrape import scrape, value
from tests.support.sentinel import SentinelSet
from tests.support.services import Api, wait_for


def test_auto_asks_one_replica_behind_sentinel_and_none_for_a_single_node() -> None:
    assert Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"}).replicas_ack == 0
    assert Settings.from_env({"REDIS_URL": "sentinel://127.0.0.1:26379/0",
                              "REDIS_SENTINEL_MASTER": "m"}).replicas_ack == 1


def test_a_submission_no_replica_confirms_is_outcome_unknown_and_a_replay_finds_it(
        sentinel_set: SentinelSet) -> None:
    api = Api(sentinel_set.url, workers=1, threads=4, QUEUES="parked",
              **sentinel_set.env(REDIS_ACK_TIMEOUT="0.5"))
    try:
        key = {"Idempotency-Key": f"ack-{uuid.uuid4()}"}
        body = {"task": "test.echo", "kwargs": {"value": 1}, "queue": "parked"}
        confirmed = api.post("/v1/tasks", json=body)
        assert confirmed.status_code == 202, confirmed.text

        replicas = sentinel_set.replicas()
        for node in replicas:
            node.pause()  # connected as far as the master knows, acknowledging nothing
        try:
            r = api.post("/v1/tasks", json=body, headers=key)
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert error["code"] == "outcome_unknown"  # never 202, never "nothing accepted"
            task_id = error["details"]["id"]
            assert task_id
        finally:
            for node in replicas:
                node.resume()
        # the write was on the master: the replay returns that task, not a second one
        replay = wait_for(lambda: _accepted(api, body, key), 30, "a confirmed replay", 0.2)
        assert replay["id"] == task_id
        samples = scrape(api.base + "/metrics")
        assert value(samples, "taskplane_redis_replica_acks_total", outcome="timeout") >= 1
        assert value(samples, "taskplane_redis_replica_acks_total", outcome="confirmed") >= 2
    finally:
        api.close()


def _accepted(api: Api, body: dict, headers: dict) -> dict | None:
    r = api.post("/v1/tasks", json=body, headers=headers)
    return r.json() if r.status_code == 202 else None


def test_more_acks_than_replicas_warns_at_start_and_answers_outcome_unknown(
        sentinel_set: SentinelSet) -> None:
    api = Api(sentinel_set.url, workers=1, threads=2, QUEUES="parked",
              **sentinel_set.env(REDIS_MIN_REPLICAS_ACK="3", REDIS_ACK_TIMEOUT="0.2"))
    try:
        r = api.post("/v1/tasks", json={"task": "test.echo", "kwargs": {"value": 1},
                                        "queue": "parked"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "outcome_unknown", r.text
        assert "REDIS_MIN_REPLICAS_ACK=3 but the master has 2 replica(s)" in api.process.log()
    finally:
        api.close()
