"""Retention's removal of sessions from the log, on PostgreSQL (see :mod:`..removal`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresDatastore
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed

from ..hashchain import chain_rows
from ..removal import REMOVED_TOPIC, check_versions


class PostgresRemoval:
    """The PostgreSQL ledger recorder's removal of sessions (a mixin)."""

    datastore: PostgresDatastore
    events_table_name: str
    lock_table_statements: list[Any]
    insert_with_hashes_statement: Composed

    if TYPE_CHECKING:  # the recorder's and the library's

        def qualified(self, table: str) -> Composed: ...

        def construct_pg_stored_event(self, *args: Any) -> Any: ...

        def prev_event_hashes(self, c: Cursor[DictRow], stored_events: Sequence[StoredEvent]) -> dict[UUID, bytes]: ...

        def remember_hashes(self, rows: Sequence[tuple[int, UUID, int, bytes, bytes]]) -> None: ...

    def remove_sessions(
        self, record: Sequence[StoredEvent], versions: Mapping[UUID, int], snapshot_table: str | None
    ) -> list[int]:
        """Write ``record`` (the ``Removed`` event, with its hash row, under the
        library's table lock as every insert) and delete the sessions' events and
        snapshots, in one transaction; the record's notification ids."""
        rows = [self.construct_pg_stored_event(s.originator_id, s.originator_version, s.topic, s.state) for s in record]
        sids = list(versions)
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            prev = self.prev_event_hashes(curs, record)
            hashes = chain_rows(record, range(len(record)), prev, None)
            for statement in self.lock_table_statements:
                curs.execute(statement, prepare=True)
            events = self.qualified(self.events_table_name)
            curs.execute(
                SQL(
                    "SELECT originator_id, MAX(originator_version) AS v FROM {} "
                    "WHERE originator_id = ANY(%s) GROUP BY originator_id"
                ).format(events),
                (sids,),
            )
            check_versions(versions, {r["originator_id"]: r["v"] for r in curs.fetchall()})
            curs.execute(
                self.insert_with_hashes_statement,
                (rows, [h[1] for h in hashes], [h[2] for h in hashes], [h[3] for h in hashes]),
            )
            ids = [r["notification_id"] for r in curs.fetchall()]
            curs.execute(SQL("DELETE FROM {} WHERE originator_id = ANY(%s)").format(events), (sids,))
            if snapshot_table:
                curs.execute(
                    SQL("DELETE FROM {} WHERE originator_id = ANY(%s)").format(self.qualified(snapshot_table)), (sids,)
                )
        self.remember_hashes(hashes)
        return ids

    def removal_records(self) -> list[bytes]:
        """The stored states of every ``RetentionRecord.Removed`` event."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                SQL("SELECT state FROM {} WHERE topic = %s ORDER BY notification_id").format(
                    self.qualified(self.events_table_name)
                ),
                (REMOVED_TOPIC,),
            )
            return [bytes(r["state"]) for r in c.fetchall()]

    def streams_with_topic(self, topic: str) -> list[UUID]:
        """The aggregates that have an event of ``topic``, in log order."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                SQL("SELECT originator_id FROM {} WHERE topic = %s ORDER BY notification_id").format(
                    self.qualified(self.events_table_name)
                ),
                (topic,),
            )
            return list(dict.fromkeys(r["originator_id"] for r in c.fetchall()))
