"""Session analytics: one row per session and per visitor, aggregated at read time.

The read model stores facts only (times, counts, how the session closed); every
metric is computed when read, so changing a definition (engagement, a period)
needs no rebuild, and ``resessionize`` recomputes conversation counts under
another timeout from the recorded messages alone (the conversation log's,
read through ``conversation_log.message_times``: this module reads no other
read model's table).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from eventsourcing.utils import get_topic
from sqlalchemy import Boolean, Connection, Float, Index, Integer, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ..domain.errors import InvalidCommandError
from ..domain.policy import session_deadline
from ..domain.retention import RetentionRecord
from ..domain.session import Session
from ..domain.tenancy import DEFAULT_TENANT
from ..domain.visitor import Visitor
from .read_model import HandlerTableReadModel, batch_ids
from .resessionizing import resessionize
from .sqltypes import UTCDateTime
from .view import SQLView
from .writers import RowBuffer
from .prefixes import on


class Base(DeclarativeBase):
    pass


class SessionFacts(Base):
    __tablename__ = "analytics_sessions"

    __table_args__ = (Index("ix_analytics_sessions_tenant_started_at", "tenant", "started_at"),)

    session_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), server_default=DEFAULT_TENANT)
    visitor_id: Mapped[str] = mapped_column(String(200), index=True)
    user_id: Mapped[str | None] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(200))
    is_returning: Mapped[bool] = mapped_column(Boolean)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    first_message_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_message_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_activity_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    messages: Mapped[int] = mapped_column(Integer)
    user_messages: Mapped[int] = mapped_column(Integer)
    open_tasks: Mapped[int] = mapped_column(Integer)
    completed_tasks: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    close_reason: Mapped[str | None] = mapped_column(String(200))
    idle_timeout_s: Mapped[float] = mapped_column(Float)
    task_idle_timeout_s: Mapped[float] = mapped_column(Float)
    max_length_s: Mapped[float | None] = mapped_column(Float)


class VisitorFacts(Base):
    __tablename__ = "analytics_visitors"

    visitor_uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), server_default=DEFAULT_TENANT)
    visitor_id: Mapped[str] = mapped_column(String(200), index=True)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    user_id: Mapped[str | None] = mapped_column(String(200))
    linked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


sessions_table = Base.metadata.tables[SessionFacts.__tablename__]
visitors_table = Base.metadata.tables[VisitorFacts.__tablename__]


def _expiry(row: dict[str, Any]) -> datetime:
    """When the session expires if nothing else happens (as ``Session.expiry``)."""
    max_length_s = row["max_length_s"]
    deadline, _reason = session_deadline(
        started_at=row["started_at"],
        last_activity_at=row["last_activity_at"],
        tasks_open=bool(row["open_tasks"]),
        idle_timeout=timedelta(seconds=row["idle_timeout_s"]),
        task_idle_timeout=timedelta(seconds=row["task_idle_timeout_s"]),
        max_session_length=None if max_length_s is None else timedelta(seconds=max_length_s),
    )
    return deadline


class SessionAnalytics(HandlerTableReadModel):
    """Projection of session events into ``analytics_sessions``/``analytics_visitors``."""

    name = "analytics"
    metadata = Base.metadata
    personal_fields = ()  # times, counts, roles, ids: never message texts or slot values
    supports_shadow_rebuild = True  # writes through self.view.table(...)

    def __init__(self, view: SQLView) -> None:
        super().__init__(view)
        self.sessions = RowBuffer(view.table(sessions_table), "session_id")
        self.visitors = RowBuffer(view.table(visitors_table), "visitor_uuid")

    def discard(self) -> None:
        self.sessions.clear()
        self.visitors.clear()

    def prepare(self, events: Sequence[Any]) -> None:
        sessions, visitors = batch_ids(events, Session.Started, Visitor.Registered)
        self.sessions.load(self.view.conn, sessions)
        self.visitors.load(self.view.conn, visitors)

    def flush(self) -> None:
        self.sessions.flush(self.view.conn)
        self.visitors.flush(self.view.conn)

    def _session(self, e: Any) -> dict[str, Any] | None:
        sid = str(e.originator_id)
        row = self.sessions.cached(sid) or self.sessions.get(self.view.conn, sid)
        if row is not None:
            self.sessions.changed(sid)
        return row

    def _activity(self, row: dict[str, Any], at: datetime) -> None:
        row["last_activity_at"] = at
        row["expires_at"] = _expiry(row)

    def started(self, e: Session.Started) -> None:
        row = {
            "session_id": str(e.originator_id),
            "tenant": e.tenant,
            "visitor_id": e.visitor_id,
            "user_id": e.user_id,
            "channel": e.channel,
            "is_returning": e.is_returning,
            "started_at": e.occurred_at,
            "first_message_at": None,
            "last_message_at": None,
            "last_activity_at": e.occurred_at,
            "expires_at": None,
            "messages": 0,
            "user_messages": 0,
            "open_tasks": 0,
            "completed_tasks": 0,
            "status": "active",
            "closed_at": None,
            "close_reason": None,
            "idle_timeout_s": e.policy.idle_timeout_s,
            "task_idle_timeout_s": e.policy.task_idle_timeout_s,
            "max_length_s": e.policy.max_session_length_s,
        }
        row["expires_at"] = _expiry(row)
        self.sessions.add(row)

    def message(self, e: Session.MessageRecorded) -> None:
        row = self._session(e)
        if row is None:
            return
        if row["first_message_at"] is None:
            row["first_message_at"] = e.occurred_at
        row["last_message_at"] = e.occurred_at
        row["messages"] += 1
        if e.role == "user":
            row["user_messages"] += 1
        self._activity(row, e.occurred_at)

    def activity(self, e: Any) -> None:
        row = self._session(e)
        if row is not None:
            self._activity(row, e.occurred_at)

    def task_started(self, e: Session.TaskStarted) -> None:
        row = self._session(e)
        if row is not None:
            row["open_tasks"] += 1
            self._activity(row, e.occurred_at)

    def task_completed(self, e: Session.TaskCompleted) -> None:
        row = self._session(e)
        if row is not None:
            row["open_tasks"] -= 1
            row["completed_tasks"] += 1
            self._activity(row, e.occurred_at)

    def session_linked(self, e: Session.IdentityLinked) -> None:
        row = self._session(e)
        if row is not None:
            row["user_id"] = e.user_id

    def closed(self, e: Session.TimedOut | Session.Ended) -> None:
        row = self._session(e)
        if row is not None:
            row["status"] = "timed_out" if isinstance(e, Session.TimedOut) else "ended"
            row["closed_at"] = e.occurred_at
            # A timeout's reason is the ledger's (idle, max_length); an end's is
            # the caller's free text, personal content this model never stores.
            row["close_reason"] = e.reason if isinstance(e, Session.TimedOut) else None
            row["expires_at"] = None

    def removed(self, e: RetentionRecord.Removed) -> None:
        """Retention removed sessions from the log: their rows stay (live), or come
        back from the record's summaries (a rebuild, which never saw their events)."""
        for removed in e.sessions:
            sid = str(removed.session_id)
            if removed.summary is not None and self._session_row(sid) is None:
                self.sessions.add({"session_id": sid, "tenant": removed.tenant, **removed.summary.model_dump()})

    def _session_row(self, sid: str) -> dict[str, Any] | None:
        return self.sessions.cached(sid) or self.sessions.get(self.view.conn, sid)

    def registered(self, e: Visitor.Registered) -> None:
        self.visitors.add(
            {
                "visitor_uuid": str(e.originator_id),
                "tenant": e.tenant,
                "visitor_id": e.visitor_id,
                "registered_at": e.occurred_at,
                "user_id": None,
                "linked_at": None,
            }
        )

    def visitor_linked(self, e: Visitor.IdentityLinked) -> None:
        key = str(e.originator_id)
        row = self.visitors.get(self.view.conn, key)
        if row is not None:
            row["user_id"] = e.user_id
            row["linked_at"] = e.occurred_at
            self.visitors.changed(key)


