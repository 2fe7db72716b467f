"""The sweep: time out every session past its deadline, exactly once, in batches.

``sweep(uow, now)`` is the one code path behind ``ledger.sweep()``, the
APScheduler job and ``chatledger worker``:

1. catch the active-session index up with the event log;
2. ask the index for the due rows (``active_sessions.due_rows``, one indexed
   range query) a batch at a time, oldest first; on PostgreSQL with ``FOR
   UPDATE SKIP LOCKED``, so concurrent sweepers split the work;
3. ask the domain for each row's ``Session.TimedOut`` event
   (``Session.timed_out_event``: stamped with the moment the session went idle,
   at the row's version + 1) and append the whole batch in one transaction;
4. if any session in the batch moved on since the index saw it, the store
   rejects the batch (optimistic concurrency: that version is taken); it is
   split in halves and retried, and the few sessions left are retried one at a
   time through ``session_commands.time_out_if_idle``, which reloads the aggregate and
   lets the domain decide;
5. let the index drop the rows of sessions that are now closed
   (``active_sessions.drop_closed``), including ones closed by someone else
   (the lazy path, another sweeper) that it had not seen yet.

A timed-out event is only ever appended at a version that must still be free,
so however many sweepers and lazy checks race, each session gets one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import RecordConflictError

from ..domain.actors import SWEEPER, acting_as
from ..domain.errors import InvalidCommandError, UnknownSessionError
from ..domain.session import Session
from ..projections.active_session_queries import (
    drop_closed,
    due_count,
    due_rows,
    first_due,
    open_tasks_of,
)
from ..projections.active_sessions import ActiveSessions
from ..projections.gc_pause import gc_paused
from .session_commands import time_out_if_idle
from .tenancy import tenant_handle
from .unit_of_work import UnitOfWork

logger = logging.getLogger("chatledger.sweeper")

DEFAULT_BATCH_SIZE = 5000
SPLIT_BELOW = 8  # a rejected batch this small is retried session by session


@dataclass(frozen=True)
class SweepReport:
    """What one sweep did."""

    timed_out: int
    """Timed-out events this sweep appended."""
    dropped: int
    """Index rows dropped for sessions someone else had already closed."""
    conflicts: int
    """Batches (or halves of batches) the store rejected because a session had moved on."""
    duration_s: float


def check_now(now: datetime | None) -> None:
    if now is not None and (now.tzinfo is None or now.utcoffset() is None):
        raise InvalidCommandError(
            f"now={now!r} has no timezone; pass an aware datetime such as "
            "datetime.now(timezone.utc)."
        )


def timed_out_event(row: Any, detected_at: datetime) -> Session.TimedOut:
    """The event the domain gives for the session a due index row describes."""
    event: Session.TimedOut = Session.timed_out_event(
        row.session_id,
        row.version,
        deadline=row.expires_at,
        reason=row.expiry_reason,
        idle_since=row.last_activity_at,
        detected_at=detected_at,
        open_tasks=open_tasks_of(row),
        tenant=row.tenant,
    )
    return event


def backlog(uow: UnitOfWork, now: datetime | None = None, *, tenant: str | None = None) -> int:
    """Sessions of ``tenant`` (None: of all) past their deadline at ``now`` not yet timed out, as
    the live-session index has them (no catch-up: it may be behind by its lag)."""
    check_now(now)
    with uow.projector.engine.connect() as conn:
        return due_count(conn, uow.now(now), tenant)


def sweep(
    uow: UnitOfWork,
    now: datetime | None = None,
    *,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    tenant: str | None = None,
) -> SweepReport:
    """Time out the due sessions of ``tenant`` (None: of every tenant)."""
    check_now(now)
    if limit is not None and limit < 1:
        raise InvalidCommandError(f"limit={limit} must be a positive number of sessions, or None.")
    if batch_size < 1:
        raise InvalidCommandError(f"batch_size={batch_size} must be at least 1.")
    with acting_as(SWEEPER):  # the time-outs are the sweeper's (a caller's request id is kept)
        return _sweep(uow, now, limit, batch_size, tenant)


def _sweep(uow: UnitOfWork, now: datetime | None, limit: int | None, batch_size: int, tenant: str | None) -> SweepReport:
    started = time.perf_counter()
    detected_at = uow.now(now)
    projector = uow.projector
    projector.catch_up([ActiveSessions.name])
    engine = projector.engine
    locking = engine.dialect.name == "postgresql"

    timed_out = dropped = conflicts = 0
    after: tuple[datetime, UUID] | None = None
    # The idle case first, as a one-row probe: a LIMIT 1 on the index, whatever
    # the planner's statistics say about the batch query.
    with engine.connect() as conn:
        due = first_due(conn, detected_at, tenant)
    while due is not None and (limit is None or timed_out < limit):
        size = batch_size if limit is None else min(batch_size, limit - timed_out)
        if locking:
            # Rows stay locked until the batch's events are stored and the rows
            # dropped; other sweepers skip them and take the next ones.
            with engine.begin() as conn:
                with gc_paused():
                    rows = due_rows(conn, detected_at, after=after, limit=size, lock=True, tenant=tenant)
                if not rows:
                    break
                batch = time_out_batch(uow, rows, detected_at)
                with gc_paused():
                    drop_closed(conn, batch.closed)
        else:
            # SQLite: one writer at a time anyway; never hold a read snapshot
            # across the event store's write (it would go stale).
            with engine.connect() as conn, gc_paused():
                rows = due_rows(conn, detected_at, after=after, limit=size, tenant=tenant)
            if not rows:
                break
            batch = time_out_batch(uow, rows, detected_at)
            with engine.begin() as conn, gc_paused():
                drop_closed(conn, batch.closed)
        timed_out += batch.appended
        dropped += len(batch.closed) - batch.appended
        conflicts += batch.conflict
        after = (rows[-1].expires_at, rows[-1].session_id)

    report = SweepReport(timed_out, dropped, conflicts, time.perf_counter() - started)
    uow.counters.add("sweeps")
    uow.counters.add("sweep_seconds", report.duration_s)
    uow.counters.add("sweep_timed_out", report.timed_out)
    uow.counters.add("conflicts", report.conflicts)
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
class TimedOutBatch:
    """What :func:`time_out_batch` did with one batch of due rows."""

    appended: int
    closed: list[UUID]
    conflict: int


def time_out_batch(uow: UnitOfWork, rows: Sequence[Any], detected_at: datetime) -> TimedOutBatch:
    """Time out the sessions the due ``rows`` describe: exact rows in one append
    (split on conflict), the rest one by one through the loaded aggregate."""
    exact = [row for row in rows if row.exact]
    with gc_paused():  # not around _one_by_one: it may back off and sleep
        appended, rejected, conflicts = _append(uow, exact, detected_at)
    retry = rejected + [row for row in rows if not row.exact]
    one_by_one, closed = _one_by_one(uow, retry, detected_at)
    return TimedOutBatch(len(appended) + one_by_one, appended + closed, conflicts)


def _append(
    uow: UnitOfWork, rows: Sequence[Any], detected_at: datetime
) -> tuple[list[UUID], list[Any], int]:
    """Append the rows' timed-out events in one transaction.

    Returns (appended ids, rows to retry one by one, conflicts met). A batch
    the store rejects is split in halves and retried, so one session that moved
    on costs a few small transactions, not a thousand single ones.
    """
    if not rows:
        return [], [], 0
    try:
        # EventStore.put (the store path of Application.save(*events)) minus
        # the per-object protocol checks and the Recording objects it returns,
        # which nothing here reads: map each event, insert the batch.
        store = uow.events
        to_stored = store.mapper.to_stored_event
        store.recorder.insert_events([to_stored(timed_out_event(row, detected_at)) for row in rows])
        uow.counters.add("events_appended", len(rows))
    except RecordConflictError:
        if len(rows) <= SPLIT_BELOW:
            return [], list(rows), 1
        middle = len(rows) // 2
        left = _append(uow, rows[:middle], detected_at)
        right = _append(uow, rows[middle:], detected_at)
        return left[0] + right[0], left[1] + right[1], 1 + left[2] + right[2]
    return [row.session_id for row in rows], [], 0


def _one_by_one(
    uow: UnitOfWork, rows: Sequence[Any], detected_at: datetime
) -> tuple[int, list[UUID]]:
    """The per-session path: reload each aggregate (through its tenant's handle)
    and let the domain decide."""
    appended = 0
    closed: list[UUID] = []
    for row in rows:
        sid = row.session_id
        owner = uow if row.tenant == uow.tenant_id else tenant_handle(uow, row.tenant)
        try:
            if time_out_if_idle(owner, sid, now=detected_at):
                appended += 1
                closed.append(sid)
            elif owner.get_session(sid).status != "active":
                closed.append(sid)  # closed by someone else; the index lagged
        except UnknownSessionError:
            closed.append(sid)
    return appended, closed


def utcnow() -> datetime:
    return datetime.now(UTC)
