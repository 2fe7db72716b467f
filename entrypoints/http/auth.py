"""API keys on requests: ``Authorization: Bearer clk_<key_id>_<secret>``.

No key, an unknown or a revoked one: 401 (problem ``unauthorized``), nothing read or written. A
key without a scope the endpoint takes: 403 (``forbidden``). A request is then its key's
tenant's (:func:`ledger_of`: the tenant's handle on the store, ``ledger.tenant(id)``); a session,
visitor or user id of another tenant answers 404, as an unknown one.

A key once checked is remembered by this process for ``key_cache_seconds`` (5 s by default),
so a request costs no key lookup in the database: a key revoked (by ``chatledger keys revoke``
in another process) is refused by every service process within that time.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable

from fastapi import Request
from starlette.exceptions import HTTPException

from ... import ChatLedgerError
from ...domain.actors import adopt, safe_token
from ...application.aio import AsyncChatLedger
from ...application.api_keys import DEFAULT_TENANT, ApiKey

KEY_CACHE_SECONDS = 5.0
MAX_CACHED_KEYS = 10_000


class Unauthorized(HTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(401, detail, headers={"WWW-Authenticate": 'Bearer realm="chatledger"'})


class Forbidden(HTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(403, detail)


class KeyCache:
    """Keys this process checked lately, by the SHA-256 of their token (never the token)."""

    def __init__(self, seconds: float = KEY_CACHE_SECONDS) -> None:
        self.seconds = seconds
        self.keys: dict[bytes, tuple[float, ApiKey]] = {}

    def get(self, digest: bytes) -> ApiKey | None:
        found = self.keys.get(digest)
        if found is None:
            return None
        if found[0] < time.monotonic():
            del self.keys[digest]
            return None
        return found[1]

    def put(self, digest: bytes, key: ApiKey) -> None:
        if self.seconds <= 0:
            return
        if len(self.keys) >= MAX_CACHED_KEYS:
            self.keys.clear()
        self.keys[digest] = (time.monotonic() + self.seconds, key)


async def authenticate(request: Request, token: str) -> ApiKey | None:
    cache: KeyCache = request.app.state.key_cache
    digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
    key = cache.get(digest)
    if key is None:
        ledger: AsyncChatLedger = request.app.state.ledgers[DEFAULT_TENANT]
        key = await ledger.run("authenticate", lambda: ledger.sync.api_keys.authenticate(token))
        if key is not None:
            cache.put(digest, key)
    return key


def require(*scopes: str) -> Callable[[Request], Awaitable[ApiKey | None]]:
    """A FastAPI dependency: the request's key, which must hold one of ``scopes``."""
    wanted = frozenset(scopes)
    refusal = f"This endpoint takes a key with scope {' or '.join(scopes)}."

    async def check(request: Request) -> ApiKey | None:
        if not request.app.state.require_keys:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("An API key is required: Authorization: Bearer <key>.")
        key = await authenticate(request, token)
        if key is None:
            raise Unauthorized("The API key is unknown or revoked.")
        if wanted.isdisjoint(key.scopes):
            raise Forbidden(refusal)
        request.state.key = key
        request.state.ledger = await tenant_ledger(request, key.tenant)
        adopt(f"api-key:{safe_token(key.key_id)}")  # the request's events name the key that wrote them
        return key

    return check


async def tenant_ledger(request: Request, tenant: str) -> AsyncChatLedger:
    """The tenant's handle on the service's store (made once per tenant, then kept)."""
    ledgers: dict[str, AsyncChatLedger] = request.app.state.ledgers
    ledger = ledgers.get(tenant)
    if ledger is None:
        try:
            ledger = ledgers[tenant] = await ledgers[DEFAULT_TENANT].tenant(tenant)
        except ChatLedgerError as err:  # a key bound to a name no tenant can have: nothing here
            raise HTTPException(404, "No such resource.") from err
    return ledger


def tenant_of(request: Request) -> str:
    key: ApiKey | None = getattr(request.state, "key", None)
    return key.tenant if key is not None else DEFAULT_TENANT


def ledger_of(request: Request) -> AsyncChatLedger:
    """The ledger of the request's tenant: its key's tenant handle (without keys: the default)."""
    ledger: AsyncChatLedger | None = getattr(request.state, "ledger", None)
    if ledger is None:
        ledger = request.app.state.ledgers[DEFAULT_TENANT]
    return ledger


__all__ = [
    "Forbidden", "KeyCache", "Unauthorized", "authenticate", "ledger_of", "require", "tenant_ledger", "tenant_of",
]
