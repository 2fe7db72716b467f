"""Retention's removal of sessions from the log, on SQLite (see :mod:`..removal`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteCursor, SQLiteDatastore

from ..removal import REMOVED_TOPIC, check_versions
from .queries import sqlite_select_in


class SQLiteRemoval:
    """The SQLite ledger recorder's removal of sessions (a mixin)."""

    datastore: SQLiteDatastore
    events_table_name: str

    if TYPE_CHECKING:

        def write_batch(self, c: SQLiteCursor, stored_events: Sequence[StoredEvent]) -> list[int]: ...  # the recorder's

    def remove_sessions(
        self, record: Sequence[StoredEvent], versions: Mapping[UUID, int], snapshot_table: str | None
    ) -> list[int]:
        """Write ``record`` (the ``Removed`` event) and delete the sessions' events
        and snapshots, in one write transaction; the record's notification ids."""
        with self.datastore.transaction(commit=True) as c:
            ids = self.write_batch(c, record)  # a write first: this transaction holds the write lock
            rows = sqlite_select_in(
                c,
                f"SELECT originator_id, MAX(originator_version) FROM {self.events_table_name} "
                "WHERE originator_id IN ({}) GROUP BY originator_id",
                [sid.hex for sid in versions],
            )
            check_versions(versions, {UUID(r[0]): r[1] for r in rows})
            params = [(sid.hex,) for sid in versions]
            c.executemany(f"DELETE FROM {self.events_table_name} WHERE originator_id=?", params)
            if snapshot_table:
                c.executemany(f"DELETE FROM {snapshot_table} WHERE originator_id=?", params)
        return ids

    def removal_records(self) -> list[bytes]:
        """The stored states of every ``RetentionRecord.Removed`` event."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT state FROM {self.events_table_name} WHERE topic=?", (REMOVED_TOPIC,))
            return [bytes(r[0]) for r in c.fetchall()]

    def streams_with_topic(self, topic: str) -> list[UUID]:
        """The aggregates that have an event of ``topic``, in log order."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT originator_id FROM {self.events_table_name} WHERE topic=? ORDER BY rowid", (topic,))
            return list(dict.fromkeys(UUID(r[0]) for r in c.fetchall()))
