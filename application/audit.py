"""Audit queries of :class:`~chatledger.ChatLedger`: exact replay from the event log.

``history()`` and ``replay()`` read the session's stored events only (never a
snapshot, the aggregate cache or a read model), so what they show is what the
log says, event by event.

"Known at" is the time a fact entered the record on the business clock: its
``occurred_at``, except a ``TimedOut`` event, which is stamped with the
moment the session timed out but was only *noticed* at ``detected_at``. Replaying
``until=t`` keeps the events known at ``t``, so it answers "what did the
system know at t" and equals what the live API returned at ``t``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, NamedTuple
from uuid import UUID

from ..domain.actors import UNRECORDED, Cause
from ..domain.errors import (
    ChatLedgerError,
    ConfigurationError,
    InvalidCommandError,
    UnknownSessionError,
    UnknownSubjectError,
)
from ..domain.pydantic_aggregates import DomainEvent, utc
from ..domain.session import Session
from ..domain.tenancy import DEFAULT_TENANT
from ..domain.read_views import SessionState
from ..infrastructure.hashchain import VerificationReport
from ..infrastructure.key_audit import KeyAudit
from ..infrastructure.ledger_recorders import as_ledger_recorder
from ..infrastructure.persistence import PydanticMapper
from ..infrastructure.sealing import Anchor
from .erasure import visitors_of_user
from .tenant_scope import own_session
from .unit_of_work import UnitOfWork

if TYPE_CHECKING:
    from ..infrastructure.postgres import PostgresLedgerRecorder
    from ..infrastructure.sqlite import SQLiteLedgerRecorder


def chained(recorder: object) -> SQLiteLedgerRecorder | PostgresLedgerRecorder:
    """The ledger's recorder, one that keeps the hash chains."""
    ours = as_ledger_recorder(recorder)
    if ours is None:
        raise ConfigurationError("This ledger's recorder keeps no hash chain; open it with ChatLedger.open().")
    return ours


class _Step(NamedTuple):
    event: DomainEvent
    state: SessionState


class HistoryStep(_Step):
    """One stored event of a session and the session's state right after it (a pair:
    ``for event, state in ledger.history(sid)``), and who appended the event:
    ``actor`` and ``request_id`` (docs/events.md; ``"unrecorded"`` before actors were)."""

    actor: str = UNRECORDED
    request_id: str | None = None

    def caused_by(self, cause: Cause) -> HistoryStep:
        self.actor, self.request_id = cause
        return self


def known_at(event: DomainEvent) -> datetime:
    """When ``event`` entered the record (business clock)."""
    if isinstance(event, Session.TimedOut):
        return event.detected_at
    return event.occurred_at


def iter_history(
    uow: UnitOfWork,
    session_id: UUID | str,
    *,
    until: datetime | None = None,
    version: int | None = None,
) -> Iterator[HistoryStep]:
    if until is not None and version is not None:
        raise InvalidCommandError("Pass either until= or version=, not both.")
    if version is not None and version < 1:
        raise InvalidCommandError(f"version must be 1 or more, not {version}.")
    limit = utc(until) if until is not None else None
    sid = own_session(uow, session_id)
    session: Session | None = None
    seen = False
    mapper = uow.mapper
    cause_of = mapper.cause_of if isinstance(mapper, PydanticMapper) else lambda stored: Cause(UNRECORDED)
    for stored in uow.recorder.select_events(sid, lte=version):  # as events.get, with each actor
        event = mapper.to_domain_event(stored)
        seen = True
        if not isinstance(event, Session.Event):
            raise UnknownSessionError(session_id)
        if limit is not None and known_at(event) > limit:
            continue  # a TimedOut noticed after ``until`` can precede known events
        session = event.mutate(session)
        assert session is not None
        yield HistoryStep(event, SessionState.of(session)).caused_by(cause_of(stored))
    if not seen:
        raise UnknownSessionError(session_id)


def verify_log(
    uow: UnitOfWork, session_id: UUID | str | None = None, anchor: str | None = None
) -> VerificationReport:
    """Recompute the hash chains and the seals of the whole log (or one session's chain).

    ``anchor`` (``ROOT@POSITION`` from ``chatledger audit anchor``): the log up to
    that position must still hash to that root (detects truncation)."""
    recorder = chained(uow.recorder)
    parsed: Anchor | None = None
    if anchor is not None:
        if session_id is not None:
            raise InvalidCommandError("An anchor checks the whole log; pass it without a session.")
        try:
            parsed = Anchor.parse(anchor if isinstance(anchor, str) else repr(anchor))
        except ValueError as e:
            raise InvalidCommandError(str(e)) from None
    if session_id is None:
        report = _verify_whole(recorder, parsed)
        if report.tail_first is not None:
            oid, version = report.tail_first
            stored = list(recorder.select_events(oid, gt=version - 1, lte=version))
            try:
                occurred = (
                    getattr(uow.mapper.to_domain_event(stored[0]), "occurred_at", None)
                    if stored else None
                )  # every chatledger event has occurred_at; the mapper's type is the library's
            except ChatLedgerError:  # an altered event: the age stays unknown, the chain says why
                occurred = None
            if occurred is not None:
                report.tail_age_s = max(0.0, (uow.now(None) - occurred).total_seconds())
        return report
    sid = own_session(uow, session_id, any_aggregate=True)
    report = audited_verify(recorder, VerificationReport(scope=f"session {sid}"), sid)
    if report.checked == 0 and report.break_count == 0 and report.removed == 0:  # removed: by retention
        raise UnknownSessionError(session_id)
    return report


