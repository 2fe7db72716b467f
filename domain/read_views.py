"""Immutable read-side views of the aggregates, returned by the public API."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from pydantic import AwareDatetime, JsonValue

from .conversation import Message, SessionContext, Slot, Status
from .messages import MessagesField
from .pydantic_aggregates import Immutable
from .policy import is_past_deadline
from .session import Session
from .visitor import Visitor


class SessionState(Immutable):
    """A session as rebuilt from its events (never the live aggregate)."""

    session_id: UUID
    version: int
    visitor_id: str
    user_id: str | None
    channel: str
    context: SessionContext
    status: Status
    started_at: AwareDatetime
    last_activity_at: AwareDatetime
    expires_at: AwareDatetime | None
    closed_at: AwareDatetime | None
    close_reason: str | None
    previous_session_id: UUID | None
    is_returning: bool
    messages: MessagesField
    """The messages in order: a read-only sequence, read from the log as they are read."""
    slots: dict[str, JsonValue]
    slot_scopes: dict[str, str]
    open_tasks: tuple[str, ...]
    completed_tasks: tuple[str, ...]
    idle_timeout: timedelta
    archived_at: AwareDatetime | None = None
    """When retention archived this (closed) session; its transcript rows are gone then."""
    tenant: str = "default"
    """The tenant the session belongs to (see :mod:`chatledger.domain.tenancy`)."""

    @classmethod
    def of(cls, s: Session) -> SessionState:
        return cls(
            session_id=s.id,
            version=s.version,
            visitor_id=s.visitor_id,
            tenant=s.tenant,
            user_id=s.user_id,
            channel=s.channel,
            context=s.context,
            status=s.status,
            started_at=s.started_at,
            last_activity_at=s.last_activity_at,
            expires_at=s.expiry()[0] if s.status == "active" else None,
            closed_at=s.closed_at,
            close_reason=s.close_reason,
            previous_session_id=s.previous_session_id,
            is_returning=s.is_returning,
            messages=s.messages.frozen(),
            slots={k: v.value for k, v in s.slots.items()},
            slot_scopes={k: v.scope for k, v in s.slots.items()},
            open_tasks=tuple(s.tasks),
            completed_tasks=tuple(s.completed_tasks),
            idle_timeout=s.idle_timeout,
            archived_at=s.archived_at,
        )

    def is_over(self, at: datetime) -> bool:
        """True if the session is closed, or would have timed out by ``at``."""
        deadline = self.expires_at
        return self.status != "active" or (deadline is not None and is_past_deadline(deadline, at))


class Turn(Immutable):
    """What ``receive`` tells the bot: enough facts to greet correctly.

    The engine supplies facts; the bot picks the words ("Welcome back!").
    """

    session_id: UUID
    message: Message
    is_new_session: bool
    is_returning: bool
    previous_session_id: UUID | None
    away_for: timedelta | None
    carried_slots: dict[str, JsonValue]
    user_id: str | None
    duplicate: bool = False
    position: int = 0
    """The log position of this turn's write (or, for a duplicate, the head when it
    was recognised): pass it as ``after=`` to a query to read your own write."""

    @classmethod
    def of(cls, s: Session, message: Message, *, duplicate: bool = False, position: int = 0) -> Turn:
        first = message.position == 0
        return cls(
            session_id=s.id,
            message=message,
            is_new_session=first,
            is_returning=s.is_returning,
            previous_session_id=s.previous_session_id,
            away_for=timedelta(seconds=s.away_for_s) if first and s.away_for_s is not None else None,
            carried_slots={k: v.value for k, v in s.carried_slots.items()} if first else {},
            user_id=s.user_id,
            duplicate=duplicate,
            position=position,
        )


class VisitorState(Immutable):
    visitor_id: str
    user_id: str | None
    current_session_id: UUID | None
    session_ids: tuple[UUID, ...]
    tenant: str = "default"

    @classmethod
    def of(cls, v: Visitor) -> VisitorState:
        return cls(
            visitor_id=v.visitor_id,
            tenant=v.tenant,
            user_id=v.user_id,
            current_session_id=v.current_session_id,
            session_ids=tuple(v.session_ids),
        )


__all__ = ["Message", "SessionContext", "SessionState", "Slot", "Turn", "VisitorState"]
