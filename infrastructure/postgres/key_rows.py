"""The PostgreSQL recorder's whole-table key reads and writes, for ``content-keys rotate``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.sql import SQL


class PostgresKeyRows:
    """A mixin of :class:`~chatledger.infrastructure.postgres.recorder.PostgresLedgerRecorder`."""

    def stored_keys(self) -> list[tuple[str, bytes]]:
        """Every ``(kid, stored bytes)`` of ``chatledger_keys`` (for ``keys rotate``)."""
        me: Any = self
        with me.datastore.transaction(commit=False) as c:
            c.execute(SQL("SELECT kid, key FROM {}").format(me.qualified(me.KEYS)))
            return [(r["kid"], bytes(r["key"])) for r in c.fetchall()]

    def any_wrapped_key(self) -> bool:
        me: Any = self
        with me.datastore.transaction(commit=False) as c:
            c.execute(SQL("SELECT 1 FROM {} WHERE length(key) > 32 LIMIT 1").format(me.qualified(me.KEYS)))
            return c.fetchone() is not None

    def wrapped_key_count(self) -> tuple[int, int]:
        me: Any = self
        with me.datastore.transaction(commit=False) as c:
            c.execute(
                SQL(
                    "SELECT count(*) FILTER (WHERE length(key) > 32) AS w, "
                    "count(*) FILTER (WHERE length(key) = 32) AS r FROM {}"
                ).format(me.qualified(me.KEYS))
            )
            row = c.fetchone()
            return int(row["w"]), int(row["r"])

    def destroyed_key_ids(self) -> list[str]:
        me: Any = self
        with me.datastore.transaction(commit=False) as c:
            c.execute(SQL("SELECT kid FROM {}").format(me.qualified(me.DESTROYED)))
            return [r["kid"] for r in c.fetchall()]

    def replace_stored_keys(self, rows: Sequence[tuple[str, bytes, bytes]]) -> int:
        """``(kid, old, new)``: store ``new`` where the row still holds ``old`` (one transaction)."""
        me: Any = self
        with me.datastore.transaction(commit=True) as c:
            c.executemany(
                SQL("UPDATE {} SET key=%s WHERE kid=%s AND key=%s").format(me.qualified(me.KEYS)),
                [(n, k, o) for k, o, n in rows],
            )
        return len(rows)
