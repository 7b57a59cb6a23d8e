"""What a follower costs below Taskplane's stack: the floor each design could reach.

``python -m bench.follower_floor SERVER`` serves on a free loopback port and holds every
connection as a waiting follower would, without gunicorn, WSGI or Flask:

* ``greenlet``: gevent's ``StreamServer``; each connection a greenlet that reads the
  request, then waits on an ``Event`` a few Python calls deep (the shape of a follower
  under gunicorn's gevent worker, with nothing of the HTTP stack);
* ``asyncio``: ``asyncio.start_server``; each connection a coroutine that reads the
  request, then awaits a future (what a dedicated asyncio follower process would hold).

It prints its port, then answers each line on stdin with ``connections RSS-KiB``.
:func:`measure` drives one: RSS before and with ``n`` connections open, per connection.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import Any

from tests.support.procs import wait_for

from .stack import ROOT

REQUEST = b"GET /v1/tasks/x/events HTTP/1.1\r\nHost: floor\r\nAuthorization: Bearer t\r\n\r\n"


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def _serve_greenlet() -> None:
    from gevent import monkey

    monkey.patch_all()
    from gevent.event import Event
    from gevent.server import StreamServer

    held = [0]

    def follow(sock: Any, depth: int) -> None:
        if depth:
            follow(sock, depth - 1)
            return
        Event().wait()

    def handle(sock: Any, _addr: Any) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        held[0] += 1
        follow(sock, 8)

    import gevent

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    pool = gevent.get_hub().threadpool  # stdin read off the loop, which keeps serving
    pool.apply(lambda: None)  # its thread, before "base"
    print(server.server_port, flush=True)
    while pool.apply(sys.stdin.readline):
        print(held[0], _rss_kib(), flush=True)


def _serve_asyncio() -> None:
    import asyncio

    held = [0]

    async def handle(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        held[0] += 1
        await asyncio.get_running_loop().create_future()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: None)  # the executor's thread, before "base"
        print(port, flush=True)
        while await loop.run_in_executor(None, sys.stdin.readline):
            print(held[0], _rss_kib(), flush=True)

    asyncio.run(main())


def measure(kind: str, n: int) -> dict[str, Any]:
    """Per-connection RSS of ``kind``'s server with ``n`` connections held (after a warm-up
    of a few, so the first connection's one-off costs are not counted)."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.follower_floor", kind],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    socks: list[socket.socket] = []
    try:
        port = int(proc.stdout.readline())

        def stat() -> tuple[int, int]:
            proc.stdin.write("stat\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            held, rss = proc.stdout.readline().split()  # type: ignore[union-attr]
            return int(held), int(rss)

        def open_until(count: int) -> int:
            while len(socks) < count:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                sock.sendall(REQUEST)
                socks.append(sock)
            held: tuple[int, int] = wait_for(
                lambda: (h := stat())[0] >= count and h, 60,
                f"{kind}: {count} connections held", interval=0.1)
            return held[1]

        warm = min(50, n)
        base = open_until(warm)
        loaded = open_until(warm + n)
        return {"connections": n, "rss_bytes": round((loaded - base) * 1024 / n)}
    finally:
        for sock in socks:
            sock.close()
        proc.stdin.close()
        proc.wait(10)


if __name__ == "__main__":
    {"greenlet": _serve_greenlet, "asyncio": _serve_asyncio}[sys.argv[1]]()
