"""The active-session index: every live session keyed by its deadline (when it times out).

One row per session that has started and not yet timed out or ended. Its
``expires_at`` is the domain's deadline (``domain.policy.session_deadline``, as
:meth:`Session.expiry`), from the events' ``occurred_at`` and the policy recorded
in ``Session.Started``. So "which sessions are due?" is one indexed range query.

A second, small table remembers *closed* sessions (id, visitor, closed_at) so
the retention job can find ended sessions older than N days with an indexed
query, archive them and drop their rows.

Safe with several processes catching up at once: the projector claims each
batch with a compare-and-set on the tracking row before applying it, so no
event is applied twice (``projections/catch_up.py``).

Times are stored as integer microseconds since the epoch (UTC), so the range
query, comparisons and sums are exact and identical on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking
from eventsourcing.utils import get_topic
from sqlalchemy import (
    BigInteger,
    BindParameter,
    Boolean,
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    bindparam,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from ..domain.batching import batched
from ..domain.policy import session_deadline
from ..domain.retention import RetentionRecord
from ..domain.session import Session
from ..domain.tenancy import DEFAULT_TENANT
from .read_model import ReadModel
from .sqltypes import UTCMicros, from_micros, seconds_to_micros, to_micros
from .view import SQLView

metadata = MetaData()

active_sessions = Table(
    "chatledger_active_sessions",
    metadata,
    Column("session_id", Uuid, primary_key=True),
    Column("tenant", String(64), nullable=False, server_default=DEFAULT_TENANT),
    Column("visitor_id", String(200), nullable=False),
    Column("version", Integer, nullable=False),  # last event applied to this row
    Column("started_at", UTCMicros, nullable=False),
    Column("last_activity_at", UTCMicros, nullable=False),
    Column("idle_timeout_us", BigInteger, nullable=False),
    Column("task_idle_timeout_us", BigInteger, nullable=False),
    Column("max_length_at", UTCMicros, nullable=True),
    Column("open_tasks", Text, nullable=False),  # JSON list, in start order
    Column("expires_at", UTCMicros, nullable=False),
    Column("expiry_reason", String(16), nullable=False),
    # False when an event this index does not understand was applied: the
    # sweeper then loads the aggregate instead of trusting the row.
    Column("exact", Boolean, nullable=False),
    # (expires_at, session_id): the sweep's ORDER BY and keyset, straight from the index.
    Index("ix_chatledger_active_sessions_expires_at", "expires_at", "session_id"),
    Index("ix_chatledger_active_sessions_tenant_expires_at", "tenant", "expires_at", "session_id"),
)

closed_sessions = Table(
    "chatledger_closed_sessions",
    metadata,
    Column("session_id", Uuid, primary_key=True),
    # "" (unknown) if an Ended arrived after the sweeper dropped the live row (a race)
    Column("tenant", String(64), nullable=False, server_default=DEFAULT_TENANT),
    Column(
        "visitor_id", String(200), nullable=True
    ),  # unknown if the sweeper dropped the live row first
    Column("status", String(16), nullable=False),
    Column("closed_at", UTCMicros, nullable=False),
    Index("ix_chatledger_closed_sessions_closed_at", "closed_at"),
    Index("ix_chatledger_closed_sessions_tenant_closed_at", "tenant", "closed_at"),
)

# Events whose effect on expiry this index reproduces; any other Session event
# marks the row inexact (see ``exact``).
_KNOWN: tuple[type[Session.Event], ...] = (
    Session.Started,
    Session.MessageRecorded,
    Session.SlotSet,
    Session.SlotCleared,
    Session.TaskStarted,
    Session.TaskCompleted,
    Session.IdentityLinked,
    Session.TimedOut,
    Session.Ended,
)
_ACTIVITY: tuple[type[Session.Event], ...] = (
    Session.MessageRecorded,
    Session.SlotSet,
    Session.SlotCleared,
    Session.TaskStarted,
    Session.TaskCompleted,
)


@dataclass
class ActiveRow:
    """One row of the index, folded in memory while a batch is applied."""

    session_id: UUID
    tenant: str
    visitor_id: str
    version: int
    started_at: datetime
    last_activity_at: datetime
    idle_timeout_us: int
    task_idle_timeout_us: int
    max_length_at: datetime | None
    open_tasks: list[str] = field(default_factory=list)
    exact: bool = True

    def expiry(self) -> tuple[datetime, str]:
        """The domain's rule (:func:`session_deadline`, as :meth:`Session.expiry`)."""
        return session_deadline(
            started_at=self.started_at,
            last_activity_at=self.last_activity_at,
            tasks_open=bool(self.open_tasks),
            idle_timeout=timedelta(microseconds=self.idle_timeout_us),
            task_idle_timeout=timedelta(microseconds=self.task_idle_timeout_us),
            max_session_length=(
                None if self.max_length_at is None else self.max_length_at - self.started_at
            ),
        )

    @classmethod
    def started(cls, event: Session.Started) -> ActiveRow:
        policy = event.policy
        max_length_at = None
        if policy.max_session_length_s is not None:
            max_length_at = event.occurred_at + timedelta(seconds=policy.max_session_length_s)
        return cls(
            session_id=event.originator_id,
            tenant=event.tenant,
            visitor_id=event.visitor_id,
            version=event.originator_version,
            started_at=event.occurred_at,
            last_activity_at=event.occurred_at,
            idle_timeout_us=seconds_to_micros(policy.idle_timeout_s),
            task_idle_timeout_us=seconds_to_micros(policy.task_idle_timeout_s),
            max_length_at=max_length_at,
        )

    @classmethod
    def of(cls, record: Any) -> ActiveRow:
        fields = {name: getattr(record, name) for name in _STORED_AS_IS}
        return cls(**fields, open_tasks=list(json.loads(record.open_tasks)))

    def apply(self, event: Session.Event) -> None:
        self.version = event.originator_version
        if not isinstance(event, _KNOWN):
            self.exact = False
            return
        if isinstance(event, _ACTIVITY):
            self.last_activity_at = event.occurred_at
        if isinstance(event, Session.TaskStarted):
            self.open_tasks.append(event.task)
        elif isinstance(event, Session.TaskCompleted) and event.task in self.open_tasks:
            self.open_tasks.remove(event.task)

    def values(self) -> dict[str, Any]:
        expires_at, reason = self.expiry()
        return {
            "session_id": self.session_id,
            "tenant": self.tenant,
            "visitor_id": self.visitor_id,
            "version": self.version,
            "started_at": self.started_at,
            "last_activity_at": self.last_activity_at,
            "idle_timeout_us": self.idle_timeout_us,
            "task_idle_timeout_us": self.task_idle_timeout_us,
            "max_length_at": self.max_length_at,
            "open_tasks": json.dumps(self.open_tasks),
            "expires_at": expires_at,
            "expiry_reason": reason,
            "exact": self.exact,
        }


