"""Signed webhooks (Standard Webhooks): the target check, the signature, the delivery.

A task or workflow may carry ``"notify": {"url", "secret"}``. When it ends, the script
that ends it pushes a delivery message (held on its record, built here at submission:
:func:`delivery_template`), so no ending is lost between the state and its webhook; a
worker then POSTs the event (:func:`deliver`), never the API's request path.

* **Signature** (https://www.standardwebhooks.com): headers ``webhook-id`` (stable across
  retries, so receivers de-duplicate), ``webhook-timestamp`` (epoch seconds) and
  ``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` keyed by the
  base64 bytes after ``whsec_`` in the secret.
* **SSRF guard**: a target whose host resolves to a loopback, link-local, private,
  multicast, reserved or unspecified address (cloud metadata at 169.254.169.254 is
  link-local) is refused unless ``WEBHOOK_ALLOW_PRIVATE``; checked at submission and again
  before every attempt (DNS may have changed). ``https`` only unless
  ``WEBHOOK_ALLOW_HTTP``; other schemes never. Redirects are never followed: a 3xx is a
  failed attempt.
* **Retries**: a failed attempt (timeout, connection error, non-2xx) is retried with
  exponential back-off and full jitter, at most :data:`MAX_BACKOFF` apart, until
  ``WEBHOOK_RETRY_PERIOD`` after the event; then the delivery is dead (listed, retryable).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

SECRET_PREFIX = "whsec_"  # noqa: S105 (the Standard Webhooks prefix, not a secret)
#: Standard Webhooks secrets are 24-64 random bytes.
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64
MAX_URL = 2048
#: Longest wait between two attempts, and the first one.
MAX_BACKOFF, FIRST_BACKOFF = 3600.0, 5.0
#: The task that delivers (registered by :func:`register`, consumed from WEBHOOK_QUEUE).
DELIVER_TASK = "taskplane.webhook.deliver"
#: Event type per final state and kind of subject.
EVENTS = {("task", "SUCCESS"): "task.succeeded", ("task", "FAILURE"): "task.failed",
          ("task", "REVOKED"): "task.revoked", ("workflow", "SUCCESS"): "workflow.completed",
          ("workflow", "FAILURE"): "workflow.failed", ("workflow", "REVOKED"): "workflow.revoked"}

Resolver = Callable[[str], list[str]]


def resolve(host: str) -> list[str]:
    """Every address ``host`` resolves to (any family)."""
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None)})


def refused_address(address: str) -> bool:
    """Whether a webhook may not target ``address`` without ``WEBHOOK_ALLOW_PRIVATE``."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_multicast
            or ip.is_reserved or ip.is_unspecified or not ip.is_global)


def target_problem(url: Any, allow_private: bool, allow_http: bool,
                   resolver: Resolver = resolve) -> str | None:
    """Why ``url`` may not receive webhooks, or None."""
    if not isinstance(url, str) or not 0 < len(url) <= MAX_URL:
        return f"an absolute URL of at most {MAX_URL} characters"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port
    except ValueError as exc:
        return f"not a URL: {exc}"
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        return f"scheme must be {' or '.join(schemes)}"
    if not host:
        return "an absolute URL with a host"
    if parts.username or parts.password:
        return "credentials do not belong in the URL; sign with the secret"
    if allow_private:
        return None
    try:
        addresses = [host] if _is_ip(host) else resolver(host)
    except (OSError, UnicodeError):
        return f"host {host!r} does not resolve"
    if not addresses:
        return f"host {host!r} does not resolve"
    if any(refused_address(a) for a in addresses):
        return "targets a loopback, link-local, private or metadata address"
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def secret_key(secret: Any) -> bytes | None:
    """The HMAC key of a ``whsec_`` secret, or None if it is not one."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        return None
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES else None


def notify_problems(value: Any, allow_private: bool, allow_http: bool,
                    resolver: Resolver = resolve) -> list[dict[str, str]]:
    """What is wrong with a ``notify`` object, each ``{field, message}`` (field relative
    to ``notify``)."""
    if not isinstance(value, dict) or set(value) != {"url", "secret"}:
        return [{"field": "notify", "message": 'an object {"url", "secret"}'}]
    problems = []
    problem = target_problem(value["url"], allow_private, allow_http, resolver)
    if problem:
        problems.append({"field": "notify.url", "message": problem})
    if secret_key(value["secret"]) is None:
        problems.append({"field": "notify.secret",
                         "message": f"{SECRET_PREFIX} followed by base64 of "
                                    f"{MIN_SECRET_BYTES}-{MAX_SECRET_BYTES} bytes"})
    return problems


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value."""
    key = secret_key(secret)
    if key is None:
        raise ValueError("not a whsec_ secret")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def event_id(kind: str, subject: str, state: str, ended_at: str) -> str:
    """The ``webhook-id`` of an ending: the same for every attempt of its delivery."""
    digest = hashlib.sha256(f"{kind}:{subject}:{state}:{ended_at}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def backoff(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds before retry ``attempt`` (0-based): full jitter over an exponential cap."""
    cap = min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** min(attempt, 20))
    return max(1.0, cap * float(rng()))


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx surfaces as an HTTPError: a failed attempt


_OPENER = urllib.request.build_opener(_NoRedirects)


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt, as recorded on its task or workflow."""

    at: float
    status: int  # HTTP status; 0: no answer
    latency_ms: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def as_json(self) -> str:
        return json.dumps({"at": self.at, "status": self.status,
                           "latency_ms": round(self.latency_ms, 1), "error": self.error})


def post(url: str, secret: str, msg_id: str, payload: dict[str, Any], timeout: float,
         now: Callable[[], float] = time.time) -> Attempt:
    """POST the signed event once; never follows a redirect, never raises."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    timestamp = int(now())
    request = urllib.request.Request(url, data=body, method="POST", headers={  # noqa: S310
        "content-type": "application/json", "user-agent": "taskplane-webhooks",
        "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body)})
    started = time.monotonic()
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(65536)
            status, error = response.status, ""
    except urllib.error.HTTPError as exc:
        status, error = exc.code, f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:  # timeouts, refused connections, TLS errors
        status, error = 0, f"{type(exc).__name__}: {exc}"[:300]
    return Attempt(now(), status, (time.monotonic() - started) * 1000, error)
