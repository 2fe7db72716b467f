"""Audit queries of :class:`~chatledger.ChatLedger`: exact replay from the event log.

``history()`` and ``replay()`` read the session's stored events only (never a
snapshot, the aggregate cache or a read model), so what they show is what the
log says, event by event.

"Known at" is the time a fact entered the record on the business clock: its
``occurred_at``, except a ``TimedOut`` event, which is stamped with the
moment the session expired but was only *noticed* at ``detected_at``. Replaying
``until=t`` keeps the events known at ``t``, so it answers "what did the
system know at t" and equals what the live API returned at ``t``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple
from uuid import UUID

from chatledger.domain.errors import ConfigurationError, InvalidCommandError, UnknownSessionError
from chatledger.domain.model import DomainEvent, utc
from chatledger.domain.session import Session
from chatledger.domain.state import SessionState
from chatledger.infrastructure.hashchain import VerificationReport
from chatledger.infrastructure.recorders import PostgresLedgerRecorder, SQLiteLedgerRecorder

if TYPE_CHECKING:
    from .ledger import ChatLedger


class HistoryStep(NamedTuple):
    """One stored event of a session and the session's state right after it."""

    event: DomainEvent
    state: SessionState


def known_at(event: DomainEvent) -> datetime:
    """When ``event`` entered the record (business clock)."""
    if isinstance(event, Session.TimedOut):
        return event.detected_at
    return event.occurred_at


def iter_history(
    ledger: ChatLedger,
    session_id: UUID | str,
    *,
    until: datetime | None = None,
    version: int | None = None,
) -> Iterator[HistoryStep]:
    from .ledger import _as_uuid

    if until is not None and version is not None:
        raise InvalidCommandError("Pass either until= or version=, not both.")
    if version is not None and version < 1:
        raise InvalidCommandError(f"version must be 1 or more, not {version}.")
    limit = utc(until) if until is not None else None
    sid = _as_uuid(session_id)
    session: Session | None = None
    seen = False
    for event in ledger.events.get(sid, lte=version):
        seen = True
        if not isinstance(event, Session.Event):
            raise UnknownSessionError(session_id)
        if limit is not None and known_at(event) > limit:
            continue  # a TimedOut noticed after ``until`` can precede known events
        session = event.mutate(session)  # type: ignore[arg-type]
        assert session is not None
        yield HistoryStep(event, SessionState.of(session))
    if not seen:
        raise UnknownSessionError(session_id)


def verify_log(ledger: ChatLedger, session_id: UUID | str | None = None) -> VerificationReport:
    """Recompute the hash chains of the whole log (or of one session)."""
    from .ledger import _as_uuid

    recorder = ledger.recorder
    if not isinstance(recorder, SQLiteLedgerRecorder | PostgresLedgerRecorder):
        raise ConfigurationError("This ledger's recorder keeps no hash chain; open it with ChatLedger.open().")
    if session_id is None:
        return recorder.verify(VerificationReport(scope="log"))
    sid = _as_uuid(session_id)
    report = recorder.verify(VerificationReport(scope=f"session {sid}"), sid)
    if report.checked == 0 and report.break_count == 0:
        raise UnknownSessionError(session_id)
    return report
