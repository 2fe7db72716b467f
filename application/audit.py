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
from typing import IO, TYPE_CHECKING, Any, NamedTuple
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
from chatledger.infrastructure.shredding import KeyAudit, KeyRing, ShreddingMapper
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
        return audited_verify(recorder, VerificationReport(scope="log"))
    sid = _as_uuid(session_id)
    report = audited_verify(recorder, VerificationReport(scope=f"session {sid}"), sid)
    if report.checked == 0 and report.break_count == 0:
        raise UnknownSessionError(session_id)
    return report


def audited_verify(
    recorder: SQLiteLedgerRecorder | PostgresLedgerRecorder,
    report: VerificationReport,
    originator_id: UUID | None = None,
) -> VerificationReport:
    """The hash chains and the key table (see :class:`KeyAudit`), in one snapshot."""
    return recorder.verify(report, originator_id, KeyAudit(report, whole_log=originator_id is None))


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
            # Decoded by the mapper, so an IdentityLinked of any version is upcast.
            if ledger.mapper.to_domain_event(notification).user_id == user_id:
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
        now = ledger._now(at)
        if visitor_id is not None:
            visitor = ledger._get_visitor(visitor_id)
            if visitor is None:
                raise UnknownSubjectError("visitor", visitor_id)
            visitors = [visitor]
        else:
            assert user_id is not None
            visitors = visitors_of_user(ledger, user_id)
            if not visitors:
                raise UnknownSubjectError("user", user_id)
        session_ids = [sid for v in visitors for sid in v.session_ids]
        sessions = [ledger._get_session(sid) for sid in session_ids]
        # Keys are read after the aggregates: a write that creates a key and
        # commits later appended to one of them, so this erasure conflicts and
        # is retried, and the receipt names every key it destroys.
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
        for session in sessions:
            session.erase_content(receipt.erasure_id, at=now)
        # One transaction: the erasure record, every session's ContentErased (so
        # cached copies in other processes blank themselves when they catch up,
        # and a writer holding a stale copy conflicts), and the key destruction.
        ledger.save(*visitors, *sessions)
        return receipt, visitors

    what = f"erase() of {'user ' + repr(user_id) if user_id else 'visitor ' + repr(visitor_id)}"
    receipt, visitors = ledger._retrying(what, once)
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
    if ledger.read_models:
        # Read models copy personal fields; they blank them on Visitor.DataErased.
        ledger.projector.catch_up()
        # A shadow rebuild left unfinished holds copies no catch-up reaches: dropped.
        ledger.projector.cancel_shadows()
    recorder.purge_free_space()
    return receipt


# --------------------------------------------------------------------------- export

EXPORT_FORMAT = "chatledger-audit-export"
EXPORT_VERSION = 1
EXPORT_FIELDS = {
    "record": "header | event | verification",
    "aggregate": "session or visitor",
    "originator_id": "the aggregate's id (UUID)",
    "originator_version": "position of the event in its aggregate (1, 2, ...)",
    "notification_id": "position of the event in the whole log",
    "topic": "the event class (module:Class)",
    "type": "the event class name",
    "occurred_at": "business time of the fact (UTC)",
    "event": "the event decoded: personal fields decrypted, or erased markers if the key was destroyed",
    "stored_state": "the exact stored bytes (UTF-8 JSON; personal fields as {$enc, kid} envelopes)",
    "event_hash": "hex SHA-256 chaining this event to the previous one of its aggregate",
    "log_hash": "hex SHA-256 chaining this event to the previous event of the whole log",
}
EXPORT_HASHING = {
    "encoding": "each part is prefixed by its length as 8 bytes big-endian",
    "event_hash": "sha256('chatledger/event/v1' | prev event_hash (32 zero bytes for version 1) | "
    "originator_id as canonical UUID text | version as decimal text | topic | stored_state bytes)",
    "log_hash": "sha256('chatledger/log/v1' | prev log_hash (32 zero bytes first) | notification_id "
    "as decimal text | originator_id | version | event_hash)",
}


def export_bundle(
    ledger: ChatLedger, out: IO[str], *, user_id: str | None = None, session_id: UUID | str | None = None
) -> VerificationReport:
    """Write a self-describing JSONL bundle of a user's or a session's events."""
    from .ledger import _as_uuid

    if (user_id is None) == (session_id is None):
        raise InvalidCommandError("Export either a user_id or a session_id (exactly one).")
    recorder = ledger.recorder
    if not isinstance(recorder, SQLiteLedgerRecorder | PostgresLedgerRecorder):
        raise ConfigurationError("This ledger's recorder keeps no hash chain; open it with ChatLedger.open().")
    aggregates: list[tuple[str, UUID]] = []
    if user_id is not None:
        visitors = visitors_of_user(ledger, user_id)
        if not visitors:
            raise UnknownSubjectError("user", user_id)
        aggregates += [("visitor", v.id) for v in visitors]
        aggregates += [("session", sid) for v in visitors for sid in v.session_ids]
        scope: dict[str, Any] = {"user_id": user_id, "visitor_ids": [v.visitor_id for v in visitors]}
    else:
        sid = _as_uuid(session_id)  # type: ignore[arg-type]
        ledger._get_session(sid)
        aggregates.append(("session", sid))
        scope = {"session_id": str(sid)}
    scope["session_ids"] = [str(a) for kind, a in aggregates if kind == "session"]
    header = {
        "record": "header",
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "generated_at": ledger._now(None).isoformat(),
        "scope": scope,
        "fields": EXPORT_FIELDS,
        "hashing": EXPORT_HASHING,
        "verify": "recompute event_hash per aggregate and compare; the last line has the ledger's own check",
    }
    out.write(json.dumps(header) + "\n")
    scoped_ok: dict[str, bool] = {}
    for kind, aggregate_id in aggregates:
        positions = recorder.notification_ids(aggregate_id)
        hashes = recorder.hash_rows(aggregate_id)
        for stored in recorder.select_events(aggregate_id):
            event = ledger.mapper.to_domain_event(stored)
            nid = positions.get(stored.originator_version)
            ev_hash, lg_hash = hashes.get(nid, (b"", b"")) if nid is not None else (b"", b"")
            line = {
                "record": "event",
                "aggregate": kind,
                "originator_id": str(aggregate_id),
                "originator_version": stored.originator_version,
                "notification_id": nid,
                "topic": stored.topic,
                "type": type(event).__name__,
                "occurred_at": event.occurred_at.isoformat() if event.occurred_at else None,
                "event": event.model_dump(mode="json"),
                "stored_state": stored.state.decode(),
                "event_hash": ev_hash.hex(),
                "log_hash": lg_hash.hex(),
            }
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
        scoped_ok[str(aggregate_id)] = audited_verify(
            recorder, VerificationReport(scope=str(aggregate_id)), aggregate_id
        ).ok
    report = audited_verify(recorder, VerificationReport(scope="log"))
    out.write(
        json.dumps(
            {
                "record": "verification",
                "ok": report.ok and all(scoped_ok.values()),
                "aggregates": scoped_ok,
                "log": report.as_dict(),
            }
        )
        + "\n"
    )
    return report
