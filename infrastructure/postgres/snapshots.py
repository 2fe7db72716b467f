"""The PostgreSQL snapshot recorder (see :mod:`chatledger.infrastructure.snapshots`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresAggregateRecorder, PostgresFactory
from psycopg.sql import SQL, Identifier

from ..prefixed_factory import PrefixedFactory
from ..recording import LedgerTableNames
from ..snapshots import SnapshotKeyGone, newest_versions, used_keys
from .recorder import PostgresLedgerRecorder


class PostgresSnapshotRecorder(LedgerTableNames, PostgresAggregateRecorder):
    """As the SQLite snapshot recorder; the key rows are read ``FOR SHARE``, so
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
        rows = [
            self.construct_pg_stored_event(s.originator_id, s.originator_version, s.topic, s.state)
            for s in stored_events
        ]
        try:
            with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
                if used:
                    curs.execute(
                        SQL("SELECT kid, visitor_id FROM {}.{} WHERE kid = ANY(%s) FOR SHARE").format(
                            schema, Identifier(self.KEYS)
                        ),
                        (list(used),),
                    )
                    found = {r["kid"]: r["visitor_id"] for r in curs.fetchall()}
                    if any(found.get(k) != v for k, v in used.items()):
                        raise SnapshotKeyGone
                curs.execute(self.insert_events_statement, (rows,))
                curs.executemany(prune, list(newest_versions(stored_events).items()))
        except SnapshotKeyGone:
            return None
        return None


class LedgerPostgresFactory(PrefixedFactory, PostgresFactory):
    """eventsourcing's PostgreSQL factory with the ledger's recorders."""

    aggregate_recorder_class = PostgresSnapshotRecorder
    application_recorder_class = PostgresLedgerRecorder
