"""The queries of the active-session index (:mod:`.active_sessions`): the sweeper's
and retention's; no other module names these columns.

``tenant``: the rows of that tenant only (the index's tenant-leading indexes), or
None for every tenant's (the store-wide sweep and retention of the background jobs).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, func, select, tuple_

from ..domain.batching import batched
from .active_sessions import active_sessions, closed_sessions
from .prefixes import on

DUE_COLUMNS = (
    "session_id", "tenant", "version", "expires_at", "expiry_reason", "last_activity_at",
    "open_tasks", "exact",
)  # fmt: skip


def first_due(conn: Connection, before: datetime, tenant: str | None = None) -> datetime | None:
    """The earliest deadline before ``before``: a one-row probe on the index."""
    c = on(conn, active_sessions).c
    query = select(c.expires_at).where(c.expires_at < before)
    if tenant is not None:
        query = query.where(c.tenant == tenant)
    found: datetime | None = conn.execute(query.order_by(c.expires_at).limit(1)).scalar()
    return found


def due_count(conn: Connection, before: datetime, tenant: str | None = None) -> int:
    """How many sessions (of ``tenant``; None: of all) are due before ``before``: the sweep's backlog."""
    c = on(conn, active_sessions).c
    query = select(func.count()).where(c.expires_at < before)
    if tenant is not None:
        query = query.where(c.tenant == tenant)
    return int(conn.execute(query).scalar() or 0)


def due_rows(
    conn: Connection,
    before: datetime,
    *,
    after: tuple[datetime, UUID] | None,
    limit: int,
    lock: bool = False,
    tenant: str | None = None,
) -> Sequence[Any]:
    """Rows (``DUE_COLUMNS``) of sessions whose deadline is before ``before``, by
    deadline, keyset-paged after ``after``; ``lock``: ``FOR UPDATE SKIP LOCKED``
    (PostgreSQL), so concurrent sweepers split the rows."""
    c = on(conn, active_sessions).c
    query = select(*[c[name] for name in DUE_COLUMNS]).where(c.expires_at < before).order_by(c.expires_at, c.session_id)
    if tenant is not None:
        query = query.where(c.tenant == tenant)
    if after is not None:
        query = query.where(tuple_(c.expires_at, c.session_id) > after)
    query = query.limit(limit)
    return conn.execute(query.with_for_update(skip_locked=True) if lock else query).all()


def open_tasks_of(row: Any) -> tuple[str, ...]:
    """A due row's open tasks."""
    return () if row.open_tasks == "[]" else tuple(json.loads(row.open_tasks))


def drop_closed(conn: Connection, session_ids: Sequence[UUID]) -> None:
    """Drop the live rows of sessions now closed, ahead of the index applying
    their closing events (it skips rows already gone): a sweep must not meet
    the sessions it just timed out again."""
    table = on(conn, active_sessions)
    for chunk in batched(session_ids):
        conn.execute(table.delete().where(table.c.session_id.in_(chunk)))


def closed_before(
    conn: Connection,
    cutoff: datetime,
    *,
    limit: int,
    tenant: str | None = None,
    after: tuple[datetime, UUID] | None = None,
) -> list[tuple[datetime, UUID, str]]:
    """``(closed_at, session_id, tenant)`` of sessions closed before ``cutoff``,
    oldest first, keyset-paged after ``after`` (retention's query). A tenant's
    rows include those whose tenant the index does not know (``""``, a race)."""
    c = on(conn, closed_sessions).c
    query = select(c.closed_at, c.session_id, c.tenant).where(c.closed_at < cutoff)
    if tenant is not None:
        query = query.where(c.tenant.in_([tenant, ""]))
    if after is not None:
        query = query.where(tuple_(c.closed_at, c.session_id) > after)
    rows = conn.execute(query.order_by(c.closed_at, c.session_id).limit(limit))
    return [(r[0], r[1], r[2]) for r in rows]


__all__ = [
    "DUE_COLUMNS", "closed_before", "drop_closed", "due_count", "due_rows", "first_due", "open_tasks_of",
]  # fmt: skip
