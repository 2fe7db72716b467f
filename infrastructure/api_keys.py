"""The table of the HTTP service's API keys, in the ledger's database: ``chatledger_api_keys``.

One row a key: its public id, the tenant it is bound to, a name, its scopes, the SHA-256 of its
secret (the secret itself is never stored) and when it was created and revoked. Rows are never
deleted: a revoked key stays listed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Engine, MetaData, String, Table, insert, select, update

from ..domain.table_prefix import DEFAULT_PREFIX, PREFIX_OPTION, table_name

metadata = MetaData()

api_keys = Table(
    "chatledger_api_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("tenant", String(200), nullable=False),
    Column("name", String(200), nullable=False),
    Column("scopes", String(200), nullable=False),  # space-separated
    Column("secret_sha256", String(64), nullable=False),
    Column("created_at", String(40), nullable=False),  # ISO 8601, UTC
    Column("revoked_at", String(40), nullable=True),
)


class KeyTable:
    """Reads and writes of ``chatledger_api_keys`` (created on first use)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._ready = False
        self.table = api_keys
        prefix = str(engine.get_execution_options().get(PREFIX_OPTION, DEFAULT_PREFIX))
        if prefix != DEFAULT_PREFIX:  # the ledger's table prefix (domain/table_prefix.py)
            self.table = api_keys.to_metadata(MetaData(), name=table_name(prefix, api_keys.name))

    def _ensure(self) -> None:
        if not self._ready:
            self.table.metadata.create_all(self.engine, checkfirst=True)
            self._ready = True

    def add(self, **row: Any) -> None:
        self._ensure()
        with self.engine.begin() as conn:
            conn.execute(insert(self.table).values(**row))

    def get(self, key_id: str) -> dict[str, Any] | None:
        self._ensure()
        with self.engine.connect() as conn:
            row = conn.execute(select(self.table).where(self.table.c.key_id == key_id)).mappings().first()
        return dict(row) if row is not None else None

    def revoke(self, key_id: str, at: str) -> bool:
        """Mark the key revoked at ``at``; False if there is no such key not yet revoked."""
        self._ensure()
        with self.engine.begin() as conn:
            done = conn.execute(
                update(self.table)
                .where(self.table.c.key_id == key_id, self.table.c.revoked_at.is_(None))
                .values(revoked_at=at)
            )
        return bool(done.rowcount)

    def rows(self) -> list[dict[str, Any]]:
        self._ensure()
        with self.engine.connect() as conn:
            found = conn.execute(select(self.table).order_by(self.table.c.created_at, self.table.c.key_id))
            return [dict(row) for row in found.mappings()]


__all__ = ["KeyTable", "api_keys", "metadata"]
