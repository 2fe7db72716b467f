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

Snapshots carry the version of their class (``Session.Snapshot.class_version``,
stored as ``class_version`` when above 1, like an event's). A snapshot stored
at another version than its class has now is never upcast and never mis-read:
:class:`SnapshotStore` passes over it, the aggregate is replayed from its
events, and the next snapshot due replaces it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any
from uuid import UUID

from chatledger.domain.model import StaleSnapshot
from eventsourcing.persistence import EventStore, StoredEvent
from eventsourcing.postgres import PostgresAggregateRecorder, PostgresFactory
from eventsourcing.sqlite import SQLiteAggregateRecorder, SQLiteCursor, SQLiteFactory
from psycopg.sql import SQL, Identifier

from .recorders import KEYS, KeyedStoredEvent, sqlite_select_in


class _KeyGone(Exception):
    """A snapshot's key is not (or no longer) in the store: the snapshot is not written."""


def used_keys(stored_events: Sequence[StoredEvent]) -> dict[str, str]:
    """``kid -> visitor`` of the keys the snapshots' envelopes were made with."""
    return {s.kid: s.visitor_id for s in stored_events if isinstance(s, KeyedStoredEvent) and s.kid is not None}


def newest_versions(stored_events: Sequence[StoredEvent]) -> dict[UUID, int]:
    newest: dict[UUID, int] = {}
    for stored in stored_events:
        oid = UUID(str(stored.originator_id))
        newest[oid] = max(newest.get(oid, 0), stored.originator_version)
    return newest


class SQLiteSnapshotRecorder(SQLiteAggregateRecorder):
    """Also: a snapshot is written only if the key of its (encrypted) state is in
    the store, checked in its own write transaction (SQLite has one writer, so no
    erasure commits in between). A snapshot under a destroyed key would be
    unreadable; snapshots are derived, so one not written costs only a replay."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        try:
            return super().insert_events(stored_events, **kwargs)
        except _KeyGone:
            return None

    def _insert_events(self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        ids = super()._insert_events(c, stored_events, **kwargs)
        c.executemany(
            f"DELETE FROM {self.events_table_name} WHERE originator_id=? AND originator_version<?",
            [(oid.hex, version) for oid, version in newest_versions(stored_events).items()],
        )
        used = used_keys(stored_events)
        if used:
            kids = list(used)
            found = dict(sqlite_select_in(c, f"SELECT kid, visitor_id FROM {KEYS} WHERE kid IN ({{}})", kids))
            if any(found.get(k) != v for k, v in used.items()):
                raise _KeyGone
        return ids


class PostgresSnapshotRecorder(PostgresAggregateRecorder):
    """As :class:`SQLiteSnapshotRecorder`; the key rows are read ``FOR SHARE``, so
    an erasure's ``DELETE`` of them waits for this transaction (and then deletes
    the snapshot too), or this one waits for the erasure and finds them gone."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        if not stored_events:
            return None
        schema = Identifier(self.datastore.schema or "public")
        prune = SQL("DELETE FROM {}.{} WHERE originator_id=%s AND originator_version<%s").format(
            schema, Identifier(self.events_table_name)
        )
        used = used_keys(stored_events)
        try:
            with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
                if used:
                    curs.execute(
                        SQL("SELECT kid, visitor_id FROM {}.{} WHERE kid = ANY(%s) FOR SHARE").format(
                            schema, Identifier(KEYS)
                        ),
                        (list(used),),
                    )
                    found = {r["kid"]: r["visitor_id"] for r in curs.fetchall()}
                    if any(found.get(k) != v for k, v in used.items()):
                        raise _KeyGone
                self._insert_stored_events(curs, stored_events, **kwargs)
                curs.executemany(prune, list(newest_versions(stored_events).items()))
        except _KeyGone:
            return None
        return None


class SnapshotStore(EventStore[UUID]):
    """The snapshot store: a snapshot stored at another version than its class's
    (:class:`~chatledger.domain.model.StaleSnapshot`) is passed over, so the
    repository replays the aggregate from its events instead."""

    def get(
        self,
        originator_id: UUID,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Iterator[Any]:
        decode = self.mapper.to_domain_event
        for stored in self.recorder.select_events(originator_id, gt=gt, lte=lte, desc=desc, limit=limit):
            try:
                yield decode(stored)
            except StaleSnapshot:
                continue


class LedgerSQLiteFactory(SQLiteFactory):
    aggregate_recorder_class = SQLiteSnapshotRecorder


class LedgerPostgresFactory(PostgresFactory):
    aggregate_recorder_class = PostgresSnapshotRecorder
