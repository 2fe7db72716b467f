"""The SQLite snapshot recorder (see :mod:`chatledger.infrastructure.snapshots`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteAggregateRecorder, SQLiteFactory

from ..prefixed_factory import PrefixedFactory
from ..recording import LedgerTableNames
from ..snapshots import SnapshotKeyGone, newest_versions, used_keys
from .queries import sqlite_select_in
from .recorder import SQLiteLedgerRecorder, plain_delete


class SQLiteSnapshotRecorder(LedgerTableNames, SQLiteAggregateRecorder):
    """Also: a snapshot is written only if the key of its (encrypted) state is in
    the store, checked in its own write transaction (SQLite has one writer, so no
    erasure commits in between). A snapshot under a destroyed key would be
    unreadable; snapshots are derived, so one not written costs only a replay."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        try:
            with self.datastore.transaction(commit=True) as c:
                plain_delete(c)  # a snapshot under an erased key is deleted by the erasure
                # The older snapshot first: the pages it frees take the new one.
                c.executemany(
                    f"DELETE FROM {self.events_table_name} WHERE originator_id=? AND originator_version<?",
                    [(oid.hex, version) for oid, version in newest_versions(stored_events).items()],
                )
                c.executemany(
                    self.insert_events_statement,
                    [
                        (
                            s.originator_id.hex if isinstance(s.originator_id, UUID) else s.originator_id,
                            s.originator_version,
                            s.topic,
                            s.state,
                        )
                        for s in stored_events
                    ],
                )
                used = used_keys(stored_events)
                if used:
                    kids = list(used)
                    found = dict(sqlite_select_in(c, f"SELECT kid, visitor_id FROM {self.KEYS} WHERE kid IN ({{}})", kids))
                    if any(found.get(k) != v for k, v in used.items()):
                        raise SnapshotKeyGone
        except SnapshotKeyGone:
            return None
        return None


class LedgerSQLiteFactory(PrefixedFactory, SQLiteFactory):
    """eventsourcing's SQLite factory with the ledger's recorders."""

    aggregate_recorder_class = SQLiteSnapshotRecorder
    application_recorder_class = SQLiteLedgerRecorder
