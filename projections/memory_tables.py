"""The user-memory read model's tables (``memory_*``), its subjects, and the
queries its readers make (``service.py``); the handlers are in ``memory.py``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Connection, Integer, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ..domain.tenancy import DEFAULT_TENANT, SCOPED_MAX_CHARS, TENANT_CHARS
from .prefixes import on
from .sqltypes import UTCDateTime

KEY_CHARS = SCOPED_MAX_CHARS  # a visitor or user key: the id within its tenant (scoped_key)
SUBJECT_CHARS = KEY_CHARS + len("visitor:")

DISPLAY_NAME_SLOTS = ("display_name", "name", "first_name")
"""User-scoped slots, in order of preference, that hold the name to greet with."""


class Base(DeclarativeBase):
    pass


class MemorySession(Base):
    """Working state of one session: its subject's visitor, slots and tasks."""

    __tablename__ = "memory_sessions"

    session_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(TENANT_CHARS), server_default=DEFAULT_TENANT)
    visitor_id: Mapped[str] = mapped_column(String(KEY_CHARS))  # the visitor's key
    slots: Mapped[dict[str, Any]] = mapped_column(JSON)  # key -> [value, scope]
    open_tasks: Mapped[list[str]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20))
    last_activity_at: Mapped[datetime] = mapped_column(UTCDateTime)


class MemoryVisitor(Base):
    """A visitor's key (its id within its tenant, ``scoped_key``), its tenant and its
    user's key."""

    __tablename__ = "memory_visitors"

    visitor_uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(TENANT_CHARS), server_default=DEFAULT_TENANT)
    visitor_id: Mapped[str] = mapped_column(String(KEY_CHARS), unique=True)
    user_id: Mapped[str | None] = mapped_column(String(KEY_CHARS))


class MemoryProfile(Base):
    """What is remembered about one subject (``user:…`` or ``visitor:…``)."""

    __tablename__ = "memory_profiles"

    subject: Mapped[str] = mapped_column(String(SUBJECT_CHARS), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(TENANT_CHARS), server_default=DEFAULT_TENANT)
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


def read_profile(conn: Connection, subject: str, tenant: str) -> dict[str, Any] | None:
    """The profile of ``subject`` if it is ``tenant``'s."""
    table = on(conn, profiles_table)
    c = table.c
    row = conn.execute(select(table).where(c.subject == subject, c.tenant == tenant)).mappings().first()
    return dict(row) if row is not None else None


def visitor_link(conn: Connection, visitor_key: str, tenant: str) -> str | None:
    """The user key the visitor of ``tenant`` is linked to (None: anonymous, or unknown)."""
    c = on(conn, visitors_table).c
    row = conn.execute(select(c.user_id).where(c.visitor_id == visitor_key, c.tenant == tenant)).first()
    return row[0] if row else None


def display_name(preferences: dict[str, Any]) -> str | None:
    for key in DISPLAY_NAME_SLOTS:
        value = preferences.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None
