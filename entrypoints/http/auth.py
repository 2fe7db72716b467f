"""API keys on requests: ``Authorization: Bearer clk_<key_id>_<secret>``.

No key, an unknown or a revoked one: 401 (problem ``unauthorized``), nothing read or written. A
key without a scope the endpoint takes: 403 (``forbidden``). A request is then its key's
tenant's (:func:`tenant_of`); a session id of another tenant answers 404, as an unknown one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request
from starlette.exceptions import HTTPException

from ...application.aio import AsyncChatLedger
from ...application.api_keys import DEFAULT_TENANT, ApiKey


class Unauthorized(HTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(401, detail, headers={"WWW-Authenticate": 'Bearer realm="chatledger"'})


class Forbidden(HTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(403, detail)


def require(*scopes: str) -> Callable[[Request], Awaitable[ApiKey | None]]:
    """A FastAPI dependency: the request's key, which must hold one of ``scopes``."""

    async def check(request: Request) -> ApiKey | None:
        if not request.app.state.require_keys:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("An API key is required: Authorization: Bearer <key>.")
        ledger: AsyncChatLedger = request.app.state.ledgers[DEFAULT_TENANT]
        key = await ledger.run("authenticate", lambda: ledger.sync.api_keys.authenticate(token.strip()))
        if key is None:
            raise Unauthorized("The API key is unknown or revoked.")
        if not set(scopes) & set(key.scopes):
            raise Forbidden(f"This endpoint takes a key with scope {' or '.join(scopes)}.")
        request.state.key = key
        return key

    return check


def tenant_of(request: Request) -> str:
    key: ApiKey | None = getattr(request.state, "key", None)
    return key.tenant if key is not None else DEFAULT_TENANT


__all__ = ["Forbidden", "Unauthorized", "require", "tenant_of"]
