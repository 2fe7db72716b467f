"""Persistence on PostgreSQL: the ledger recorder, its verification and the snapshot recorder.

Needs the PostgreSQL driver (``psycopg``, the ``postgres`` extra)."""

from .recorder import PostgresLedgerRecorder
from .snapshots import LedgerPostgresFactory, PostgresSnapshotRecorder
from .verification import PostgresKeyTables

__all__ = ["LedgerPostgresFactory", "PostgresKeyTables", "PostgresLedgerRecorder", "PostgresSnapshotRecorder"]
