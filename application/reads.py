"""Point-in-time reads from the event log: a session now or as it stood, its
events, the visitor. A session idle past its deadline reads as timed out even
before the timed-out event is recorded, so every reader agrees on when it ended."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from ..domain.errors import InvalidCommandError, UnknownSessionError
from ..domain.pydantic_aggregates import DomainEvent, utc
from ..domain.policy import is_past_deadline
from ..domain.session import Session
from ..domain.read_views import SessionState, VisitorState
from ..projections.query_results import Transcript
from .access import caller_user, check_owner
from .audit import iter_history
from .tenant_scope import own_session
from .unit_of_work import UnitOfWork


def session(
    uow: UnitOfWork,
    session_id: UUID | str,
    *,
    as_of: datetime | None,
    visitor_id: str | None,
    user_id: str | None,
) -> SessionState:
    """The session now or at ``as_of``, on behalf of ``visitor_id``/``user_id`` if given."""
    view_at = uow.now(None) if as_of is None else utc(as_of)
    found: Session | None = None
    if visitor_id is not None or user_id is not None:
        found = uow.get_session(session_id)
        # Ownership is decided on the session as it is now (a later login makes
        # an anonymous session its user's), and before anything is said about
        # the session's past, so a stranger learns nothing, not even its start.
        check_owner(uow, found, visitor_id, user_id)
    if as_of is not None:
        found = session_as_of(uow, session_id, view_at)
    elif found is None:
        found = uow.get_session(session_id)
    return effective(SessionState.of(found), view_at)


def session_as_of(uow: UnitOfWork, session_id: UUID | str, as_of: datetime) -> Session:
    """The session rebuilt from the events that had occurred by ``as_of``."""
    sid = own_session(uow, session_id)
    found: Session | None = None
    for event in uow.events.get(sid):
        assert isinstance(event, DomainEvent)
        if event.occurred_at > as_of:
            break
        found = event.mutate(found)  # type: ignore[attr-defined]
    if found is None:
        if exists(uow, sid):
            raise InvalidCommandError(
                f"Session {session_id} had not started by {as_of.isoformat()}."
            )
        raise UnknownSessionError(session_id)
    return found


def exists(uow: UnitOfWork, aggregate_id: UUID) -> bool:
    """Whether the store holds any event of ``aggregate_id``."""
    return bool(list(uow.events.get(aggregate_id, limit=1)))


def session_events(uow: UnitOfWork, session_id: UUID | str) -> list[DomainEvent]:
    """Every stored event of a session, in order."""
    sid = own_session(uow, session_id)
    events = [e for e in uow.events.get(sid) if isinstance(e, DomainEvent)]
    if not events or not isinstance(events[0], Session.Started):
        raise UnknownSessionError(session_id)  # a visitor's stream is no session
    return events


def replay(uow: UnitOfWork, session_id: UUID | str, *, until: datetime) -> SessionState:
    """The session exactly as the live API showed it at ``until``, from the log."""
    at = utc(until)
    steps = list(iter_history(uow, session_id, until=at))
    if not steps:
        raise InvalidCommandError(f"Session {session_id} had not started by {at.isoformat()}.")
    return effective(steps[-1].state, at)


def visitor(uow: UnitOfWork, visitor_id: str) -> VisitorState | None:
    """The visitor's identity link and sessions, or None if never seen."""
    found = uow.get_visitor(visitor_id)
    return VisitorState.of(found) if found else None


def current_session(uow: UnitOfWork, visitor_id: str) -> SessionState | None:
    """The visitor's live session, or None if they have none right now."""
    found = uow.get_visitor(visitor_id)
    if found is None or found.current_session_id is None:
        return None
    if uow.kept_session(found.current_session_id) is None:
        return None  # log retention removed it
    state = session(uow, found.current_session_id, as_of=None, visitor_id=None, user_id=None)
    return state if state.status == "active" else None


def effective(state: SessionState, at: datetime) -> SessionState:
    """The state as a reader at ``at`` sees it: past its deadline reads as timed out."""
    if (
        state.status != "active"
        or state.expires_at is None
        or not is_past_deadline(state.expires_at, at)
    ):
        return state
    reason = "idle"
    if state.expires_at < state.last_activity_at + state.idle_timeout:
        reason = "max_length"
    return state.model_copy(
        update={
            "status": "timed_out",
            "closed_at": state.expires_at,
            "close_reason": reason,
            "expires_at": None,
        }
    )


def transcript(
    uow: UnitOfWork,
    session_id: UUID | str | None,
    *,
    user_id: str | None,
    visitor_id: str | None,
    start: datetime | None,
    end: datetime | None,
) -> Transcript:
    """The conversation log's messages of a session, a user, a visitor and/or ``[start, end)``;
    a visitor named with a user must be linked to them, a session must be theirs."""
    if visitor_id is not None and user_id is not None:
        caller_user(uow, visitor_id, user_id)
    return uow.projection_reads.transcript(
        session_id, user_id=user_id, visitor_id=visitor_id, start=start, end=end
    )


__all__ = [
    "current_session", "effective", "exists", "replay", "session", "session_as_of",
    "session_events", "transcript", "visitor",
]
