"""The ledger recorders, at their old import path: a thin re-export for now.

The recorders live per dialect (:mod:`chatledger.infrastructure.sqlite`,
:mod:`chatledger.infrastructure.postgres`) over what they share
(:mod:`chatledger.infrastructure.recording`, the chain in
:mod:`chatledger.infrastructure.hashchain`). The PostgreSQL names are imported
on first use, so SQLite alone never needs the PostgreSQL driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .hashchain import as_uuid as _uuid
from .hashchain import chain_rows
from .recording import (
    DESTROYED,
    ERASURE_TOPIC,
    HASHES,
    KEYS,
    SUBJECTS,
    ConfirmedKeysHook,
    KeyAuditor,
    KeyedStoredEvent,
    KeyRow,
    StaleKeyError,
    StaleKeyHook,
    erased_visitor_ids,
)
from .sqlite import SQLITE_MAX_PARAMS, SQLiteLedgerRecorder, sqlite_select_in

if TYPE_CHECKING:
    from .postgres import PostgresLedgerRecorder

    LedgerRecorder = SQLiteLedgerRecorder | PostgresLedgerRecorder


def __getattr__(name: str) -> Any:
    if name == "PostgresLedgerRecorder":
        return importlib.import_module(f"{__package__}.postgres").PostgresLedgerRecorder
    if name == "LedgerRecorder":
        return SQLiteLedgerRecorder | importlib.import_module(f"{__package__}.postgres").PostgresLedgerRecorder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DESTROYED",
    "ERASURE_TOPIC",
    "HASHES",
    "KEYS",
    "SQLITE_MAX_PARAMS",
    "SUBJECTS",
    "ConfirmedKeysHook",
    "KeyAuditor",
    "KeyRow",
    "KeyedStoredEvent",
    "PostgresLedgerRecorder",
    "SQLiteLedgerRecorder",
    "StaleKeyError",
    "StaleKeyHook",
    "_uuid",
    "chain_rows",
    "erased_visitor_ids",
    "sqlite_select_in",
]
