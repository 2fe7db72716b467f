"""The conversation log: one row per message, for transcripts and exports.

Rows carry the session, visitor, user, role, text, business time and the
message's position in its session. ``user_id`` is the user the visitor is
linked to *now* (as of the projection's position): when a visitor is linked,
the rows of its earlier anonymous sessions are attributed to the user too, so a
user's transcript covers the conversations they had before logging in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, ClassVar

from eventsourcing.utils import get_topic
from sqlalchemy import (
    BigInteger,
    Connection,
    Index,
    Integer,
    String,
    Text,
    bindparam,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ..domain.batching import batched
from ..domain.erasure import ERASED_TEXT
from ..domain.retention import RetentionRecord
from ..domain.session import Session
from ..domain.tenancy import DEFAULT_TENANT
from ..domain.visitor import Visitor
from .read_model import HandlerTableReadModel, batch_ids
from .query_results import TranscriptMessage
from .sqltypes import UTCDateTime
from .view import SQLView
from .writers import RowBuffer, executemany, insert_rows
from .prefixes import on


class Base(DeclarativeBase):
    pass


class LoggedSession(Base):
    """Who a session belongs to and how many messages it has (for positions)."""

    __tablename__ = "conversation_sessions"
    __table_args__ = (
        Index("ix_conversation_sessions_tenant_visitor", "tenant", "visitor_id"),
        Index("ix_conversation_sessions_tenant_user", "tenant", "user_id"),
    )

    session_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), server_default=DEFAULT_TENANT)
    visitor_id: Mapped[str] = mapped_column(String(200))
    user_id: Mapped[str | None] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    message_count: Mapped[int] = mapped_column(Integer)


class LoggedVisitor(Base):
    """A visitor (keyed by its aggregate id) and the user it is linked to."""

    __tablename__ = "conversation_visitors"

    visitor_uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), server_default=DEFAULT_TENANT)
    visitor_id: Mapped[str] = mapped_column(String(200))
    user_id: Mapped[str | None] = mapped_column(String(200))


class LoggedMessage(Base):
    """One message, as recorded."""

    __tablename__ = "conversation_messages"
    __table_args__ = (
        Index("ix_conversation_messages_tenant_user_at", "tenant", "user_id", "at"),
        Index("ix_conversation_messages_tenant_visitor_at", "tenant", "visitor_id", "at"),
        Index("ix_conversation_messages_tenant_at", "tenant", "at"),
    )

    session_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), server_default=DEFAULT_TENANT)
    visitor_id: Mapped[str] = mapped_column(String(200))
    user_id: Mapped[str | None] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(10))
    text: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    notification_id: Mapped[int] = mapped_column(BigInteger)


sessions_table = Base.metadata.tables[LoggedSession.__tablename__]
visitors_table = Base.metadata.tables[LoggedVisitor.__tablename__]
messages_table = Base.metadata.tables[LoggedMessage.__tablename__]

_MESSAGE_KEYS = (
    "session_id", "position", "tenant", "visitor_id", "user_id", "channel", "role", "text", "at",
    "notification_id",
)  # fmt: skip
_SESSION, _TENANT, _VISITOR, _USER, _TEXT = (
    _MESSAGE_KEYS.index(k) for k in ("session_id", "tenant", "visitor_id", "user_id", "text")
)

def _link_updates(sessions: Any, messages: Any) -> list[Any]:
    return [
        update(table)
        .where(
            table.c.tenant == bindparam("t"),
            table.c.visitor_id == bindparam("v"),
            table.c.user_id.is_(None),
        )
        .values(user_id=bindparam("u"))
        for table in (sessions, messages)
    ]


_LINK_UPDATES = _link_updates(sessions_table, messages_table)


class ConversationLog(HandlerTableReadModel):
    """Projection of message events into ``conversation_messages``."""

    name = "conversation_log"
    metadata = Base.metadata
    personal_fields = (Session.MessageReceived, Session.MessageSent)  # texts
    supports_shadow_rebuild = True  # writes through self.view.table(...)
    # The link UPDATEs need the visitor indexes; these serve reads only.
    deferred_indexes = (
        "ix_conversation_messages_tenant_user_at",
        "ix_conversation_messages_tenant_at",
        "ix_conversation_sessions_tenant_user",
    )

    def __init__(self, view: SQLView) -> None:
        super().__init__(view)
        table = view.table
        self.sessions = RowBuffer(table(sessions_table), "session_id")
        self.visitors = RowBuffer(table(visitors_table), "visitor_uuid")
        self.messages_table = table(messages_table)
        self.link_updates = (
            _LINK_UPDATES
            if self.messages_table is messages_table
            else _link_updates(table(sessions_table), self.messages_table)
        )
        self.pending: list[list[Any]] = []  # message rows, values in _MESSAGE_KEYS order
        self.pending_by_visitor: dict[tuple[str, str], list[list[Any]]] = {}
        self.links: list[dict[str, str]] = []  # {"t": tenant, "v": visitor, "u": user}
        self.erased: set[str] = set()
        self.archived: set[str] = set()

    def discard(self) -> None:
        self.sessions.clear()
        self.visitors.clear()
        self.pending.clear()
        self.pending_by_visitor.clear()
        self.links.clear()
        self.erased.clear()
        self.archived.clear()

    def prepare(self, events: Sequence[Any]) -> None:
        sessions, visitors = batch_ids(events, Session.Started, Visitor.Registered)
        self.sessions.load(self.view.conn, sessions)
        self.visitors.load(self.view.conn, visitors)

    def flush(self) -> None:
        conn = self.view.conn
        self.sessions.flush(conn)
        self.visitors.flush(conn)
        if self.archived:
            self.pending = [r for r in self.pending if r[_SESSION] not in self.archived]
        messages = self.messages_table
        insert_rows(conn, messages, self.pending, _MESSAGE_KEYS)
        self.pending.clear()
        self.pending_by_visitor.clear()
        if self.links:
            for statement in self.link_updates:
                executemany(conn, statement, self.links)
            self.links.clear()
        if self.erased:
            erased = sorted(self.erased)
            for chunk in batched(erased):
                conn.execute(
                    update(messages)
                    .where(messages.c.session_id.in_(chunk))
                    .values(text=ERASED_TEXT)
                )
            self.erased.clear()
        if self.archived:
            archived = sorted(self.archived)
            for chunk in batched(archived):
                conn.execute(messages.delete().where(messages.c.session_id.in_(chunk)))
            self.archived.clear()

    def _started(self, e: Session.Started, notification_id: int) -> None:
        # ``user_id`` is the visitor's link when the session started.
        self.sessions.add(
            {
                "session_id": str(e.originator_id),
                "tenant": e.tenant,
                "visitor_id": e.visitor_id,
                "user_id": e.user_id,
                "channel": e.channel,
                "started_at": e.occurred_at,
                "message_count": 0,
            }
        )

    def _message(self, e: Session.MessageRecorded, notification_id: int) -> None:
        sid = str(e.originator_id)
        session = self.sessions.cached(sid) or self.sessions.get(self.view.conn, sid)
        if session is None:  # pragma: no cover - a message always follows its Started
            return
        position = session["message_count"]
        session["message_count"] = position + 1
        self.sessions.changed(sid)
        row = [
            sid,
            position,
            session["tenant"],
            session["visitor_id"],
            session["user_id"],
            session["channel"],
            e.role,
            e.text,
            e.occurred_at,
            notification_id,
        ]
        self.pending.append(row)
        if row[_USER] is None:  # only anonymous rows can be attributed later
            self.pending_by_visitor.setdefault((row[_TENANT], row[_VISITOR]), []).append(row)

    def _session_linked(self, e: Session.IdentityLinked, notification_id: int) -> None:
        sid = str(e.originator_id)
        session = self.sessions.get(self.view.conn, sid)
        if session is not None and session["user_id"] is None:
            session["user_id"] = e.user_id
            self.sessions.changed(sid)

    def _visitor_registered(self, e: Visitor.Registered, notification_id: int) -> None:
        self.visitors.add(
            {"visitor_uuid": str(e.originator_id), "tenant": e.tenant, "visitor_id": e.visitor_id, "user_id": None}
        )  # fmt: skip

    def _visitor_linked(self, e: Visitor.IdentityLinked, notification_id: int) -> None:
        """Attribute the visitor's earlier (anonymous) sessions and messages to the user.

        Rows of this batch are fixed in memory; rows already in the database
        are fixed by one UPDATE per table at :meth:`flush` (after the inserts).
        """
        visitor = self.visitors.get(self.view.conn, str(e.originator_id))
        if visitor is None:  # pragma: no cover - Registered always comes first
            return
        visitor["user_id"] = e.user_id
        self.visitors.changed(visitor["visitor_uuid"])
        tenant, visitor_id = visitor["tenant"], visitor["visitor_id"]
        self.links.append({"t": tenant, "v": visitor_id, "u": e.user_id})
        for session in self.sessions.rows():
            if (
                session["tenant"] == tenant
                and session["visitor_id"] == visitor_id
                and session["user_id"] is None
            ):
                session["user_id"] = e.user_id
        for row in self.pending_by_visitor.pop((tenant, visitor_id), ()):
            if row[_USER] is None:
                row[_USER] = e.user_id

    def _data_erased(self, e: Visitor.DataErased, notification_id: int) -> None:
        """Blank the texts of the erased sessions (a rebuild decodes them as erased too)."""
        sessions = {str(s) for s in e.receipt.session_ids}
        for row in self.pending:
            if row[_SESSION] in sessions:
                row[_TEXT] = ERASED_TEXT
        self.erased |= sessions

    def _archived(self, e: Session.Archived, notification_id: int) -> None:
        """Retention archived the session: its messages leave the log's read model.

        The session's row stays (who, when, how many messages), so the
        transcript of an archived session is empty, not unknown."""
        self.archived.add(str(e.originator_id))

    def _removed(self, e: RetentionRecord.Removed, notification_id: int) -> None:  # as archived
        self.archived.update(str(s.session_id) for s in e.sessions)

    handlers_take_position = True  # message rows record their notification id
    handlers: ClassVar[dict[type, Any]] = {
        Session.Started: _started,
        Session.MessageReceived: _message,
        Session.MessageSent: _message,
        Session.IdentityLinked: _session_linked,
        Session.Archived: _archived,
        RetentionRecord.Removed: _removed,
        Visitor.Registered: _visitor_registered,
        Visitor.IdentityLinked: _visitor_linked,
        Visitor.DataErased: _data_erased,
    }


ConversationLog.topics = tuple(get_topic(t) for t in ConversationLog.handlers)

def query_transcript(
    conn: Connection,
    *,
    session_id: str | None = None,
    user_id: str | None = None,
    visitor_id: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int | None = None,
    tenant: str | None = DEFAULT_TENANT,
) -> list[TranscriptMessage]:
    """Messages of ``tenant`` (None: every tenant's) matching every given filter,
    in conversation order.

    ``visitor_id`` alone reads only the visitor's *anonymous* messages: once a
    visitor is linked, its history belongs to the user and is read by ``user_id``.
    """
    m = on(conn, messages_table).c
    query = select(on(conn, messages_table))
    if tenant is not None:
        query = query.where(m.tenant == tenant)
    if session_id is not None:
        query = query.where(m.session_id == session_id)
    if user_id is not None:
        query = query.where(m.user_id == user_id)
    if visitor_id is not None:
        query = query.where(m.visitor_id == visitor_id)
        if user_id is None:
            query = query.where(m.user_id.is_(None))
    if start is not None:
        query = query.where(m.at >= start)
    if end is not None:
        query = query.where(m.at < end)
    query = query.order_by(m.at, m.notification_id)
    if limit is not None:
        query = query.limit(limit)
    return [_message(r) for r in conn.execute(query).mappings()]


def iter_messages(
    conn: Connection, *, start: datetime | None = None, end: datetime | None = None,
    tenant: str | None = DEFAULT_TENANT,
) -> Iterator[TranscriptMessage]:
    """Every message of ``tenant`` (None: all), optionally in a time range, in log order."""
    m = on(conn, messages_table).c
    query = select(on(conn, messages_table)).order_by(m.notification_id)
    if tenant is not None:
        query = query.where(m.tenant == tenant)
    if start is not None:
        query = query.where(m.at >= start)
    if end is not None:
        query = query.where(m.at < end)
    for row in conn.execution_options(yield_per=5000).execute(query).mappings():
        yield _message(row)


def message_times(
    conn: Connection, start: datetime | None, end: datetime | None, tenant: str = DEFAULT_TENANT
) -> Iterable[tuple[str, datetime]]:
    """``(visitor_id, at)`` of every message of ``tenant``, per visitor in time order."""
    m = on(conn, messages_table).c
    query = select(m.visitor_id, m.at).order_by(m.visitor_id, m.at, m.notification_id)
    query = query.where(m.tenant == tenant)
    if start is not None:
        query = query.where(m.at >= start)
    if end is not None:
        query = query.where(m.at < end)
    yield from conn.execution_options(yield_per=10000).execute(query)


def session_owner(
    conn: Connection, session_id: str, tenant: str = DEFAULT_TENANT
) -> tuple[str, str | None] | None:
    """``(visitor_id, user_id)`` of a session of ``tenant`` (None: no such session)."""
    t = on(conn, sessions_table).c
    row = conn.execute(select(t.visitor_id, t.user_id).where(t.session_id == session_id, t.tenant == tenant)).first()
    return None if row is None else (row[0], row[1])


def _message(row: Any) -> TranscriptMessage:
    return TranscriptMessage(
        session_id=row["session_id"],
        position=row["position"],
        visitor_id=row["visitor_id"],
        user_id=row["user_id"],
        channel=row["channel"],
        role=row["role"],
        text=row["text"],
        at=row["at"],
    )
