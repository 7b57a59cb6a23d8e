"""A Redis master set under Sentinel on free ports: one master, replicas, three sentinels.

Debian's ``redis-server`` runs a sentinel with ``--sentinel``. A sentinel rewrites its
config file, so each gets its own writable copy in its own directory. Every start waits
for a condition (a PING, the sentinels agreeing on the master and seeing each other),
never for a fixed time, and :meth:`SentinelSet.close` stops everything, whatever state a
fault test left it in (stopped processes are continued first so they can be killed).
"""

from __future__ import annotations

import shutil
import signal as signals
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support.services import free_port, redis_server_binary, wait_for

MASTER_NAME = "tpmaster"
#: Data password of master and replicas; the sentinels have their own.
DATA_PASSWORD = "data-pass-0123456789"
SENTINEL_PASSWORD = "sentinel-pass-0123456789"


@dataclass
class Node:
    """One redis-server (data node or sentinel) in its own directory."""

    port: int
    dir: Path
    args: list[str]
    password: str
    proc: subprocess.Popen[bytes] | None = None
    stopped: bool = field(default=False)

    def start(self) -> Node:
        self.proc = subprocess.Popen(self.args, cwd=self.dir, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for(lambda: self.client().ping(), 10, f"redis-server on port {self.port}")
        return self

    def client(self, timeout: float = 2) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           socket_timeout=timeout, socket_connect_timeout=timeout)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process is gone at once (its data directory stays unless removed)."""
        if self.proc is not None and self.proc.poll() is None:
            if self.stopped:
                self.proc.send_signal(signals.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        self.stopped = False

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signals.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signals.SIGCONT)
        self.stopped = False

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""


class SentinelSet:
    """One master, ``replicas`` replicas and ``sentinels`` sentinels (quorum 2).

    ``min_replicas_to_write``: the master refuses writes unless that many replicas are
    connected with a lag under ``min_replicas_max_lag`` seconds, so a master cut off from
    its replicas (paused, partitioned) stops taking writes that a failover would erase.
    """

    def __init__(self, replicas: int = 2, sentinels: int = 3, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 5000, min_replicas_to_write: int = 1,
                 min_replicas_max_lag: int = 2, appendonly: bool = True) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tp-sentinel-"))
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.min_replicas_to_write = min_replicas_to_write
        self.min_replicas_max_lag = min_replicas_max_lag
        self.appendonly = appendonly
        self.nodes: list[Node] = []
        self.sentinels: list[Node] = []
        self._replicas = replicas
        self._sentinel_count = sentinels

    # --- start ------------------------------------------------------------------------

    def _data_node(self, index: int, replica_of: int | None) -> Node:
        port = free_port()
        d = self.root / f"node{index}"
        d.mkdir()
        args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                "--dir", str(d), "--save", "", "--daemonize", "no",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "everysec", "--logfile", str(d / "redis.log"),
                "--requirepass", DATA_PASSWORD, "--masterauth", DATA_PASSWORD,
                "--min-replicas-to-write", str(self.min_replicas_to_write),
                "--min-replicas-max-lag", str(self.min_replicas_max_lag),
                # loopback: announce what the sentinels and clients can reach
                "--replica-announce-ip", "127.0.0.1",
                "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        return Node(port, d, args, DATA_PASSWORD)

    def _sentinel_node(self, index: int, master: Node) -> Node:
        port = free_port()
        d = self.root / f"sentinel{index}"
        d.mkdir()
        conf = d / "sentinel.conf"  # its own writable copy: sentinels rewrite their config
        conf.write_text("\n".join([
            f"port {port}", "bind 127.0.0.1", f"dir {d}", f"logfile {d / 'redis.log'}",
            "sentinel announce-ip 127.0.0.1", f"sentinel announce-port {port}",
            f"requirepass {SENTINEL_PASSWORD}", f"sentinel sentinel-pass {SENTINEL_PASSWORD}",
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 2",
            f"sentinel auth-pass {MASTER_NAME} {DATA_PASSWORD}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
            f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {MASTER_NAME} 2", ""]))
        return Node(port, d, [redis_server_binary(), str(conf), "--sentinel"], SENTINEL_PASSWORD)

    def start(self) -> SentinelSet:
        try:
            master = self._data_node(0, None)
            # the master cannot write before its replicas are attached
            master.start()
            self.nodes.append(master)
            for i in range(self._replicas):
                self.nodes.append(self._data_node(i + 1, master.port).start())
            wait_for(lambda: self._synced(master), 20, "replicas in sync")
            for i in range(self._sentinel_count):
                self.sentinels.append(self._sentinel_node(i, master).start())
            wait_for(self._sentinels_agree, 30, "sentinels to see each other and the replicas")
        except BaseException:
            self.close()
            raise
        return self

    def _synced(self, master: Node) -> bool:
        info = master.client().info("replication")
        online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                  and v.get("state") == "online"]
        return len(online) == self._replicas

    def _sentinels_agree(self) -> bool:
        for s in self.sentinels:
            c = s.client()
            state = c.sentinel_master(MASTER_NAME)
            if int(state["num-other-sentinels"]) != len(self.sentinels) - 1 or \
                    int(state["num-slaves"]) < self._replicas:
                return False
        return True

    # --- what clients use -------------------------------------------------------------

    @property
    def url(self) -> str:
        """``REDIS_URL`` in kombu's Sentinel form (the data password rides in it)."""
        return ";".join(f"sentinel://:{DATA_PASSWORD}@127.0.0.1:{s.port}/0"
                        for s in self.sentinels)

    def env(self, **extra: str) -> dict[str, str]:
        """What a Taskplane process needs besides ``REDIS_URL``."""
        return {"REDIS_SENTINEL_MASTER": MASTER_NAME,
                "REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD, **extra}

    def master_address(self) -> tuple[str, int] | None:
        """The master as a majority of the live sentinels report it, else None."""
        seen: dict[tuple[str, int], int] = {}
        for s in self.sentinels:
            if not s.alive() or s.stopped:
                continue
            try:
                host, port = s.client(1).sentinel_get_master_addr_by_name(MASTER_NAME)
            except (redis.RedisError, TypeError):
                continue
            key = (host.decode() if isinstance(host, bytes) else host, int(port))
            seen[key] = seen.get(key, 0) + 1
        if not seen:
            return None
        address, votes = max(seen.items(), key=lambda kv: kv[1])
        return address if votes >= 2 else None

    def master(self) -> Node:
        address = self.master_address()
        for node in self.nodes:
            if node.address == address:
                return node
        raise LookupError(f"no node at the master address {address}")

    def replicas(self) -> list[Node]:
        master = self.master()
        return [n for n in self.nodes if n is not master and n.alive()]

    def wait_new_master(self, old: Node, timeout: float = 30) -> Node:
        """Wait until the sentinels name another master and it has taken the role."""
        def promoted() -> Node | None:
            address = self.master_address()
            if address is None or address == old.address:
                return None
            node = next(n for n in self.nodes if n.address == address)
            role = node.client(1).execute_command("ROLE")[0]
            return node if role in (b"master", "master") else None

        found: Node = wait_for(promoted, timeout, "a new master", interval=0.1)
        return found

    def failover(self) -> None:
        """A planned failover (``SENTINEL FAILOVER``), as an operator or a preStop hook runs."""
        self.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", MASTER_NAME)

    def wipe(self, node: Node) -> None:
        """Delete a killed node's data directory contents: the node's disk is lost."""
        for child in node.dir.iterdir():
            if child.name != "redis.log":
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)

    def close(self) -> None:
        for node in [*self.sentinels, *self.nodes]:
            try:
                node.kill()
            except Exception:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
