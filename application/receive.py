"""The receive use case: a user's message starts, continues or renews a session.

See :meth:`chatledger.ChatLedger.receive` for the contract.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from ..domain.conversation import Message, SessionContext
from ..domain.errors import ClientMessageIdConflictError
from ..domain.ids import uuid7
from ..domain.policy import AppliedPolicy
from ..domain.session import Session
from ..domain.read_views import Turn
from ..domain.visitor import Visitor
from .access import check_owner
from .arguments import to_context
from .unit_of_work import UnitOfWork


def receive(
    uow: UnitOfWork,
    visitor_id: str,
    text: str,
    *,
    session_id: UUID | str | None,
    client_message_id: str | None,
    channel: str,
    context: SessionContext | dict[str, Any] | None,
    metadata: dict[str, Any] | None,
    at: datetime | None,
) -> Turn:
    """Record a user message (one transaction, re-run if it lost a race)."""
    if context is not None and not isinstance(context, SessionContext):
        context = to_context(SessionContext, context)
    ctx = context
    before = uow.written_position()
    uow.set_written_position(0)  # to tell whether this receive writes
    try:
        received = uow.retrying(
            f"receive() for visitor {visitor_id!r}",
            lambda: receive_once(
                uow, visitor_id, text, session_id, client_message_id, channel, ctx, metadata, at
            ),
        )
    except BaseException:
        uow.set_written_position(before)  # it wrote nothing: the thread's last write stands
        raise
    written = uow.written_position()
    if received.duplicate or not written:  # nothing written now: the head covers the original write
        written = max(before, uow.log_position())
        uow.set_written_position(written)
    return Turn.of(received.session, received.message, duplicate=received.duplicate, position=written)


class Received(NamedTuple):
    """What one attempt of :func:`receive` recorded, or found recorded already
    (``duplicate``); the :class:`Turn` is made from it once its position is known."""

    session: Session
    message: Message
    duplicate: bool = False


def receive_once(
    uow: UnitOfWork,
    visitor_id: str,
    text: str,
    session_id: UUID | str | None,
    client_message_id: str | None,
    channel: str,
    context: SessionContext | None,
    metadata: dict[str, Any] | None,
    at: datetime | None,
) -> Received:
    """One attempt of :func:`receive`.

    The visitor and its sessions are read from the cache on the first attempt
    (no read of the store): every decision a stale copy could get wrong ends in
    a write to that copy, which then conflicts and re-runs this on fresh reads,
    except what is taken from a session this does not write: its client ids
    (:func:`recent_sessions`, :func:`unwritten_duplicate`) and the slots a new
    session carries over from it, read fresh. A duplicate is never answered from
    the cache (an erasure may have blanked it since): it re-runs this on fresh
    reads. See docs/architecture.md, "No read before write"."""
    visitor = uow.get_visitor(visitor_id, cached=True)
    now = uow.now(at)
    explicit: Session | None = None
    if session_id is not None:
        explicit = uow.get_session(session_id, cached=True)
        check_owner(uow, explicit, visitor_id, None)
    current = explicit
    if (
        visitor is not None
        and visitor.current_session_id is not None
        and (explicit is None or explicit.id != visitor.current_session_id)
    ):
        current = uow.kept_session(visitor.current_session_id, cached=True)  # None: removed by retention

    if client_message_id is not None:
        for candidate in recent_sessions(uow, explicit, current):
            seen = candidate.message_for(client_message_id)
            if seen is not None:
                uow.answer_from_store()  # on cached reads: decided again on fresh ones
                if seen.role != "user":
                    raise ClientMessageIdConflictError(
                        candidate.id, client_message_id, recorded_role=seen.role, role="user"
                    )
                return Received(candidate, seen, duplicate=True)

    # A live session takes the message: the one the caller named, else the visitor's.
    for live in (explicit, current):
        if live is None or live.status != "active":
            continue
        when = max(now, live.latest_event_at) if at is None else now
        if live.is_expired(when):
            live.time_out(detected_at=when)
            continue
        others = [s for s in (explicit, current) if s is not None and s is not live]
        if client_message_id is not None:
            seen_turn = unwritten_duplicate(uow, others, client_message_id)
            if seen_turn is not None:
                return seen_turn
        message = live.receive(
            text, at=when, client_message_id=client_message_id, metadata=metadata
        )
        uow.save_and_hand_over(live, *others)
        return Received(live, message)

    # No live session: open one, linked to the visitor's previous session.
    if visitor is None:
        visitor = Visitor.register(visitor_id, at=now, tenant=uow.tenant_id)
    previous = current if current is not None and current.visitor_id == visitor_id else None
    if previous is not None and not previous.pending_events and not uow.fresh_read(cached=True):
        # Not written by this receive, so a stale copy would not conflict; and an
        # erasure appends to closed sessions: its slots are carried over from the store.
        previous = uow.kept_session(previous.id)  # None: removed by log retention meanwhile
    session = Session.start(
        session_id=uuid7(now),
        visitor_id=visitor_id,
        at=now,
        policy=AppliedPolicy.of(uow.policy),
        channel=channel,
        user_id=visitor.user_id,
        context=context,
        previous=previous,
        carry_over_slots=uow.policy.carry_over_slots,
        tenant=uow.tenant_id,
    )
    message = session.receive(
        text, at=now, client_message_id=client_message_id, metadata=metadata
    )
    visitor.open_session(session.id, at=now)
    uow.save_and_hand_over(visitor, explicit, current if current is not explicit else None, session)
    return Received(session, message)


def recent_sessions(uow: UnitOfWork, *sessions: Session | None) -> Iterator[Session]:
    """Where a retried message may already sit: these sessions and their
    predecessors. A predecessor is never written by the receive that checks
    it, so it is read from the store unless its cached copy is closed: a closed
    session takes no more messages, so it gains no client id (but it is not
    final: an erasure still appends to it and blanks its texts and client ids,
    which is why a message found in a cached copy is never the answer, see
    ``UnitOfWork.answer_from_store``)."""
    seen: set[UUID] = set()
    for session in sessions:
        if session is None or session.id in seen:
            continue
        seen.add(session.id)
        yield session
        previous = session.previous_session_id
        if previous is not None and previous not in seen:
            seen.add(previous)
            found = uow.kept_session(previous, cached=True)
            if found is not None and found.status == "active":
                found = uow.kept_session(previous)
            if found is not None:  # None: removed by log retention
                yield found


def unwritten_duplicate(uow: UnitOfWork, others: list[Session], client_message_id: str) -> Received | None:
    """The turn ``client_message_id`` already has in one of ``others`` -- live
    sessions this receive read but does not write, so a stale copy of one would
    not conflict -- read from the store; None if it has none."""
    for other in others:
        if other.status != "active" or uow.fresh_read(cached=True):
            continue  # closed: no client id added since (checked already); or it was read fresh
        fresh = uow.get_session(other.id)
        seen = fresh.message_for(client_message_id)
        if seen is not None:
            if seen.role != "user":
                raise ClientMessageIdConflictError(
                    fresh.id, client_message_id, recorded_role=seen.role, role="user"
                )
            return Received(fresh, seen, duplicate=True)
    return None


__all__ = ["Received", "receive", "receive_once", "recent_sessions", "unwritten_duplicate"]
