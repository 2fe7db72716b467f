"""The commands on one session (and the identity link): each one transaction,
re-run on fresh state if it lost a race. See :class:`~chatledger.ChatLedger`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from ..domain.conversation import Message, SlotScope
from ..domain.errors import ClientMessageIdConflictError
from ..domain.read_views import SessionState, VisitorState
from ..domain.session import Session
from ..domain.visitor import Visitor
from .unit_of_work import UnitOfWork


def reply(
    uow: UnitOfWork,
    session_id: UUID | str,
    text: str,
    *,
    role: Literal["bot", "system"],
    client_message_id: str | None,
    metadata: dict[str, Any] | None,
    at: datetime | None,
) -> Message:
    """Record the bot's (or the system's) message; idempotent per client id."""

    def once() -> Message:
        session, now = uow.open_session(session_id, at)
        if client_message_id is not None:
            seen = session.message_for(client_message_id)
            if seen is not None:
                uow.answer_from_store()  # on cached reads: decided again on fresh ones
                if seen.role != role:
                    raise ClientMessageIdConflictError(
                        session.id, client_message_id, recorded_role=seen.role, role=role
                    )
                return seen
        message = session.send(
            text, at=now, role=role, client_message_id=client_message_id, metadata=metadata
        )
        uow.save_and_hand_over(session)
        return message

    return uow.retrying(f"reply() to session {session_id}", once)


def session_command(
    uow: UnitOfWork,
    what: str,
    session_id: UUID | str,
    at: datetime | None,
    apply: Callable[[Session, datetime], None],
) -> SessionState:
    """Load the session, ``apply(session, now)``, save it; its state after."""

    def once() -> SessionState:
        session, now = uow.open_session(session_id, at)
        apply(session, now)
        uow.save_and_hand_over(session)
        return SessionState.of(session)

    return uow.retrying(f"{what} on session {session_id}", once)


def set_slot(
    uow: UnitOfWork, session_id: UUID | str, key: str, value: Any, *, scope: SlotScope, at: datetime | None
) -> SessionState:
    """Set a slot of the session (``scope="user"``: a fact about the person)."""
    apply = lambda s, now: s.set_slot(key, value, at=now, scope=scope)
    return session_command(uow, "set_slot()", session_id, at, apply)


def clear_slot(uow: UnitOfWork, session_id: UUID | str, key: str, *, at: datetime | None) -> SessionState:
    """Clear a slot of the session."""
    return session_command(uow, "clear_slot()", session_id, at, lambda s, now: s.clear_slot(key, at=now))


def start_task(uow: UnitOfWork, session_id: UUID | str, task: str, *, at: datetime | None) -> SessionState:
    """Mark a task of the session in progress."""
    return session_command(uow, "start_task()", session_id, at, lambda s, now: s.start_task(task, at=now))


def complete_task(
    uow: UnitOfWork, session_id: UUID | str, task: str, *, at: datetime | None
) -> SessionState:
    """Mark a started task of the session done."""
    apply = lambda s, now: s.complete_task(task, at=now)
    return session_command(uow, "complete_task()", session_id, at, apply)


def end_session(
    uow: UnitOfWork, session_id: UUID | str, *, reason: str, at: datetime | None
) -> SessionState:
    """End a session on purpose; one already past its timeout is timed out instead."""

    def once() -> SessionState:
        session, now = uow.open_session(session_id, at)
        if not session.time_out(detected_at=now):
            session.end(at=now, reason=reason)
        uow.save_and_hand_over(session)
        return SessionState.of(session)

    return uow.retrying(f"end_session() on session {session_id}", once)


def time_out_if_idle(uow: UnitOfWork, session_id: UUID | str, *, now: datetime | None) -> bool:
    """Record the timeout of one session if it is past its deadline at ``now``;
    True if this call appended the timed-out event."""

    def once() -> bool:
        session = uow.get_session(session_id)
        if not session.time_out(detected_at=uow.now(now)):
            return False
        uow.save_and_hand_over(session)
        return True

    return uow.retrying(f"time_out_if_idle() on session {session_id}", once)


def link_identity(
    uow: UnitOfWork, visitor_id: str, user_id: str, *, at: datetime | None
) -> VisitorState:
    """Link an anonymous visitor to a user; its live session records the link too."""

    def once() -> VisitorState:
        now = uow.now(at)
        visitor = uow.get_visitor(visitor_id) or Visitor.register(visitor_id, at=now, tenant=uow.tenant_id)
        if not visitor.link_identity(user_id, at=now):
            return VisitorState.of(visitor)
        session = None
        if visitor.current_session_id is not None:
            session = uow.kept_session(visitor.current_session_id)  # None: removed by retention
            if session is not None and session.status == "active" and not session.is_expired(now):
                session.link_identity(user_id, at=max(now, session.latest_event_at))
        uow.save_and_hand_over(visitor, session)
        return VisitorState.of(visitor)

    return uow.retrying(f"link_identity() for visitor {visitor_id!r}", once)


__all__ = [
    "clear_slot",
    "complete_task",
    "end_session",
    "link_identity",
    "reply",
    "session_command",
    "set_slot",
    "start_task",
    "time_out_if_idle",
]
