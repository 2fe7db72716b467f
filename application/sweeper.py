"""The sweep: time out every session past its deadline, exactly once, in batches.

``sweep(uow, now)`` is the one code path behind ``ledger.sweep()``, the
APScheduler job and ``chatledger worker``:

1. catch the active-session index up with the event log;
2. take the due rows (``expires_at < now``, one indexed range query) a batch at
   a time, oldest first; on PostgreSQL with ``FOR UPDATE SKIP LOCKED``, so
   concurrent sweepers split the work instead of fighting over it;
3. build each row's ``Session.TimedOut`` event (stamped with the moment the
   session went idle) at the row's version + 1 and append the whole batch in
   one ``save(*events)`` call, one transaction;
4. if any session in the batch moved on since the index saw it, the store
   rejects the batch (optimistic concurrency: that version is taken); it is
   split in halves and retried, and the few sessions left are retried one at a
   time through ``session_commands.expire_if_idle``, which reloads the aggregate and
   lets the domain decide;
5. drop the rows of sessions that are now closed, including ones closed by
   someone else (the lazy path, another sweeper) that the index had not seen.

A timed-out event is only ever appended at a version that must still be free,
so however many sweepers and lazy checks race, each session gets one.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import RecordConflictError
from sqlalchemy import select, tuple_

from ..domain.errors import InvalidCommandError, UnknownSessionError
from ..domain.session import Session
from ..projections.active_sessions import ActiveSessions, active_sessions
from .session_commands import expire_if_idle
from .unit_of_work import UnitOfWork

logger = logging.getLogger("chatledger.sweeper")

DEFAULT_BATCH_SIZE = 5000
SPLIT_BELOW = 8  # a rejected batch this small is retried session by session


_COLUMNS = [
    active_sessions.c[name]
    for name in (
        "session_id",
        "version",
        "expires_at",
        "expiry_reason",
        "last_activity_at",
        "open_tasks",
        "exact",
    )
]


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
    """The event ``Session.time_out`` would trigger on the session the row describes."""
    return Session.TimedOut(
        originator_id=row.session_id,
        originator_version=row.version + 1,
        timestamp=Session.TimedOut.create_timestamp(),
        occurred_at=row.expires_at,
        reason=row.expiry_reason,
        idle_since=row.last_activity_at,
        detected_at=detected_at,
        open_tasks=() if row.open_tasks == "[]" else tuple(_json_list(row.open_tasks)),
    )


def sweep(
    uow: UnitOfWork,
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
    detected_at = uow.now(now)
    projector = uow.projector
    projector.catch_up([ActiveSessions.name])
    engine = projector.engine
    locking = engine.dialect.name == "postgresql"

    timed_out = dropped = conflicts = 0
    after: tuple[datetime, UUID] | None = None
    c = active_sessions.c
    # The idle case first, as a one-row probe: a LIMIT 1 on the index, whatever
    # the planner's statistics say about the batch query.
    with engine.connect() as conn:
        due = conn.execute(
            select(c.expires_at).where(c.expires_at < detected_at).order_by(c.expires_at).limit(1)
        ).first()
    while due is not None and (limit is None or timed_out < limit):
        size = batch_size if limit is None else min(batch_size, limit - timed_out)
        query = (
            select(*_COLUMNS)
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
                with gc_paused():
                    rows = conn.execute(query.with_for_update(skip_locked=True)).all()
                if not rows:
                    break
                batch = _expire_batch(uow, rows, detected_at)
                with gc_paused():
                    _drop_rows(conn, batch.closed)
        else:
            # SQLite: one writer at a time anyway; never hold a read snapshot
            # across the event store's write (it would go stale).
            with engine.connect() as conn, gc_paused():
                rows = conn.execute(query).all()
            if not rows:
                break
            batch = _expire_batch(uow, rows, detected_at)
            with engine.begin() as conn, gc_paused():
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


def _expire_batch(uow: UnitOfWork, rows: Sequence[Any], detected_at: datetime) -> _Batch:
    exact = [row for row in rows if row.exact]
    with gc_paused():  # not around _one_by_one: it may back off and sleep
        appended, rejected, conflicts = _append(uow, exact, detected_at)
    retry = rejected + [row for row in rows if not row.exact]
    one_by_one, closed = _one_by_one(uow, retry, detected_at)
    return _Batch(len(appended) + one_by_one, appended + closed, conflicts)


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
    except RecordConflictError:
        if len(rows) <= SPLIT_BELOW:
            return [], list(rows), 1
        middle = len(rows) // 2
        left = _append(uow, rows[:middle], detected_at)
        right = _append(uow, rows[middle:], detected_at)
        return left[0] + right[0], left[1] + right[1], 1 + left[2] + right[2]
    return [row.session_id for row in rows], [], 0


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off Python's cyclic garbage collector while one batch is built and stored.

    A batch allocates tens of thousands of container objects (rows, events,
    stored events, parameter tuples) that all live until its transaction ends,
    so the collector keeps scanning and promoting them: 16 full and 178
    middle-generation collections in a 200,000-session sweep, about a tenth of
    its CPU time (docs/benchmarks.md). The batch's data are freed by reference
    counting when it ends, and any cycle made meanwhile is collected when
    collection resumes (a fraction of a second later). Nested and concurrent
    pauses are counted; a collector the application turned off stays off.
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def _one_by_one(
    uow: UnitOfWork, rows: Sequence[Any], detected_at: datetime
) -> tuple[int, list[UUID]]:
    """The per-session path: reload each aggregate and let the domain decide."""
    appended = 0
    closed: list[UUID] = []
    for row in rows:
        sid = row.session_id
        try:
            if expire_if_idle(uow, sid, now=detected_at):
                appended += 1
                closed.append(sid)
            elif uow.get_session(sid).status != "active":
                closed.append(sid)  # closed by someone else; the index lagged
        except UnknownSessionError:
            closed.append(sid)
    return appended, closed


def _drop_rows(conn: Any, session_ids: Sequence[UUID]) -> None:
    for start in range(0, len(session_ids), 500):
        chunk = session_ids[start : start + 500]
        conn.execute(active_sessions.delete().where(active_sessions.c.session_id.in_(chunk)))


def _json_list(value: str) -> list[str]:
    return list(json.loads(value))


def utcnow() -> datetime:
    return datetime.now(UTC)
