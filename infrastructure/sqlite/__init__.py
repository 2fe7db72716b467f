"""Persistence on SQLite: the ledger recorder, its verification and the snapshot recorder."""

from .queries import SQLITE_MAX_PARAMS, sqlite_select_in
from .recorder import SQLiteLedgerRecorder
from .snapshots import LedgerSQLiteFactory, SQLiteSnapshotRecorder
from .verification import SQLiteKeyTables

__all__ = [
    "SQLITE_MAX_PARAMS",
    "LedgerSQLiteFactory",
    "SQLiteKeyTables",
    "SQLiteLedgerRecorder",
    "SQLiteSnapshotRecorder",
    "sqlite_select_in",
]
