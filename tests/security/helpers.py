"""Helpers shared by the security tests: the error envelope, raw requests."""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass, field
from typing import Any

import requests

from tests.support.services import TEST_TOKENS, Api

#: Routes that answer without a token (probes and the API description).
PUBLIC_ROUTES = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})


def bearer(tenant: str = "acme") -> dict[str, str]:
    return {"Authorization": f"Bearer {TEST_TOKENS[tenant]}"}


def assert_error(r: requests.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """``r`` is ``status`` with the one error envelope; returns its ``error`` object."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "message", "details"}, err
    assert isinstance(err["code"], str) and err["code"], err
    assert isinstance(err["message"], str) and err["message"], err
    if code is not None:
        assert err["code"] == code, err
    return err


def fresh(api: Api, method: str, path: str, **kwargs: Any) -> requests.Response:
    """One request on its own connection, for bodies gunicorn may answer before reading.

    gunicorn closes a keep-alive connection whose unread body is large; a pooled
    session would trip over that on its next request.
    """
    kwargs.setdefault("timeout", 30)
    return requests.request(method, api.base + path, **kwargs)


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    #: Every status line the server sent on the connection (more than one = smuggled request).
    status_lines: list[str]

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(api: Api, head: bytes, body: bytes = b"", timeout: float = 15) -> RawResponse:
    """Send bytes as they are (no client-side checks or normalisation); read until close.

    ``head`` is the request line and headers without the blank line; ``Connection:
    close`` is added so the server ends the response by closing.
    """
    with socket.create_connection(("127.0.0.1", api.port), timeout=timeout) as sock:
        sock.sendall(head.rstrip(b"\r\n") + b"\r\nConnection: close\r\n\r\n" + body)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    data = b"".join(chunks)
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status_line = lines[0]
    assert status_line.startswith("HTTP/1."), f"no HTTP response: {data[:200]!r}"
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if ":" in line]
    status_lines = [m.decode() for m in re.findall(rb"HTTP/1\.[01] \d{3}[^\r\n]*", data)]
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), None)
    return RawResponse(int(status_line.split()[1]), headers,  # type: ignore[arg-type]
                       rest[:length] if length is not None else rest, status_lines)


def assert_raw_error(r: RawResponse, status: int, code: str | None = None) -> dict[str, Any]:
    """The raw response is ``status`` with the API's error envelope."""
    assert r.status == status, f"expected {status}, got {r.status}: {r.body[:300]!r}"
    assert (r.header("Content-Type") or "").startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


@dataclass
class FuzzStats:
    requests: int = 0
    server_errors: int = 0
    nonconforming: int = 0
    #: One example per distinct problem: (operation, problem) -> text of the first case.
    problems: dict[tuple[str, str], str] = field(default_factory=dict)
    #: Responses per status code, to show the fuzzing reached past the door.
    statuses: dict[int, int] = field(default_factory=dict)
    ran: bool = False
    #: The schemathesis CLI run's own summary (``test_fuzz_happy_path.py``), if it ran.
    happy_path: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"fuzz: requests={self.requests} 5xx={self.server_errors} "
                f"nonconforming={self.nonconforming}")
