"""The user-memory read model's tables (``memory_*``), its subjects, and the
queries its readers make (``service.py``); the handlers are in ``memory.py``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Connection, Integer, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .prefixes import on
from .sqltypes import UTCDateTime

DISPLAY_NAME_SLOTS = ("display_name", "name", "first_name")
"""User-scoped slots, in order of preference, that hold the name to greet with."""


class Base(DeclarativeBase):
    pass


class MemorySession(Base):
    """Working state of one session: its subject's visitor, slots and tasks."""

    __tablename__ = "memory_sessions"

    session_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    visitor_id: Mapped[str] = mapped_column(String(200))
    slots: Mapped[dict[str, Any]] = mapped_column(JSON)  # key -> [value, scope]
    open_tasks: Mapped[list[str]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20))
    last_activity_at: Mapped[datetime] = mapped_column(UTCDateTime)


class MemoryVisitor(Base):
    __tablename__ = "memory_visitors"

    visitor_uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    visitor_id: Mapped[str] = mapped_column(String(200), unique=True)
    user_id: Mapped[str | None] = mapped_column(String(200))


class MemoryProfile(Base):
    """What is remembered about one subject (``user:…`` or ``visitor:…``)."""

    __tablename__ = "memory_profiles"

    subject: Mapped[str] = mapped_column(String(210), primary_key=True)
    # key -> [value, set_at iso, visitor_id that set it] (the visitor lets an
    # erasure of one of a user's visitors blank only what that visitor said)
    preferences: Mapped[dict[str, Any]] = mapped_column(JSON)
    session_count: Mapped[int] = mapped_column(Integer)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_session_id: Mapped[str] = mapped_column(String(36))
    # Where the most recent *closed* conversation left off:
    left_off_session_id: Mapped[str | None] = mapped_column(String(36))
    left_off_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    left_off_status: Mapped[str | None] = mapped_column(String(20))
    last_slots: Mapped[dict[str, Any]] = mapped_column(JSON)
    unfinished_tasks: Mapped[list[str]] = mapped_column(JSON)


sessions_table = Base.metadata.tables[MemorySession.__tablename__]
visitors_table = Base.metadata.tables[MemoryVisitor.__tablename__]
profiles_table = Base.metadata.tables[MemoryProfile.__tablename__]


def user_subject(user_id: str) -> str:
    return f"user:{user_id}"


def visitor_subject(visitor_id: str) -> str:
    return f"visitor:{visitor_id}"


def read_profile(conn: Connection, subject: str) -> dict[str, Any] | None:
    row = conn.execute(select(on(conn, profiles_table)).where(on(conn, profiles_table).c.subject == subject)).mappings().first()
    return dict(row) if row is not None else None


def visitor_link(conn: Connection, visitor_id: str) -> str | None:
    row = conn.execute(
        select(on(conn, visitors_table).c.user_id).where(on(conn, visitors_table).c.visitor_id == visitor_id)
    ).first()
    return row[0] if row else None


def display_name(preferences: dict[str, Any]) -> str | None:
    for key in DISPLAY_NAME_SLOTS:
        value = preferences.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None
