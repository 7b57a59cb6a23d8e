"""Taking a client connection away from gunicorn: the one place that relies on its internals.

A detached follower (``detached.py``) keeps its client's connection after the request's
greenlet has ended. That needs two things from gunicorn's async worker
(``gunicorn/workers/base_async.py``, ``AsyncWorker.handle``), neither of them a public
API:

* a ``StopIteration`` raised by the WSGI callable propagates out of ``handle_request``
  to ``handle``, which logs "Closing connection" at debug level and closes *its* socket
  object (``util.close``: a plain ``close()``, no ``shutdown()``), writing nothing;
  nothing was written either, as the application never called ``start_response``;
* the socket is in the environ as ``gunicorn.socket``, so its descriptor can be
  duplicated first: the connection then lives on in the duplicate.

``tests/integration/test_handoff.py`` checks both against the gunicorn installed, and
``pyproject.toml`` pins the range it was checked with (:data:`TESTED`). Outside it,
:func:`supported` is false and followers stay held by their greenlets (the fallback).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, NoReturn

import gunicorn

log = logging.getLogger("taskplane.api.handoff")

#: gunicorn major versions whose ``AsyncWorker.handle`` behaves as described above.
TESTED = (27,)


def supported() -> bool:
    """Whether the gunicorn installed is one the hand-off was tested with."""
    version = tuple(gunicorn.version_info)
    if version[0] in TESTED:
        return True
    log.warning("gunicorn %s is not one detached followers were tested with (%s): "
                "followers stay held by their greenlets", ".".join(map(str, version)),
                ", ".join(f"{m}.x" for m in TESTED))
    return False


def detachable(environ: Mapping[str, Any]) -> bool:
    """A plain HTTP/1.1 ``GET`` without a body on a plain socket: a connection that can be
    taken over and answered byte for byte (not TLS, HTTP/2, HTTP/1.0 or ``HEAD``)."""
    sock = environ.get("gunicorn.socket")
    return (sock is not None and not hasattr(sock, "getpeercert")  # TLS sockets have one
            and environ.get("SERVER_PROTOCOL") == "HTTP/1.1"
            and environ.get("REQUEST_METHOD") == "GET"
            and environ.get("HTTP_VERSION", "1.1") != "2"
            and "gunicorn.http2.send_trailers" not in environ
            and environ.get("CONTENT_LENGTH", "") in ("", "0")
            and "HTTP_TRANSFER_ENCODING" not in environ)


def take(environ: Mapping[str, Any]) -> int:
    """A duplicate of the request's socket descriptor, non-blocking: the connection stays
    open through it after gunicorn closes its own (:func:`consumed`)."""
    fd = os.dup(environ["gunicorn.socket"].fileno())
    os.set_blocking(fd, False)
    return fd


def consumed() -> NoReturn:
    """End the request without gunicorn answering it or reading another one from the
    connection: gunicorn closes its socket object and goes on with the next connection.
    Call only after :func:`take`, from the WSGI callable itself, before ``start_response``."""
    raise StopIteration("connection taken over by a detached follower")
