"""SQLite statement helpers shared by the SQLite recorders and the key ring."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ...domain.batching import batched

SQLITE_MAX_PARAMS = 999
"""Bound parameters per statement that every SQLite build accepts (builds
before 3.32, still shipped by some LTS distributions, stop at 999)."""
PAIRS_PER_QUERY = SQLITE_MAX_PARAMS // 2  # (id, version) pairs per look-up


class _Executes(Protocol):
    def execute(self, *args: Any, **kwargs: Any) -> Any: ...

    def fetchall(self) -> Any: ...


def sqlite_select_in(c: _Executes, sql: str, values: Sequence[Any]) -> list[Any]:
    """Rows of ``sql`` (one ``{}`` where the ``IN`` list goes) for all ``values``,
    in as many statements as the parameter limit needs (``c``: an
    eventsourcing ``SQLiteCursor`` or a ``sqlite3`` cursor)."""
    rows: list[Any] = []
    for batch in batched(values, SQLITE_MAX_PARAMS):
        chunk = list(batch)
        c.execute(sql.format(",".join("?" * len(chunk))), chunk)
        rows.extend(c.fetchall())
    return rows
