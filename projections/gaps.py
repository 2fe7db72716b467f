"""The gaps read model: each message with the gap since the visitor's previous message.

``ChatLedger.resessionize(T)`` splits each visitor's messages into conversations wherever two
consecutive messages are more than ``T`` apart; re-splitting every message in Python costs
0.7 s at 100,000 sessions, and the console's timeout curve asks for eight values of ``T``.
Here the projection keeps, per message, ``prev_at`` (the visitor's previous message, in the
order ``resessionize`` reads: by time, then log position) and ``gap_us`` (the gap in
microseconds), so the conversations under ``T`` in ``[start, end)`` are the messages there
that start one — no previous message, a previous one before ``start``, or a gap longer than
``T`` — and the curve for any number of timeouts is one indexed scan (:func:`timeout_curve`).

Appending is the common case (a visitor's next message is not earlier than the last one: one
row read per visitor and batch). A message stamped earlier than the visitor's last one, and
retention's ``Archived`` (the session's messages leave the log's read model, as they leave
the conversation log's, which ``resessionize`` reads), re-chain that visitor's rows at flush.
Times and ids only: no personal field is read (``personal_fields = ()``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar

from eventsourcing.utils import get_topic
from sqlalchemy import BigInteger, Connection, Index, String, and_, bindparam, case, func, or_, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ..domain.batching import batched
from ..domain.session import Session
from ..domain.tenancy import DEFAULT_TENANT, scoped_key
from .prefixes import on
from .read_model import HandlerTableReadModel, batch_ids
from .sqltypes import UTCDateTime
from .view import SQLView
from .writers import RowBuffer, executemany, insert_rows

_MICROS = timedelta(microseconds=1)


class Base(DeclarativeBase):
    pass


class GapSession(Base):
    """Whose a session is (a message event names its session only)."""

    __tablename__ = "gap_sessions"

    session_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    visitor_id: Mapped[str] = mapped_column(String(200))


class GapVisitor(Base):
    """A visitor's newest message (the next one's predecessor)."""

    __tablename__ = "gap_visitors"

    visitor_key: Mapped[str] = mapped_column(String(270), primary_key=True)  # scoped_key(tenant, visitor)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_id: Mapped[int] = mapped_column(BigInteger)


class GapMessage(Base):
    """One message: when, and the gap since the visitor's previous message (NULL: none)."""

    __tablename__ = "gap_messages"
    __table_args__ = (
        Index("ix_gap_messages_tenant_at", "tenant", "at", "gap_us", "prev_at"),  # covers the curve
        Index("ix_gap_messages_tenant_visitor", "tenant", "visitor_id", "at"),
        Index("ix_gap_messages_session", "session_id"),
    )

    notification_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    session_id: Mapped[str] = mapped_column(String(36))
    tenant: Mapped[str] = mapped_column(String(64))
    visitor_id: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    prev_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    gap_us: Mapped[int | None] = mapped_column(BigInteger)


sessions_table = Base.metadata.tables[GapSession.__tablename__]
visitors_table = Base.metadata.tables[GapVisitor.__tablename__]
messages_table = Base.metadata.tables[GapMessage.__tablename__]
_KEYS = ("notification_id", "session_id", "tenant", "visitor_id", "at", "prev_at", "gap_us")


