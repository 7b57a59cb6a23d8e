"""Bearer-token authentication: every token belongs to one tenant, or to an operator.

A tenant token sees and acts on its tenant's tasks only; another tenant's task is 404, as
if it did not exist. An operator token (``API_ADMIN_TOKENS``) may read, revoke and retry
any tenant's tasks and list every tenant's dead letters: views ask :func:`scope` (None for
an operator: every tenant) or :func:`may_see`, never compare tenants themselves.

Tokens are compared in constant time against every configured token, tenant and operator
alike (no early exit), so response time does not reveal how much of a guess was right,
nor which kind of token it was close to. Tokens never reach the logs: only the name does.
"""

from __future__ import annotations

import hmac

from flask import Flask, current_app, g, request

from .errors import ApiError

#: Tenant of every caller when ``AUTH_DISABLED`` is set for local development.
LOCAL_TENANT = "local"
#: Longest tenant name an operator may give as ``?tenant=``.
MAX_TENANT_NAME = 64


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, None,
                    {"WWW-Authenticate": 'Bearer realm="taskplane"'})


def authenticate() -> None:
    """``before_request`` hook: set ``g.tenant`` or answer 401."""
    config = current_app.extensions["taskplane"]
    if config.auth_disabled:
        g.tenant, g.operator = LOCAL_TENANT, False
        _named_tenant()
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise _unauthorized("missing Authorization header; send 'Authorization: Bearer <token>'")
    if scheme.lower() != "bearer" or not token.strip() or " " in token.strip():
        raise _unauthorized("malformed Authorization header; expected 'Bearer <token>'")
    presented = token.strip()
    tenant = match_token(config.tokens, presented)
    operator = match_token(config.admin_tokens, presented)
    if operator is not None:
        g.tenant, g.operator = operator, True
    elif tenant is not None:
        g.tenant, g.operator = tenant, False
    else:
        raise _unauthorized("invalid token")
    _named_tenant()


def _named_tenant() -> None:
    """``?tenant=``: an operator names the one tenant a request is about (listing, creating
    a schedule); from a tenant's token it is refused, never silently ignored."""
    raw = request.args.get("tenant")
    g.named_tenant = None
    if raw is None:
        return
    if not is_operator():
        raise ApiError(403, "forbidden", "only an operator token may name a tenant (?tenant=)",
                       {"fields": [{"field": "tenant", "message": "operator tokens only"}]})
    if not (0 < len(raw) <= MAX_TENANT_NAME and raw.isprintable() and ":" not in raw
            and "," not in raw):
        raise ApiError(422, "validation_failed", "query parameters are invalid",
                       {"fields": [{"field": "tenant", "message": "a tenant name"}]})
    g.named_tenant = raw


def match_token(tokens: dict[str, str], presented: str) -> str | None:
    """The tenant owning ``presented``, comparing against every token in constant time."""
    found = None
    candidate = presented.encode()
    for token, tenant in tokens.items():
        if hmac.compare_digest(token.encode(), candidate):
            found = tenant
    return found


def current_tenant() -> str:
    """The tenant the caller's new tasks belong to (an operator's: its own name)."""
    tenant: str = g.tenant  # set by authenticate, before every view
    return tenant


def is_operator() -> bool:
    return bool(g.get("operator", False))


def scope() -> str | None:
    """Whose tasks the caller lists: its tenant; for an operator the tenant it names with
    ``?tenant=``, or None (every tenant)."""
    return g.get("named_tenant") if is_operator() else current_tenant()


def acting_tenant() -> str:
    """The tenant a new object belongs to: the caller's, or the one an operator names."""
    return g.get("named_tenant") or current_tenant()


def may_see(tenant: str) -> bool:
    """Whether the caller may read and act on a task of ``tenant``."""
    return is_operator() or tenant == current_tenant()


def init_app(app: Flask, tokens: dict[str, str], auth_disabled: bool) -> None:
    if not tokens and not auth_disabled:
        raise RuntimeError(
            "API_TOKENS is empty: set tenant:token pairs (or a token file), or set "
            "AUTH_DISABLED=true for local development only")
