"""Verification on SQLite: the hash chains and the key tables read in one read transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.sqlite import SQLiteDatastore

from ..hashchain import EventRow, HashRow, VerificationReport, removed_sessions, verify_rows
from ...domain.table_prefix import DEFAULT_PREFIX
from ..recording import ERASURE_TOPIC, KeyAuditor, KeyCodec, LedgerTableNames
from ..removal import REMOVED_TOPIC
from ..sealing import Anchor, Seal, check_seals
from .queries import sqlite_select_in


class SQLiteKeyTables(LedgerTableNames):
    """The key tables as ``KeyAudit`` reads them, on the verification's connection."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        events_table: str,
        open_keys: Callable[[dict[str, bytes]], dict[str, bytes | None]],
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self.name_tables(prefix)
        self.conn = conn
        self.events_table = events_table
        self.open_keys = open_keys

    def _select_in(self, sql: str, values: Sequence[Any]) -> list[Any]:
        return sqlite_select_in(self.conn.cursor(), sql, values)

    def keys(self, kids: Sequence[str]) -> dict[str, tuple[str, bytes | None]]:
        rows = self._select_in(f"SELECT kid, visitor_id, key FROM {self.KEYS} WHERE kid IN ({{}})", kids)
        opened = self.open_keys({r[0]: bytes(r[2]) for r in rows})
        return {r[0]: (r[1], opened.get(r[0])) for r in rows}

    def destroyed(self, kids: Sequence[str]) -> set[str]:
        return {r[0] for r in self._select_in(f"SELECT kid FROM {self.DESTROYED} WHERE kid IN ({{}})", kids)}

    def key_owners(self, aggregate_ids: Sequence[UUID]) -> dict[UUID, str]:
        rows = self._select_in(
            f"SELECT aggregate_id, visitor_id FROM {self.KEY_OWNERS} WHERE aggregate_id IN ({{}})",
            [a.hex for a in aggregate_ids],
        )
        return {UUID(r[0]): r[1] for r in rows}

    def erasure_states(self) -> Iterable[tuple[int, bytes]]:
        rows = self.conn.execute(f"SELECT rowid, state FROM {self.events_table} WHERE topic=?", (ERASURE_TOPIC,))
        return [(int(r[0]), bytes(r[1])) for r in rows]


