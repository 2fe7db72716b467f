"""Snapshots that do not pile up: each aggregate keeps only its newest one.

eventsourcing stores a snapshot as one more row per aggregate and version, and
never removes the older ones. A snapshot of a session holds its whole state, so
a conversation of n messages snapshotted every k events would store about
n²/2k messages' worth of snapshots (the unbounded checkpoint growth LangGraph
users run into). Only the newest snapshot is ever read for the current state,
so these recorders delete the older ones of the same aggregate in the
transaction that inserts the new one. Snapshots stay derived data: reads at an
older version (``Repository.get(version=…)``) replay from the events, and
point-in-time reads always do.

Selected with eventsourcing's ``PERSISTENCE_MODULE`` (a factory class topic),
see :func:`chatledger.infrastructure.persistence.eventsourcing_env`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresAggregateRecorder, PostgresFactory
from eventsourcing.sqlite import SQLiteAggregateRecorder, SQLiteCursor, SQLiteFactory
from psycopg.sql import SQL, Identifier


def newest_versions(stored_events: Sequence[StoredEvent]) -> dict[UUID, int]:
    newest: dict[UUID, int] = {}
    for stored in stored_events:
        oid = UUID(str(stored.originator_id))
        newest[oid] = max(newest.get(oid, 0), stored.originator_version)
    return newest


class SQLiteSnapshotRecorder(SQLiteAggregateRecorder):
    def _insert_events(self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        ids = super()._insert_events(c, stored_events, **kwargs)
        c.executemany(
            f"DELETE FROM {self.events_table_name} WHERE originator_id=? AND originator_version<?",
            [(oid.hex, version) for oid, version in newest_versions(stored_events).items()],
        )
        return ids


class PostgresSnapshotRecorder(PostgresAggregateRecorder):
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        if not stored_events:
            return None
        prune = SQL("DELETE FROM {}.{} WHERE originator_id=%s AND originator_version<%s").format(
            Identifier(self.datastore.schema or "public"), Identifier(self.events_table_name)
        )
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            self._insert_stored_events(curs, stored_events, **kwargs)
            curs.executemany(prune, list(newest_versions(stored_events).items()))
        return None


class LedgerSQLiteFactory(SQLiteFactory):
    aggregate_recorder_class = SQLiteSnapshotRecorder


class LedgerPostgresFactory(PostgresFactory):
    aggregate_recorder_class = PostgresSnapshotRecorder