def seal(uow: UnitOfWork) -> int:
    """Seal the committed events after the last seal; how many it sealed."""
    return chained(uow.recorder).seal()


def anchor(uow: UnitOfWork) -> str | None:
    """The newest seal as ``ROOT@POSITION`` (``verify(anchor=...)`` detects any change before it)."""
    return chained(uow.recorder).newest_anchor()


def _verify_whole(recorder: SQLiteLedgerRecorder | PostgresLedgerRecorder, anchor: Anchor | None) -> VerificationReport:
    report = VerificationReport(scope="log")
    return recorder.verify(report, None, KeyAudit(report, whole_log=True), anchor)


def audited_verify(
    recorder: SQLiteLedgerRecorder | PostgresLedgerRecorder,
    report: VerificationReport,
    originator_id: UUID | None = None,
) -> VerificationReport:
    """The hash chains and the key table (see :class:`KeyAudit`), in one snapshot."""
    return recorder.verify(report, originator_id, KeyAudit(report, whole_log=originator_id is None))


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
    "stored_state": "the exact stored bytes (UTF-8 JSON; personal fields as {$enc, kid} envelopes; "
    "the actor as its first keys, $actor and $request)",
    "actor": "who appended the event (api-key:<id>, operator:<name>, worker:sweeper, ...: what the "
    "caller claimed, see docs/compliance.md); 'unrecorded' before actors were recorded",
    "request_id": "the caller's request or correlation id, if it gave one",
    "event_hash": "hex SHA-256 chaining this event to the previous one of its aggregate",
    "log_hash": "hex SHA-256 chaining this event to the previous event of the whole log (rows written "
    "before 0.3 only; empty since: the log-wide link is the seal, see chatledger audit anchor)",
}
EXPORT_HASHING = {
    "encoding": "each part is prefixed by its length as 8 bytes big-endian",
    "event_hash": "sha256('chatledger/event/v1' | prev event_hash (32 zero bytes for version 1) | "
    "originator_id as canonical UUID text | version as decimal text | topic | stored_state bytes)",
    "log_hash": "sha256('chatledger/log/v1' | prev log_hash (32 zero bytes first) | notification_id "
    "as decimal text | originator_id | version | event_hash)",
}


def export_bundle(
    uow: UnitOfWork, out: IO[str], *, user_id: str | None = None, session_id: UUID | str | None = None
) -> VerificationReport:
    """Write a self-describing JSONL bundle of a user's or a session's events."""
    if (user_id is None) == (session_id is None):
        raise InvalidCommandError("Export either a user_id or a session_id (exactly one).")
    recorder = chained(uow.recorder)
    aggregates: list[tuple[str, UUID]] = []
    if user_id is not None:
        visitors = visitors_of_user(uow, user_id)  # of this ledger's tenant
        if not visitors:
            raise UnknownSubjectError("user", user_id)
        aggregates += [("visitor", v.id) for v in visitors]
        aggregates += [("session", sid) for v in visitors for sid in v.session_ids]
        scope: dict[str, Any] = {"user_id": user_id, "visitor_ids": [v.visitor_id for v in visitors]}
    else:
        sid = own_session(uow, session_id)  # type: ignore[arg-type]
        uow.get_session(sid)
        aggregates.append(("session", sid))
        scope = {"session_id": str(sid)}
    scope["session_ids"] = [str(a) for kind, a in aggregates if kind == "session"]
    header = {
        "record": "header",
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "generated_at": uow.now(None).isoformat(),
        "scope": scope,
        "fields": EXPORT_FIELDS,
        "hashing": EXPORT_HASHING,
        "verify": "recompute event_hash per aggregate and compare; the last line has the ledger's own check",
    }
    out.write(json.dumps(header) + "\n")
    scoped_ok: dict[str, bool] = {}
    scoped_reports: list[VerificationReport] = []
    for kind, aggregate_id in aggregates:
        positions = recorder.notification_ids(aggregate_id)
        hashes = recorder.hash_rows(aggregate_id)
        for stored in recorder.select_events(aggregate_id):
            event = uow.mapper.to_domain_event(stored)
            assert isinstance(event, DomainEvent)  # every stored event is one of ours
            nid = positions.get(stored.originator_version)
            ev_hash, lg_hash = hashes.get(nid, (b"", b"")) if nid is not None else (b"", b"")
            cause = uow.mapper.cause_of(stored) if isinstance(uow.mapper, PydanticMapper) else Cause(UNRECORDED)
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
                "actor": cause.actor,
                "request_id": cause.request_id,
                "stored_state": stored.state.decode(),
                "event_hash": ev_hash.hex(),
                "log_hash": lg_hash.hex(),
            }
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
        scoped = audited_verify(recorder, VerificationReport(scope=str(aggregate_id)), aggregate_id)
        scoped_ok[str(aggregate_id)] = scoped.ok
        scoped_reports.append(scoped)
    if uow.tenant_id == DEFAULT_TENANT:
        report = audited_verify(recorder, VerificationReport(scope="log"))
    else:  # another tenant's bundle says nothing of the store's other tenants: its chains only
        report = VerificationReport(scope=f"tenant {uow.tenant_id}")
        for scoped in scoped_reports:
            report.checked += scoped.checked
            for brk in scoped.breaks:
                report.add(brk)
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


__all__ = [
    "EXPORT_FIELDS",
    "EXPORT_FORMAT",
    "EXPORT_HASHING",
    "EXPORT_VERSION",
    "HistoryStep",
    "anchor",
    "audited_verify",
    "export_bundle",
    "iter_history",
    "known_at",
    "seal",
    "verify_log",
    "visitors_of_user",  # re-exported: it moved to .erasure
]
