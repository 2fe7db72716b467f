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

import contextlib
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple
from uuid import UUID, uuid4

from chatledger.domain.erasure import ErasureReceipt
from chatledger.domain.errors import (
    ConfigurationError,
    InvalidCommandError,
    UnknownSessionError,
    UnknownSubjectError,
)
from chatledger.domain.model import DomainEvent, utc
from chatledger.domain.session import Session
from chatledger.domain.state import SessionState
from chatledger.domain.visitor import Visitor
from chatledger.infrastructure.hashchain import VerificationReport
from chatledger.infrastructure.recorders import PostgresLedgerRecorder, SQLiteLedgerRecorder
from chatledger.infrastructure.shredding import KeyRing, ShreddingMapper
from eventsourcing.utils import get_topic

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


# --------------------------------------------------------------------------- erasure

LINK_TOPIC = get_topic(Visitor.IdentityLinked)


def install_key_ring(ledger: ChatLedger) -> None:
    """Give the ledger's mapper its per-visitor keys (kept in the same database)."""
    if isinstance(ledger.mapper, ShreddingMapper) and isinstance(
        ledger.recorder, SQLiteLedgerRecorder | PostgresLedgerRecorder
    ):
        ledger.mapper.key_ring = KeyRing(ledger.recorder)


def visitors_of_user(ledger: ChatLedger, user_id: str) -> list[Visitor]:
    """Every visitor ever linked to ``user_id``, found in the log (not a read model)."""
    ids: list[UUID] = []
    position = 0
    while True:
        batch = ledger.recorder.select_notifications(
            start=position, limit=1000, topics=[LINK_TOPIC], inclusive_of_start=False
        )
        for notification in batch:
            if json.loads(notification.state)["user_id"] == user_id:
                ids.append(UUID(str(notification.originator_id)))
        if len(batch) < 1000:
            break
        position = batch[-1].id
    visitors = [ledger.repository.get(i) for i in dict.fromkeys(ids)]
    return [v for v in visitors if isinstance(v, Visitor) and v.user_id == user_id]


def count_encrypted_events(ledger: ChatLedger, aggregate_ids: Iterable[UUID], key_ids: Iterable[str]) -> int:
    markers = [f'"kid":"{kid}"'.encode() for kid in key_ids]
    if not markers:
        return 0
    return sum(
        1
        for aggregate_id in aggregate_ids
        for stored in ledger.recorder.select_events(aggregate_id)
        if any(m in stored.state for m in markers)
    )


def erase_subject(
    ledger: ChatLedger, *, user_id: str | None, visitor_id: str | None, at: datetime | None
) -> ErasureReceipt:
    if (user_id is None) == (visitor_id is None):
        raise InvalidCommandError("Erase either a user_id or a visitor_id (exactly one).")
    recorder = ledger.recorder
    if not isinstance(recorder, SQLiteLedgerRecorder | PostgresLedgerRecorder):
        raise ConfigurationError("This ledger's recorder keeps no content keys; open it with ChatLedger.open().")

    def once() -> tuple[ErasureReceipt, list[Visitor]]:
        now = ledger._now(at)  # noqa: SLF001
        if visitor_id is not None:
            visitor = ledger._get_visitor(visitor_id)  # noqa: SLF001
            if visitor is None:
                raise UnknownSubjectError("visitor", visitor_id)
            visitors = [visitor]
        else:
            assert user_id is not None
            visitors = visitors_of_user(ledger, user_id)
            if not visitors:
                raise UnknownSubjectError("user", user_id)
        session_ids = [sid for v in visitors for sid in v.session_ids]
        key_ids = recorder.key_ids_of([v.visitor_id for v in visitors])
        receipt = ErasureReceipt(
            erasure_id=uuid4(),
            subject="user" if user_id is not None else "visitor",
            user_id=user_id if user_id is not None else visitors[0].user_id,
            visitor_ids=tuple(v.visitor_id for v in visitors),
            session_ids=tuple(session_ids),
            key_ids=tuple(key_ids),
            events_affected=count_encrypted_events(ledger, session_ids, key_ids),
            erased_at=now,
        )
        for visitor in visitors:
            visitor.record_erasure(receipt)
        ledger.save(*visitors)  # the recorder destroys the keys in this same transaction
        return receipt, visitors

    what = f"erase() of {'user ' + repr(user_id) if user_id else 'visitor ' + repr(visitor_id)}"
    receipt, visitors = ledger._retrying(what, once)  # noqa: SLF001
    # Derived copies of the plaintext: this process's caches and the snapshots.
    if isinstance(ledger.mapper, ShreddingMapper) and ledger.mapper.key_ring is not None:
        ledger.mapper.key_ring.forget(receipt.visitor_ids, receipt.key_ids)
    aggregate_ids = [*receipt.session_ids, *(v.id for v in visitors)]
    cache = ledger.repository.cache
    for aggregate_id in aggregate_ids:
        if cache is not None:
            with contextlib.suppress(KeyError):
                cache.get(aggregate_id, evict=True)
    if ledger.snapshots is not None:
        table = getattr(ledger.snapshots.recorder, "events_table_name", None)
        if table:
            recorder.delete_snapshots(table, list(receipt.session_ids))
    recorder.purge_free_space()
    return receipt
