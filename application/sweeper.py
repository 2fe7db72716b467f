"""The sweep: time out every session past its deadline, exactly once, in batches.

``sweep(ledger, now)`` is the one code path behind ``ledger.sweep()``, the
APScheduler job and ``chatledger worker``:

1. catch the active-session index up with the event log;
2. take the due rows (``expires_at < now``, one indexed range query) a batch at
   a time, oldest first; on PostgreSQL with ``FOR UPDATE SKIP LOCKED``, so
   concurrent sweepers split the work instead of fighting over it;
3. build each row's ``Session.TimedOut`` event (stamped with the moment the
   session went idle) at the row's version + 1 and append the whole batch in
   one ``save(*events)`` call, one transaction;
4. if any session in the batch moved on since the index saw it, the store
   rejects the batch (optimistic concurrency: that version is taken) and it is
   retried one session at a time through ``ledger.expire_if_idle``, which
   reloads the aggregate and lets the domain decide;
5. drop the rows of sessions that are now closed, including ones closed by
   someone else (the lazy path, another sweeper) that the index had not seen.

A timed-out event is only ever appended at a version that must still be free,
so however many sweepers and lazy checks race, each session gets one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.persistence import RecordConflictError
from sqlalchemy import bindparam, select, tuple_

from chatledger.domain.errors import InvalidCommandError, UnknownSessionError
from chatledger.domain.session import Session
from chatledger.projections.active_sessions import ActiveSessions, active_sessions

if TYPE_CHECKING:
    from .ledger import ChatLedger

logger = logging.getLogger("chatledger.sweeper")

DEFAULT_BATCH_SIZE = 500


@dataclass(frozen=True)
class SweepReport:
    """What one sweep did."""

    timed_out: int
    """Timed-out events this sweep appended."""
    dropped: int
    """Index rows dropped for sessions someone else had already closed."""
    conflicts: int
    """Batches the store rejected and that were retried one session at a time."""
    duration_s: float


def check_now(now: datetime | None) -> None:
    if now is not None and (now.tzinfo is None or now.utcoffset() is None):
        raise InvalidCommandError(
            f"now={now!r} has no timezone; pass an aware datetime such as "
            "datetime.now(timezone.utc)."
        )


def timed_out_event(row: Any, detected_at: datetime) -> Session.TimedOut:
    """The event ``Session.time_out`` would trigger on the session the row describes."""
    return Session.TimedOut(
        originator_id=row.session_id,
        originator_version=row.version + 1,
        timestamp=Session.TimedOut.create_timestamp(),
        occurred_at=row.expires_at,
        reason=row.expiry_reason,
        idle_since=row.last_activity_at,
        detected_at=detected_at,
        open_tasks=tuple(_json_list(row.open_tasks)),
    )


def sweep(
    ledger: ChatLedger,
    now: datetime | None = None,
    *,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> SweepReport:
    check_now(now)
    if limit is not None and limit < 1:
        raise InvalidCommandError(f"limit={limit} must be a positive number of sessions, or None.")
    if batch_size < 1:
        raise InvalidCommandError(f"batch_size={batch_size} must be at least 1.")
    started = time.perf_counter()
    detected_at = ledger._now(now)
    projector = ledger.projector
    projector.catch_up([ActiveSessions.name])
    engine = projector.engine
    locking = engine.dialect.name == "postgresql"

    timed_out = dropped = conflicts = 0
    after: tuple[datetime, UUID] | None = None
    c = active_sessions.c
    while limit is None or timed_out < limit:
        size = batch_size if limit is None else min(batch_size, limit - timed_out)
        query = (
            select(active_sessions)
            .where(c.expires_at < detected_at)
            .order_by(c.expires_at, c.session_id)
            .limit(size)
        )
        if after is not None:
            query = query.where(tuple_(c.expires_at, c.session_id) > after)
        if locking:
            # Rows stay locked until the batch's events are stored and the rows
            # dropped; other sweepers skip them and take the next ones.
            with engine.begin() as conn:
                rows = conn.execute(query.with_for_update(skip_locked=True)).all()
                if not rows:
                    break
                batch = _expire_batch(ledger, rows, detected_at)
                _drop_rows(conn, batch.closed)
        else:
            # SQLite: one writer at a time anyway; never hold a read snapshot
            # across the event store's write (it would go stale).
            with engine.connect() as conn:
                rows = conn.execute(query).all()
            if not rows:
                break
            batch = _expire_batch(ledger, rows, detected_at)
            with engine.begin() as conn:
                _drop_rows(conn, batch.closed)
        timed_out += batch.appended
        dropped += len(batch.closed) - batch.appended
        conflicts += batch.conflict
        after = (rows[-1].expires_at, rows[-1].session_id)

    report = SweepReport(timed_out, dropped, conflicts, time.perf_counter() - started)
    logger.info(
        "sweep at %s: timed out %d sessions, dropped %d stale index rows, "
        "%d conflicting batches retried, in %.1f ms",
        detected_at.isoformat(),
        report.timed_out,
        report.dropped,
        report.conflicts,
        report.duration_s * 1000,
    )
    return report


@dataclass
class _Batch:
    appended: int
    closed: list[UUID]
    conflict: int


def _expire_batch(ledger: ChatLedger, rows: Sequence[Any], detected_at: datetime) -> _Batch:
    exact = [row for row in rows if row.exact]
    if exact:
        try:
            ledger.save(*(timed_out_event(row, detected_at) for row in exact))
        except RecordConflictError:
            pass  # someone else wrote to one of them: decide one by one below
        else:
            closed = [row.session_id for row in exact]
            inexact = [row for row in rows if not row.exact]
            appended, also_closed = _one_by_one(ledger, inexact, detected_at)
            return _Batch(len(exact) + appended, closed + also_closed, 0)
    appended, closed = _one_by_one(ledger, rows, detected_at)
    return _Batch(appended, closed, 1 if exact else 0)


def _one_by_one(
    ledger: ChatLedger, rows: Sequence[Any], detected_at: datetime
) -> tuple[int, list[UUID]]:
    """The per-session path: reload each aggregate and let the domain decide."""
    appended = 0
    closed: list[UUID] = []
    for row in rows:
        sid = row.session_id
        try:
            if ledger.expire_if_idle(sid, now=detected_at):
                appended += 1
                closed.append(sid)
            elif ledger._get_session(sid).status != "active":
                closed.append(sid)  # closed by someone else; the index lagged
        except UnknownSessionError:
            closed.append(sid)
    return appended, closed


def _drop_rows(conn: Any, session_ids: Sequence[UUID]) -> None:
    if session_ids:
        conn.execute(
            active_sessions.delete().where(
                active_sessions.c.session_id == bindparam("b_session_id")
            ),
            [{"b_session_id": sid} for sid in session_ids],
        )


def _json_list(value: str) -> list[str]:
    import json

    return list(json.loads(value))


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
