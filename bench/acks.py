"""Acknowledged acceptance (issue 24): what ``REDIS_MIN_REPLICAS_ACK=1`` costs a submit.

Two APIs side by side on one Redis master that has one local replica (``REPLICAOF``):
one with ``REDIS_MIN_REPLICAS_ACK=1`` (every submit sends ``WAIT 1`` after its script and
answers once the replica has it: the default behind Sentinel), one with 0 (the answer
comes as soon as the master has it). The same closed-loop wrk run of ``POST /v1/tasks``
against each, alternating over rounds (the order rotates), reports requests/s and p99 per
side, and their ratio. On loopback the replica's round trip is tens of microseconds: a
replica in another zone adds its network round trip to every submit on top of this.
"""

from __future__ import annotations

import json
import logging
import time
from functools import partial
from typing import Any

from tests.support.services import RedisServer

from .figures import NOOP_BODY, SUBMIT_PATH, Sizes, auth_headers, median, rounded, taskplane_waiting
from .loadgen import connection_split, run_wrk
from .stack import Stack

#: Replicas each side asks to confirm a submit, as ``REDIS_MIN_REPLICAS_ACK``.
SIDES = {"ack_1": "1", "ack_0": "0"}


def _replica_of(master: RedisServer) -> RedisServer:
    """A local replica of ``master``, returned once it is in sync."""
    replica = RedisServer().start()
    replica.client().replicaof("127.0.0.1", master.port)
    deadline = time.monotonic() + 30
    while replica.client().info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            replica.close()
            raise TimeoutError("replica never in sync")
        time.sleep(0.05)  # polling the link status
    return replica


def replica_acks(stack: Stack, sizes: Sizes, rep: logging.Logger) -> dict[str, Any]:
    body = json.dumps(NOOP_BODY)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    with stack.private_redis() as master:
        replica = _replica_of(master)
        try:
            servers = {side: stack.start_api(f"api-{side}", REDIS_MIN_REPLICAS_ACK=acks)
                       for side, acks in SIDES.items()}
            order = list(SIDES)
            for n in range(sizes.enqueue_rounds):
                for side in order[n % 2:] + order[:n % 2]:  # rotate who goes first
                    server = servers[side].wait_children(2)
                    result = run_wrk(server.base + SUBMIT_PATH, seconds=sizes.enqueue_seconds,
                                     connections=sizes.connections, method="POST", body=body,
                                     headers=auth_headers(stack), workdir=stack.workdir,
                                     spread=partial(connection_split, server.port,
                                                    server.children()))
                    # what it accepted is queued: a 503 outcome_unknown would queue nothing
                    runs[side].append({**result.as_dict(), "queued": taskplane_waiting(stack)})
                    stack.client().flushdb()  # the next run starts from an empty queue
            stack.stop(*servers.values())
            lag = replica.client().info("replication").get("master_link_status")
        finally:
            replica.close()
    results = {side: {
        "replicas_ack": int(SIDES[side]),
        "requests_per_s": rounded(median(r["requests_per_s"] for r in rows)),
        "p50_ms": rounded(median(r["latency_ms"]["p50"] for r in rows)),
        "p99_ms": rounded(median(r["latency_ms"]["p99"] for r in rows)),
        "errors": sum(sum(r["errors"].values()) for r in rows),
        "queued": sum(r["queued"] for r in rows),
        "runs": rows,
    } for side, rows in runs.items()}
    on, off = results["ack_1"], results["ack_0"]
    ratio = rounded(on["requests_per_s"] / off["requests_per_s"]) if off["requests_per_s"] else None
    rep.info(f"replica acks: ack=1 {on['requests_per_s']}/s p99 {on['p99_ms']} ms, "
             f"ack=0 {off['requests_per_s']}/s p99 {off['p99_ms']} ms")
    return {"results": results, "ack_1_vs_0": ratio,
            "p99_added_ms": rounded(on["p99_ms"] - off["p99_ms"]),
            "replica_link": lag}