class SQLiteVerification(KeyCodec):
    """The SQLite ledger recorder's read side of the chains (a mixin)."""

    datastore: SQLiteDatastore
    events_table_name: str

    def verify(
        self,
        report: VerificationReport,
        originator_id: UUID | None = None,
        key_audit: KeyAuditor | None = None,
        anchor: Anchor | None = None,
        verified: Sequence[Seal] = (),
    ) -> VerificationReport:
        """Check the hash chains (of the log, or of one aggregate) and, with
        ``key_audit``, the key table against the log, in one read transaction.
        ``verified``: the seals an earlier check verified; only what follows them is re-hashed."""
        after = verified[-1].last_id if verified else 0
        with self.datastore.transaction(commit=False) as c:
            conn = c.sqlite_cursor.connection
            where, params = ("WHERE originator_id=? ", (originator_id.hex,)) if originator_id else ("WHERE rowid>? ", (after,))
            events: Iterable[EventRow] = (
                EventRow(r[0], UUID(r[1]), r[2], r[3], bytes(r[4]))
                for r in conn.execute(
                    "SELECT rowid, originator_id, originator_version, topic, state "
                    f"FROM {self.events_table_name} {where}ORDER BY rowid",
                    params,
                )
            )
            tables = SQLiteKeyTables(conn, self.events_table_name, self.audit_open_keys, self.table_prefix)
            if key_audit is not None:
                events = key_audit.watch(events, tables)
            report = self._verify_sqlite(conn, events, report, originator_id, params, after)
            if key_audit is not None:
                key_audit.finish(tables)
            if originator_id is None:
                seals = (
                    Seal(r[0], r[1], r[2], r[3], bytes(r[4]))
                    for r in conn.execute(f"SELECT seq, first_id, last_id, event_count, root FROM {self.SEALS} ORDER BY seq")
                )
                hashes = (
                    HashRow(r[0], UUID(r[1]), r[2], bytes(r[3]), b"")
                    for r in conn.execute(
                        "SELECT notification_id, originator_id, originator_version, event_hash "
                        f"FROM {self.HASHES} WHERE notification_id>? ORDER BY notification_id", (after,)
                    )
                )
                check_seals(seals, hashes, report, anchor, verified)
            return report

    def _verify_sqlite(
        self,
        conn: sqlite3.Connection,
        events: Iterable[EventRow],
        report: VerificationReport,
        originator_id: UUID | None,
        params: tuple[Any, ...],
        after: int = 0,
    ) -> VerificationReport:
        where = "WHERE originator_id=? " if originator_id else "WHERE notification_id>? "
        removed = removed_sessions(
            bytes(r[0]) for r in conn.execute(f"SELECT state FROM {self.events_table_name} WHERE topic=?", (REMOVED_TOPIC,))
        )
        hashes = (
            HashRow(r[0], UUID(r[1]), r[2], bytes(r[3]), bytes(r[4]))
            for r in conn.execute(
                "SELECT notification_id, originator_id, originator_version, event_hash, log_hash "
                f"FROM {self.HASHES} {where}ORDER BY notification_id",
                params,
            )
        )
        if originator_id is None and not after:
            return verify_rows(events, hashes, report, removed=removed)
        if originator_id is None:  # incremental: the stored predecessors of the rows after ``after``
            prior = {
                UUID(r[0]): (r[1], bytes(r[2]))
                for r in conn.execute(
                    f"SELECT p.originator_id, p.originator_version, p.event_hash FROM {self.HASHES} p JOIN "
                    f"(SELECT originator_id, MIN(originator_version) AS v FROM {self.HASHES} WHERE notification_id>? "
                    "GROUP BY originator_id) t ON p.originator_id=t.originator_id AND p.originator_version=t.v-1",
                    (after,),
                )
            }
            prev = conn.execute(f"SELECT log_hash FROM {self.HASHES} WHERE notification_id<=? ORDER BY notification_id DESC LIMIT 1", (after,)).fetchone()
            return verify_rows(
                events, hashes, report, removed=removed, prior=prior, prev_log=bytes(prev[0]) if prev else b""
            )
        prev_logs = {
            r[0]: bytes(r[1])
            for r in conn.execute(
                f"SELECT h.notification_id, (SELECT p.log_hash FROM {self.HASHES} p "
                "WHERE p.notification_id < h.notification_id ORDER BY p.notification_id DESC LIMIT 1) "
                f"FROM {self.HASHES} h WHERE h.originator_id=?",
                params,
            )
            if r[1] is not None
        }
        return verify_rows(events, hashes, report, check_log_chain=False, prev_log_hash=prev_logs, removed=removed)

    def newest_anchor(self) -> str | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT root, last_id FROM {self.SEALS} ORDER BY seq DESC LIMIT 1")
            row = c.fetchone()
        return str(Anchor(bytes(row[0]), row[1])) if row else None

    def hash_rows(self, originator_id: UUID) -> dict[int, tuple[bytes, bytes]]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT notification_id, event_hash, log_hash FROM {self.HASHES} WHERE originator_id=?",
                (originator_id.hex,),
            )
            return {r[0]: (bytes(r[1]), bytes(r[2])) for r in c.fetchall()}

    def notification_ids(self, originator_id: UUID) -> dict[int, int]:
        """``version -> notification id`` of one aggregate's events."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT originator_version, rowid FROM {self.events_table_name} WHERE originator_id=?",
                (originator_id.hex,),
            )
            return {r[0]: r[1] for r in c.fetchall()}
