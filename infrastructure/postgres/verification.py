"""Verification on PostgreSQL: the hash chains and the key tables read in one
repeatable-read snapshot."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from eventsourcing.postgres import PostgresDatastore
from psycopg.sql import SQL, Composed, Identifier

from ..hashchain import EventRow, HashRow, VerificationReport, removed_sessions, verify_rows
from ..recording import ERASURE_TOPIC, KeyAuditor, KeyCodec
from ..removal import REMOVED_TOPIC
from ..sealing import Anchor, Seal, check_seals


class PostgresVerification(KeyCodec):
    """The PostgreSQL ledger recorder's read side of the chains (a mixin)."""

    datastore: PostgresDatastore
    events_table_name: str

    def qualified(self, table: str) -> Composed:
        """``schema.table``, quoted."""
        return SQL("{}.{}").format(Identifier(self.datastore.schema), Identifier(table))


    @contextmanager
    def _snapshot(self) -> Iterator[Any]:
        with self.datastore.get_connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield conn

    def verify(
        self,
        report: VerificationReport,
        originator_id: UUID | None = None,
        key_audit: KeyAuditor | None = None,
        anchor: Anchor | None = None,
        verified: Sequence[Seal] = (),
    ) -> VerificationReport:
        """Check the hash chains (of the log, or of one aggregate) and, with
        ``key_audit``, the key table against the log, in one repeatable-read snapshot.
        ``verified``: the seals an earlier check verified; only what follows them is re-hashed."""
        after = verified[-1].last_id if verified else 0
        with self._snapshot() as conn:
            tables = PostgresKeyTables(conn, self)
            report = self._verify_pg(conn, report, originator_id, key_audit, tables, after)
            if key_audit is not None:
                key_audit.finish(tables)
            if originator_id is None:
                self._check_seals(conn, report, anchor, verified)
            return report

    def _check_seals(self, conn: Any, report: VerificationReport, anchor: Anchor | None, verified: Sequence[Seal] = ()) -> None:
        with conn.cursor() as c:
            c.execute(SQL("SELECT seq, first_id, last_id, event_count, root FROM {} ORDER BY seq").format(self.qualified(self.SEALS)))
            seals = [Seal(r["seq"], r["first_id"], r["last_id"], r["event_count"], bytes(r["root"])) for r in c.fetchall()]
        h_cur = conn.cursor(name="chatledger_verify_seals")
        h_cur.itersize = 5000
        h_cur.execute(
            SQL("SELECT notification_id, originator_id, originator_version, event_hash FROM {} WHERE notification_id > %s "
                "ORDER BY notification_id").format(self.qualified(self.HASHES)),
            (verified[-1].last_id if verified else 0,),
        )
        hashes = (
            HashRow(r["notification_id"], r["originator_id"], r["originator_version"], bytes(r["event_hash"]), b"")
            for r in h_cur
        )
        check_seals(seals, hashes, report, anchor, verified)

    def newest_anchor(self) -> str | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(SQL("SELECT root, last_id FROM {} ORDER BY seq DESC LIMIT 1").format(self.qualified(self.SEALS)))
            row = c.fetchone()
        return str(Anchor(bytes(row["root"]), row["last_id"])) if row else None

    def _verify_pg(
        self,
        conn: Any,
        report: VerificationReport,
        originator_id: UUID | None,
        key_audit: KeyAuditor | None,
        tables: PostgresKeyTables,
        after: int = 0,
    ) -> VerificationReport:
        where, params = (
            (SQL("WHERE originator_id = %s "), (originator_id,)) if originator_id
            else (SQL("WHERE notification_id > %s "), (after,))
        )
        with conn.cursor() as c:
            c.execute(
                SQL("SELECT state FROM {} WHERE topic = %s").format(self.qualified(self.events_table_name)),
                (REMOVED_TOPIC,),
            )
            removed = removed_sessions(bytes(r["state"]) for r in c.fetchall())
        ev_cur = conn.cursor(name="chatledger_verify_events")
        ev_cur.itersize = 5000
        ev_cur.execute(
            SQL(
                "SELECT notification_id, originator_id, originator_version, topic, state FROM {} {}"
                "ORDER BY notification_id"
            ).format(self.qualified(self.events_table_name), where),
            params,
        )
        h_cur = conn.cursor(name="chatledger_verify_hashes")
        h_cur.itersize = 5000
        h_cur.execute(
            SQL(
                "SELECT notification_id, originator_id, originator_version, event_hash, log_hash "
                "FROM {} {}ORDER BY notification_id"
            ).format(self.qualified(self.HASHES), where),
            params,
        )
        events: Iterable[EventRow] = (
            EventRow(r["notification_id"], r["originator_id"], r["originator_version"], r["topic"], bytes(r["state"]))
            for r in ev_cur
        )
        if key_audit is not None:
            events = key_audit.watch(events, tables)
        hashes = (
            HashRow(r["notification_id"], r["originator_id"], r["originator_version"], bytes(r["event_hash"]), bytes(r["log_hash"]))
            for r in h_cur
        )
        if originator_id is None and not after:
            return verify_rows(events, hashes, report, removed=removed)
        if originator_id is None:  # incremental: the stored predecessors of the rows after ``after``
            with conn.cursor() as c:
                c.execute(
                    SQL(
                        "SELECT p.originator_id, p.originator_version, p.event_hash FROM {0} p JOIN "
                        "(SELECT originator_id, MIN(originator_version) AS v FROM {0} WHERE notification_id > %s "
                        "GROUP BY originator_id) t ON p.originator_id = t.originator_id AND p.originator_version = t.v - 1"
                    ).format(self.qualified(self.HASHES)),
                    (after,),
                )
                prior = {r["originator_id"]: (r["originator_version"], bytes(r["event_hash"])) for r in c.fetchall()}
                c.execute(
                    SQL("SELECT log_hash FROM {} WHERE notification_id <= %s ORDER BY notification_id DESC LIMIT 1").format(
                        self.qualified(self.HASHES)
                    ),
                    (after,),
                )
                prev = c.fetchone()
            return verify_rows(
                events, hashes, report, removed=removed, prior=prior,
                prev_log=bytes(prev["log_hash"]) if prev else b"",
            )
        with conn.cursor() as c:
            c.execute(
                SQL(
                    "SELECT h.notification_id, (SELECT p.log_hash FROM {0} p "
                    "WHERE p.notification_id < h.notification_id ORDER BY p.notification_id DESC LIMIT 1) AS prev "
                    "FROM {0} h WHERE h.originator_id = %s"
                ).format(self.qualified(self.HASHES)),
                params,
            )
            prev_logs = {r["notification_id"]: bytes(r["prev"]) for r in c.fetchall() if r["prev"] is not None}
        return verify_rows(events, hashes, report, check_log_chain=False, prev_log_hash=prev_logs, removed=removed)

    def hash_rows(self, originator_id: UUID) -> dict[int, tuple[bytes, bytes]]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                SQL("SELECT notification_id, event_hash, log_hash FROM {} WHERE originator_id=%s").format(self.qualified(self.HASHES)),
                (originator_id,),
            )
            return {r["notification_id"]: (bytes(r["event_hash"]), bytes(r["log_hash"])) for r in c.fetchall()}

    def notification_ids(self, originator_id: UUID) -> dict[int, int]:
        """``version -> notification id`` of one aggregate's events."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                SQL("SELECT originator_version, notification_id FROM {} WHERE originator_id=%s").format(
                    self.qualified(self.events_table_name)
                ),
                (originator_id,),
            )
            return {r["originator_version"]: r["notification_id"] for r in c.fetchall()}


class PostgresKeyTables:
    """The key tables as ``KeyAudit`` reads them, in the verification's snapshot."""

    def __init__(self, conn: Any, recorder: PostgresVerification) -> None:  # a KeyCodec
        self.conn = conn
        self.recorder = recorder

    def _rows(self, query: Composed, params: tuple[Any, ...]) -> list[Any]:
        with self.conn.cursor() as c:
            c.execute(query, params)
            return list(c.fetchall())

    def keys(self, kids: Sequence[str]) -> dict[str, tuple[str, bytes | None]]:
        t = self.recorder.qualified
        rows = self._rows(SQL("SELECT kid, visitor_id, key FROM {} WHERE kid = ANY(%s)").format(t(self.recorder.KEYS)), (list(kids),))
        opened = self.recorder.audit_open_keys({r["kid"]: bytes(r["key"]) for r in rows})
        return {r["kid"]: (r["visitor_id"], opened.get(r["kid"])) for r in rows}

    def destroyed(self, kids: Sequence[str]) -> set[str]:
        t = self.recorder.qualified
        rows = self._rows(SQL("SELECT kid FROM {} WHERE kid = ANY(%s)").format(t(self.recorder.DESTROYED)), (list(kids),))
        return {r["kid"] for r in rows}

    def key_owners(self, aggregate_ids: Sequence[UUID]) -> dict[UUID, str]:
        t = self.recorder.qualified
        rows = self._rows(
            SQL("SELECT aggregate_id, visitor_id FROM {} WHERE aggregate_id = ANY(%s)").format(t(self.recorder.KEY_OWNERS)),
            (list(aggregate_ids),),
        )
        return {r["aggregate_id"]: r["visitor_id"] for r in rows}

    def erasure_states(self) -> Iterable[tuple[int, bytes]]:
        t = self.recorder.qualified
        rows = self._rows(
            SQL("SELECT notification_id, state FROM {} WHERE topic = %s").format(t(self.recorder.events_table_name)),
            (ERASURE_TOPIC,),
        )
        return [(int(r["notification_id"]), bytes(r["state"])) for r in rows]
