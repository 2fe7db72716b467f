"""Raw SQL access to a ledger's database, the way an attacker or an auditor would use it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from .conftest import POSTGRES_CONNINFO


class RawDB:
    """Hand-written SQL on the events table (``stored_events`` on SQLite, ``chatledger_events``
    on PostgreSQL) and the hash table, bypassing the ledger."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.path = Path(parsed.database or "")
        schema = parsed.query.get("schema")
        self.schema = schema if isinstance(schema, str) else "public"
        self.events = "stored_events" if self.is_sqlite else "chatledger_events"
        self.position = "rowid" if self.is_sqlite else "notification_id"

    @contextmanager
    def _conn(self) -> Iterator[Any]:
        if self.is_sqlite:
            conn = sqlite3.connect(self.path, isolation_level=None)
            try:
                yield conn
            finally:
                conn.close()
        else:
            with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as conn:
                conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
                yield conn

    def _sql(self, statement: str) -> str:
        return statement if self.is_sqlite else statement.replace("?", "%s")

    def id_param(self, aggregate_id: UUID) -> Any:
        """An aggregate id as this database's driver binds it (hex text on SQLite)."""
        return aggregate_id.hex if self.is_sqlite else aggregate_id

    def execute(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._conn() as conn:
            cur = conn.execute(self._sql(statement), params)
            return list(cur.fetchall()) if cur.description else []

    def state(self, aggregate_id: UUID, version: int) -> bytes:
        rows = self.execute(
            f"SELECT state FROM {self.events} WHERE originator_id=? AND originator_version=?",
            (self.id_param(aggregate_id), version),
        )
        return bytes(rows[0][0])

    def set_state(self, aggregate_id: UUID, version: int, state: bytes) -> None:
        self.execute(
            f"UPDATE {self.events} SET state=? WHERE originator_id=? AND originator_version=?",
            (state, self.id_param(aggregate_id), version),
        )

    def delete_event(self, aggregate_id: UUID, version: int, *, with_hash: bool) -> None:
        params = (self.id_param(aggregate_id), version)
        self.execute(f"DELETE FROM {self.events} WHERE originator_id=? AND originator_version=?", params)
        if with_hash:
            self.execute(
                "DELETE FROM chatledger_event_hashes WHERE originator_id=? AND originator_version=?", params
            )

    def delete_aggregate(self, aggregate_id: UUID, *, with_hashes: bool) -> None:
        self.execute(f"DELETE FROM {self.events} WHERE originator_id=?", (self.id_param(aggregate_id),))
        if with_hashes:
            self.execute("DELETE FROM chatledger_event_hashes WHERE originator_id=?", (self.id_param(aggregate_id),))

    def swap_versions(self, aggregate_id: UUID, a: int, b: int) -> None:
        oid = self.id_param(aggregate_id)
        q = f"UPDATE {self.events} SET originator_version=? WHERE originator_id=? AND originator_version=?"
        self.execute(q, (-1, oid, a))
        self.execute(q, (a, oid, b))
        self.execute(q, (b, oid, -1))

    def table_names(self) -> list[str]:
        if self.is_sqlite:
            return [r[0] for r in self.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [
            r[0]
            for r in self.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema=?", (self.schema,)
            )
        ]

    def dump(self) -> bytes:
        """Every row of every table as text (PostgreSQL), or the raw bytes of the
        database file, its WAL and shared-memory files (SQLite)."""
        if self.is_sqlite:
            return b"".join(
                p.read_bytes() for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")) if p.exists()
            )
        chunks: list[bytes] = []
        with self._conn() as conn:
            for table in self.table_names():
                for (row,) in conn.execute(
                    sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier(self.schema, table))
                ):
                    chunks.append(row.encode())
        return b"\n".join(chunks)
