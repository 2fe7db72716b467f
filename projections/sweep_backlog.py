"""The sweep's backlog: a count on the active-session index (``active_sessions``), beside the
index's own queries for the sweeper (``active_sessions.first_due`` / ``due_rows``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, func, select

from .active_sessions import active_sessions


def due_count(conn: Connection, before: datetime) -> int:
    """How many sessions' deadlines are before ``before``: due, not yet timed out."""
    c = active_sessions.c
    return int(conn.execute(select(func.count()).where(c.expires_at < before)).scalar() or 0)


__all__ = ["due_count"]