class MessageGaps(HandlerTableReadModel):
    """Projection of message events into ``gap_messages`` (see the module's docstring)."""

    name = "message_gaps"
    metadata = Base.metadata
    personal_fields = ()  # times and ids: never a text
    supports_shadow_rebuild = True  # writes through self.view.table(...)
    deferred_indexes = ("ix_gap_messages_tenant_at",)
    handlers_take_position = True

    def __init__(self, view: SQLView) -> None:
        super().__init__(view)
        self.sessions = RowBuffer(view.table(sessions_table), "session_id")
        self.visitors = RowBuffer(view.table(visitors_table), "visitor_key")
        self.messages = view.table(messages_table)
        self.pending: list[list[Any]] = []
        self.rechain: set[tuple[str, str]] = set()  # (tenant, visitor_id)
        self.archived: set[str] = set()

    def discard(self) -> None:
        self.sessions.clear()
        self.visitors.clear()
        self.pending.clear()
        self.rechain.clear()
        self.archived.clear()

    def prepare(self, events: Sequence[Any]) -> None:
        conn = self.view.conn
        sessions, _ = batch_ids(events, Session.Started, Session.Started)
        self.sessions.load(conn, sessions)
        keys = [scoped_key(e.tenant, e.visitor_id) for e in events if isinstance(e, Session.Started)]
        keys += [scoped_key(r["tenant"], r["visitor_id"]) for r in self.sessions.rows()]
        self.visitors.load(conn, keys)

    def _started(self, e: Session.Started, notification_id: int) -> None:
        self.sessions.add({"session_id": str(e.originator_id), "tenant": e.tenant, "visitor_id": e.visitor_id})

    def _message(self, e: Session.MessageRecorded, notification_id: int) -> None:
        sid = str(e.originator_id)
        session = self.sessions.cached(sid) or self.sessions.get(self.view.conn, sid)
        if session is None:  # pragma: no cover - a message always follows its Started
            return
        tenant, visitor_id, at = session["tenant"], session["visitor_id"], e.occurred_at
        key = scoped_key(tenant, visitor_id)
        last = self.visitors.cached(key) or self.visitors.get(self.view.conn, key)
        prev_at = gap = None
        if last is None:
            self.visitors.add({"visitor_key": key, "last_at": at, "last_id": notification_id})
        elif at >= last["last_at"]:
            prev_at, gap = last["last_at"], (at - last["last_at"]) // _MICROS
            last["last_at"], last["last_id"] = at, notification_id
            self.visitors.changed(key)
        else:  # earlier than the visitor's newest message: re-chain the visitor at flush
            self.rechain.add((tenant, visitor_id))
        self.pending.append([notification_id, sid, tenant, visitor_id, at, prev_at, gap])

    def _archived(self, e: Session.Archived, notification_id: int) -> None:
        sid = str(e.originator_id)
        session = self.sessions.cached(sid) or self.sessions.get(self.view.conn, sid)
        if session is not None:
            self.archived.add(sid)
            self.rechain.add((session["tenant"], session["visitor_id"]))

    def flush(self) -> None:
        conn = self.view.conn
        self.sessions.flush(conn)
        self.visitors.flush(conn)
        insert_rows(conn, self.messages, self.pending, _KEYS)
        self.pending.clear()
        for chunk in batched(sorted(self.archived)):
            conn.execute(self.messages.delete().where(self.messages.c.session_id.in_(chunk)))
        self.archived.clear()
        for tenant, visitor_id in sorted(self.rechain):
            self._rechain(conn, tenant, visitor_id)
        self.rechain.clear()

    def _rechain(self, conn: Connection, tenant: str, visitor_id: str) -> None:
        """Recompute ``prev_at``/``gap_us`` of every row of the visitor, and its newest message."""
        m = self.messages.c
        rows = conn.execute(
            select(m.notification_id, m.at, m.prev_at, m.gap_us)
            .where(m.tenant == tenant, m.visitor_id == visitor_id)
            .order_by(m.at, m.notification_id)
        ).all()
        changed: list[dict[str, Any]] = []
        prev: datetime | None = None
        for nid, at, old_prev, old_gap in rows:
            gap = None if prev is None else (at - prev) // _MICROS
            if (old_prev, old_gap) != (prev, gap):
                changed.append({"k": nid, "p": prev, "g": gap})
            prev = at
        statement = (
            update(self.messages).where(m.notification_id == bindparam("k")).values(prev_at=bindparam("p"), gap_us=bindparam("g"))
        )
        executemany(conn, statement, changed)
        v = self.view.table(visitors_table)
        key = scoped_key(tenant, visitor_id)
        conn.execute(v.delete().where(v.c.visitor_key == key))
        if rows:
            conn.execute(v.insert().values(visitor_key=key, last_at=rows[-1][1], last_id=rows[-1][0]))

    handlers: ClassVar[dict[type, Any]] = {
        Session.Started: _started,
        Session.MessageReceived: _message,
        Session.MessageSent: _message,
        Session.Archived: _archived,
    }


MessageGaps.topics = tuple(get_topic(t) for t in MessageGaps.handlers)


def timeout_curve(
    conn: Connection,
    timeouts: Sequence[timedelta],
    start: datetime | None,
    end: datetime | None,
    tenant: str = DEFAULT_TENANT,
) -> tuple[int, list[int]]:
    """``(messages, conversations under each timeout)`` of ``tenant``'s messages in ``[start, end)``,
    in one query: a message starts a conversation under ``T`` if it has no previous message in
    the range or comes more than ``T`` after it (exactly ``T`` does not split, as in the engine)."""
    m = on(conn, messages_table).c  # under the ledger's table prefix
    first = m.prev_at.is_(None) if start is None else or_(m.prev_at.is_(None), m.prev_at < start)
    counts = [
        func.sum(case((or_(first, m.gap_us > t // _MICROS), 1), else_=0)) for t in timeouts
    ]
    where = [m.tenant == tenant]
    if start is not None:
        where.append(m.at >= start)
    if end is not None:
        where.append(m.at < end)
    row = conn.execute(select(func.count(), *counts).where(and_(*where))).one()
    return int(row[0]), [int(n or 0) for n in row[1:]]


__all__ = ["MessageGaps", "timeout_curve"]