_HANDLERS: dict[type, Any] = {
    Session.Started: SessionAnalytics.started,
    Session.MessageReceived: SessionAnalytics.message,
    Session.MessageSent: SessionAnalytics.message,
    Session.SlotSet: SessionAnalytics.activity,
    Session.SlotCleared: SessionAnalytics.activity,
    Session.TaskStarted: SessionAnalytics.task_started,
    Session.TaskCompleted: SessionAnalytics.task_completed,
    Session.IdentityLinked: SessionAnalytics.session_linked,
    Session.TimedOut: SessionAnalytics.closed,
    Session.Ended: SessionAnalytics.closed,
    Visitor.Registered: SessionAnalytics.registered,
    Visitor.IdentityLinked: SessionAnalytics.visitor_linked,
    RetentionRecord.Removed: SessionAnalytics.removed,
}


SessionAnalytics.handlers = _HANDLERS
SessionAnalytics.topics = tuple(get_topic(t) for t in _HANDLERS)

# ---------------------------------------------------------------- reads


def check_range(start: datetime | None, end: datetime | None) -> None:
    for value in (start, end):
        if value is not None and (value.tzinfo is None or value.utcoffset() is None):
            raise InvalidCommandError(
                f"Time {value!r} has no timezone; pass an aware datetime (UTC)."
            )
    if start is not None and end is not None and end <= start:
        raise InvalidCommandError(
            f"The period's end {end.isoformat()} is not after its start {start.isoformat()}."
        )


def tenants(conn: Connection) -> list[str]:
    """Every tenant that has a session, in order."""
    column = on(conn, sessions_table).c.tenant
    return list(conn.execute(select(column).distinct().order_by(column)).scalars())


__all__ = ["SessionAnalytics", "check_range", "resessionize", "tenants"]
