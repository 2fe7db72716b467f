"""What log retention removed: the record the log keeps of it (issue 17).

Retention may remove an archived session's events from the live log. The
removal is one transaction that also appends a :class:`RetentionRecord`
(a new aggregate, one per removal batch, the operator's: no tenant). Its one
event, :class:`RetentionRecord.Removed`, names every removed session with what
``audit verify`` needs to account for the removed part of the chain (the
session's last version and the ``event_hash`` of that version, which chains all
of its events) and what the analytics read model needs to keep the session's
figures (:class:`SessionSummary`, the facts of its analytics row: times,
counts, ids; never content). The event is itself hash-chained and sealed.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID

from pydantic import AwareDatetime

from .pydantic_aggregates import Aggregate, Immutable, utc


class SessionSummary(Immutable):
    """The analytics facts of a removed session (as ``analytics_sessions`` held them)."""

    visitor_id: str
    user_id: str | None
    channel: str
    is_returning: bool
    started_at: AwareDatetime
    first_message_at: AwareDatetime | None
    last_message_at: AwareDatetime | None
    last_activity_at: AwareDatetime
    expires_at: AwareDatetime | None
    messages: int
    user_messages: int
    open_tasks: int
    completed_tasks: int
    status: str
    closed_at: AwareDatetime | None
    close_reason: str | None
    idle_timeout_s: float
    task_idle_timeout_s: float
    max_length_s: float | None


class RemovedSession(Immutable):
    """One session whose events retention removed from the live log."""

    session_id: UUID
    tenant: str
    archive: str
    """The archive file (its name) that holds the session's events."""
    last_version: int
    """Versions 1..last_version were removed (all of them)."""
    first_position: int
    last_position: int
    head_hash: str
    """Hex ``event_hash`` of the last version: it chains every removed event."""
    summary: SessionSummary | None
    """Its analytics facts (None: the analytics read model held no row for it)."""


class RetentionRecord(Aggregate):
    """The log's record of one removal batch (see the module docstring)."""

    class Event(Aggregate.Event):
        pass

    class Removed(Event, Aggregate.Created):
        """Retention removed these sessions' events, sealed through ``sealed_through``."""

        sessions: list[RemovedSession]
        sealed_through: int

        def apply(self, r: RetentionRecord) -> None:
            r.sessions = list(self.sessions)
            r.sealed_through = self.sealed_through

    if TYPE_CHECKING:
        sessions: list[RemovedSession]
        sealed_through: int

    @classmethod
    def removed(cls, sessions: list[RemovedSession], *, sealed_through: int, at: datetime) -> RetentionRecord:
        return cls._create(cls.Removed, occurred_at=utc(at), sessions=sessions, sealed_through=sealed_through)


__all__ = ["RemovedSession", "RetentionRecord", "SessionSummary"]
