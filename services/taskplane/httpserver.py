"""A tiny threaded HTTP server for the worker's and the exporter's probes and /metrics.

Those processes are not web applications: a stdlib server in a daemon thread answers
a handful of fixed paths and cannot block the work it reports on.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .settings import listen_host

log = logging.getLogger("taskplane.http")

#: A route answers (status, content type, body).
Handler = Callable[[], tuple[int, str, bytes]]


def json_answer(status: int, body: Mapping[str, object]) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body).encode()


class ThreadingHTTPServer6(ThreadingHTTPServer):
    """The same server on an IPv6 socket: ``::`` takes IPv4 clients too (dual stack)."""

    address_family = socket.AF_INET6


def serve(host: str, port: int, routes: Mapping[str, Handler], name: str) -> ThreadingHTTPServer:
    """Serve ``routes`` on ``host:port`` from a daemon thread; returns the server."""

    class RouteHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                status, ctype, body = json_answer(404, {"error": {
                    "code": "not_found", "message": f"no route {self.path[:100]!r}",
                    "details": {"routes": sorted(routes)}}})
            else:
                try:
                    status, ctype, body = route()
                except Exception as exc:
                    log.exception("%s %s failed", name, self.path)
                    status, ctype, body = json_answer(500, {"error": {
                        "code": "internal_error", "message": type(exc).__name__,
                        "details": None}})
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # probes every few seconds would drown the worker's log

    host = listen_host(host)
    server_class = ThreadingHTTPServer6 if ":" in host else ThreadingHTTPServer
    server = server_class((host, port), RouteHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=f"{name}-http", daemon=True)
    thread.start()
    log.info("%s serving %s on http://%s:%d", name, ", ".join(sorted(routes)), host, port)
    return server
