"""Which recorder a ledger has: one of ours (hash chains, key tables), told apart without
importing the PostgreSQL class, so SQLite alone needs no PostgreSQL driver."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from .recording import LedgerRecorderMixin

if TYPE_CHECKING:
    from .postgres import PostgresLedgerRecorder
    from .sqlite import SQLiteLedgerRecorder


def as_ledger_recorder(recorder: object) -> SQLiteLedgerRecorder | PostgresLedgerRecorder | None:
    """``recorder`` if it is one of ours, else None (checked against the shared mixin)."""
    if isinstance(recorder, LedgerRecorderMixin):
        return cast("SQLiteLedgerRecorder | PostgresLedgerRecorder", recorder)
    return None
