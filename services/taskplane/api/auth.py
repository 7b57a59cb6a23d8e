"""Bearer-token authentication: every token belongs to one tenant.

Tokens are compared in constant time against every configured token (no early
exit), so response time does not reveal how much of a guess was right. Tokens
never reach the logs: only the tenant name does.
"""

from __future__ import annotations

import hmac

from flask import Flask, current_app, g, request

from .errors import ApiError

#: Tenant of every caller when ``AUTH_DISABLED`` is set for local development.
LOCAL_TENANT = "local"


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, None,
                    {"WWW-Authenticate": 'Bearer realm="taskplane"'})


def authenticate() -> None:
    """``before_request`` hook: set ``g.tenant`` or answer 401."""
    config = current_app.extensions["taskplane"]
    if config.auth_disabled:
        g.tenant = LOCAL_TENANT
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise _unauthorized("missing Authorization header; send 'Authorization: Bearer <token>'")
    if scheme.lower() != "bearer" or not token.strip() or " " in token.strip():
        raise _unauthorized("malformed Authorization header; expected 'Bearer <token>'")
    tenant = match_token(config.tokens, token.strip())
    if tenant is None:
        raise _unauthorized("invalid token")
    g.tenant = tenant


def match_token(tokens: dict[str, str], presented: str) -> str | None:
    """The tenant owning ``presented``, comparing against every token in constant time."""
    found = None
    candidate = presented.encode()
    for token, tenant in tokens.items():
        if hmac.compare_digest(token.encode(), candidate):
            found = tenant
    return found


def current_tenant() -> str:
    return g.tenant  # type: ignore[no-any-return]


def init_app(app: Flask, tokens: dict[str, str], auth_disabled: bool) -> None:
    if not tokens and not auth_disabled:
        raise RuntimeError(
            "API_TOKENS is empty: set tenant:token pairs (or a token file), or set "
            "AUTH_DISABLED=true for local development only")