_STORED_AS_IS = (
    "session_id", "tenant", "visitor_id", "version", "started_at", "last_activity_at", "idle_timeout_us",
    "task_idle_timeout_us", "max_length_at", "exact",
)
_CLOSED = object()  # marker: the session closed within this batch


class ActiveSessions(ReadModel):
    """Live sessions by expiry, plus closed sessions by close time (for retention)."""

    name = "active_sessions"
    metadata = metadata
    personal_fields = ()  # times, versions, policies, task names only
    supports_shadow_rebuild = True  # writes through self.view.table(...)
    lookup_chunk = 500

    def __init__(self, view: SQLView) -> None:
        super().__init__(view)
        self._events: list[Session.Event] = []
        self.active_table = view.table(active_sessions)
        self.closed_table = view.table(closed_sessions)

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """Buffer session events; the batch is folded and written in :meth:`flush`."""
        if isinstance(domain_event, Session.Event):
            self._events.append(domain_event)

    def process_batch(self, application_name: str, items: Sequence[tuple[int, Any]]) -> None:
        if type(self).process_event is not ActiveSessions.process_event:  # a subclass's own
            return super().process_batch(application_name, items)
        self._events.extend(e for _, e in items if isinstance(e, Session.Event))

    def flush(self) -> None:
        events, self._events = self._events, []
        if events:
            self._apply(self.view.conn, events)

    def discard(self) -> None:
        self._events = []

    def _apply(self, conn: Connection, events: Sequence[Session.Event]) -> None:
        active_sessions, closed_sessions = self.active_table, self.closed_table
        # Rows this batch needs that it does not create itself.
        created = {e.originator_id for e in events if isinstance(e, Session.Started)}
        wanted = {e.originator_id for e in events} - created
        existing: dict[UUID, ActiveRow] = {}
        for chunk in batched(sorted(wanted), self.lookup_chunk):
            for record in conn.execute(
                select(active_sessions).where(active_sessions.c.session_id.in_(chunk))
            ):
                existing[record.session_id] = ActiveRow.of(record)
        original_versions = {sid: row.version for sid, row in existing.items()}

        state: dict[UUID, ActiveRow | object] = dict(existing)
        closed: list[dict[str, Any]] = []
        archived: list[dict[str, Any]] = []
        deletes_removed: list[dict[str, Any]] = []
        for event in events:
            sid = event.originator_id
            if isinstance(event, Session.Archived):
                archived.append({"b_session_id": sid})  # retention is done with it
                continue
            if isinstance(event, RetentionRecord.Removed):  # for an index behind the removal
                gone = [{"b_session_id": s.session_id} for s in event.sessions]
                archived.extend(gone)
                deletes_removed.extend(gone)
                continue
            if isinstance(event, Session.Started):
                state[sid] = ActiveRow.started(event)
                continue
            row = state.get(sid)
            if isinstance(event, (Session.TimedOut, Session.Ended)):
                # Recorded even when the sweeper already dropped the live row.
                state[sid] = _CLOSED
                closed.append(
                    {
                        "session_id": sid,
                        "tenant": _closed_tenant(event, row),
                        "visitor_id": row.visitor_id if isinstance(row, ActiveRow) else None,
                        "status": "timed_out" if isinstance(event, Session.TimedOut) else "ended",
                        "closed_at": event.occurred_at,
                    }
                )
                continue
            if not isinstance(row, ActiveRow) or event.originator_version <= row.version:
                continue  # not live here (closed or never indexed), or stale
            row.apply(event)

        inserts = [
            r.values()
            for sid, r in state.items()
            if isinstance(r, ActiveRow) and sid not in existing
        ]
        updates = [
            {**r.values(), "b_session_id": sid}
            for sid, r in state.items()
            if isinstance(r, ActiveRow) and sid in existing and r.version != original_versions[sid]
        ]
        deletes = [
            {"b_session_id": sid} for sid, r in state.items() if r is _CLOSED and sid in existing
        ] + deletes_removed
        if inserts:
            insert = _dialect_insert(conn)(active_sessions)
            conn.execute(insert.on_conflict_do_nothing(index_elements=["session_id"]), inserts)
        if updates:
            columns: dict[str, BindParameter[Any]] = {
                c.name: bindparam(c.name) for c in active_sessions.c if c.name != "session_id"
            }
            conn.execute(
                active_sessions.update()
                .where(active_sessions.c.session_id == bindparam("b_session_id"))
                .values(columns),
                updates,
            )
        if deletes:
            conn.execute(
                active_sessions.delete().where(
                    active_sessions.c.session_id == bindparam("b_session_id")
                ),
                deletes,
            )
        if closed:
            insert = _dialect_insert(conn)(closed_sessions)
            conn.execute(insert.on_conflict_do_nothing(index_elements=["session_id"]), closed)
        if archived:
            conn.execute(
                closed_sessions.delete().where(
                    closed_sessions.c.session_id == bindparam("b_session_id")
                ),
                archived,
            )


def _session_event_topics() -> tuple[str, ...]:
    """Every stored event class of Session, found by introspection, so an event
    added later is still seen (and marks its rows inexact)."""
    found: set[type] = {
        value
        for value in vars(Session).values()
        if isinstance(value, type)
        and issubclass(value, Session.Event)
        and value not in (Session.Event, Session.MessageRecorded)
    }
    return tuple(sorted(get_topic(cls) for cls in (*found, RetentionRecord.Removed)))  # and what removes them


ActiveSessions.topics = _session_event_topics()


def _closed_tenant(event: Session.TimedOut | Session.Ended, row: object) -> str:
    """The tenant of a closing session: the timeout names it; else the live row's."""
    if isinstance(event, Session.TimedOut):
        return event.tenant
    return row.tenant if isinstance(row, ActiveRow) else ""


def _dialect_insert(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


__all__ = ["ActiveRow", "ActiveSessions", "active_sessions", "closed_sessions", "from_micros", "to_micros"]
