"""API keys of the HTTP service: each bound to one tenant, with scopes, stored hashed.

A key reads ``clk_<key_id>_<secret>``; only the SHA-256 of the secret is stored (a random
256-bit secret needs no slow hash), compared in constant time. Scopes: ``bot`` (write and read
its tenant's conversations), ``analyst`` (analytics and transcripts), ``auditor`` (replay,
verify, export), ``admin`` (erasure, operations), ``metrics`` (``/metrics``). Each key is
bound to one tenant (``default`` unless given): the service serves its requests through that
tenant's handle (``ledger.tenant(id)``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Engine

from ..domain import validation as v
from ..domain.errors import InvalidValueError, UnknownSubjectError
from ..domain.pydantic_aggregates import Immutable, utc
from ..domain.tenancy import check_tenant
from ..infrastructure.api_keys import KeyTable
from .clock import Clock

SCOPES = ("bot", "analyst", "auditor", "admin", "metrics")
DEFAULT_TENANT = "default"
PREFIX = "clk"


class ApiKey(Immutable):
    """A stored key, without its secret."""

    key_id: str
    tenant: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _key(row: dict[str, object]) -> ApiKey:
    revoked = row["revoked_at"]
    return ApiKey(
        key_id=str(row["key_id"]), tenant=str(row["tenant"]), name=str(row["name"]),
        scopes=tuple(str(row["scopes"]).split()), created_at=datetime.fromisoformat(str(row["created_at"])),
        revoked_at=datetime.fromisoformat(str(revoked)) if revoked else None,
    )


class ApiKeys:
    """Create, revoke, list and check the keys of one store."""

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.table, self.clock = KeyTable(engine), clock

    def create(self, name: str, scopes: Iterable[str], *, tenant: str = DEFAULT_TENANT) -> tuple[ApiKey, str]:
        """A new key and its token (shown this once: only its hash is stored)."""
        name, tenant = v.check_id("name", name), check_tenant(tenant)
        wanted = tuple(dict.fromkeys(v.check_choice("scope", s, SCOPES) for s in scopes))
        if not wanted:
            raise InvalidValueError("scopes", "count_range", f"A key needs a scope: one or more of {', '.join(SCOPES)}.")
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        created = utc(self.clock()).isoformat()
        self.table.add(
            key_id=key_id, tenant=tenant, name=name, scopes=" ".join(wanted),
            secret_sha256=_digest(secret), created_at=created, revoked_at=None,
        )
        return ApiKey(key_id=key_id, tenant=tenant, name=name, scopes=wanted,
                      created_at=datetime.fromisoformat(created)), f"{PREFIX}_{key_id}_{secret}"

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key (at once: its next request is refused); revoking again is a no-op."""
        key_id = v.check_id("key_id", key_id)
        self.table.revoke(key_id, utc(self.clock()).isoformat())
        row = self.table.get(key_id)
        if row is None:
            raise UnknownSubjectError("API key", key_id)
        return _key(row)

    def list(self) -> list[ApiKey]:
        return [_key(row) for row in self.table.rows()]

    def authenticate(self, token: str) -> ApiKey | None:
        """The active key ``token`` is, or None."""
        prefix, _, rest = token.partition("_")
        key_id, _, secret = rest.partition("_")
        if prefix != PREFIX or not key_id or not secret or len(token) > 200:
            return None
        row = self.table.get(key_id)
        if row is None or row["revoked_at"] is not None:
            return None
        if not hmac.compare_digest(str(row["secret_sha256"]), _digest(secret)):
            return None
        return _key(row)


__all__ = ["DEFAULT_TENANT", "SCOPES", "ApiKey", "ApiKeys"]
