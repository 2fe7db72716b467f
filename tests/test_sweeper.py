"""The sweeper (issue 3): idle sessions time out on time, exactly once, on SQLite and PostgreSQL.

Every test drives time with a ManualClock or an explicit ``now``; nothing sleeps.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from chatledger import (
    ChatLedger,
    InvalidCommandError,
    ManualClock,
    SessionPolicy,
)
from chatledger.application.sweeper import time_out_batch
from chatledger.domain.policy import AppliedPolicy
from chatledger.domain.session import Session
from chatledger.projections.active_sessions import active_sessions, closed_sessions
from sqlalchemy import select

from .helpers import load_session

T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)


def timed_out_events(ledger: ChatLedger, session_id: UUID) -> list[Session.TimedOut]:
    return [e for e in ledger.session_events(session_id) if isinstance(e, Session.TimedOut)]


def index_rows(ledger: ChatLedger) -> dict[UUID, object]:
    with ledger.projector.engine.connect() as conn:
        return {r.session_id: r for r in conn.execute(select(active_sessions))}


def seed_sessions(ledger: ChatLedger, n: int, *, at: datetime, batch: int = 500) -> list[UUID]:
    """``n`` one-message sessions started at ``at``, written ``batch`` per transaction."""
    policy = AppliedPolicy.of(ledger.policy)
    ids: list[UUID] = []
    for start in range(0, n, batch):
        sessions = []
        for i in range(start, min(n, start + batch)):
            session = Session.start(
                session_id=uuid4(), visitor_id=f"seed-{i}", at=at, policy=policy
            )
            session.receive("hello", at=at)
            sessions.append(session)
        ledger.save(*sessions)
        ids.extend(s.id for s in sessions)
    return ids


# ---------------------------------------------------------------- the basics


def test_a_visitor_who_never_returns_is_timed_out_at_the_moment_they_went_idle(
    ledger: ChatLedger, clock: ManualClock
) -> None:
    turn = ledger.receive("ana", "Hello?")
    clock.advance(minutes=5)
    ledger.reply(turn.session_id, "Hi Ana, how can I help?")
    last_activity = clock()

    clock.advance(minutes=30)  # exactly the idle timeout: not expired yet
    assert ledger.sweep() == 0
    assert turn.session_id in index_rows(ledger)

    clock.advance(hours=3)
    assert ledger.sweep() == 1

    [event] = timed_out_events(ledger, turn.session_id)
    assert event.occurred_at == last_activity + timedelta(minutes=30)  # not the sweep time
    assert event.detected_at == clock()
    assert event.idle_since == last_activity
    assert event.reason == "idle"
    assert event.originator_version == 4
    state = ledger.session(turn.session_id)
    assert (state.status, state.closed_at) == ("timed_out", last_activity + timedelta(minutes=30))
    assert turn.session_id not in index_rows(ledger)

    clock.advance(hours=1)
    assert ledger.sweep() == 0  # idempotent
    assert len(timed_out_events(ledger, turn.session_id)) == 1


def test_open_tasks_and_the_maximum_length_set_the_deadline(database_url: str) -> None:
    clock = ManualClock(T0)
    policy = SessionPolicy(
        idle_timeout=timedelta(minutes=30),
        task_idle_timeout=timedelta(minutes=50),
        max_session_length=timedelta(minutes=70),
    )
    with ChatLedger.open(database_url, clock=clock, policy=policy) as ledger:
        tasked = ledger.receive("bo", "I want to order").session_id
        ledger.start_task(tasked, "order")
        capped = ledger.receive("cy", "hi").session_id
        for _ in range(3):
            clock.advance(minutes=20)
            ledger.reply(capped, "still here")
        clock.advance(minutes=40)  # tasked idle 60 > 50; capped reaches 70 min
        assert ledger.sweep() == 2
        [by_task] = timed_out_events(ledger, tasked)
        assert (by_task.occurred_at, by_task.reason) == (T0 + timedelta(minutes=50), "idle")
        assert by_task.open_tasks == ("order",)
        [by_cap] = timed_out_events(ledger, capped)
        assert (by_cap.occurred_at, by_cap.reason) == (T0 + timedelta(minutes=70), "max_length")


def test_ended_sessions_leave_the_index_and_are_never_timed_out(
    ledger: ChatLedger, clock: ManualClock
) -> None:
    sid = ledger.receive("dee", "bye").session_id
    ledger.end_session(sid)
    clock.advance(hours=2)
    assert ledger.sweep() == 0
    assert timed_out_events(ledger, sid) == []
    assert index_rows(ledger) == {}
    with ledger.projector.engine.connect() as conn:
        assert conn.execute(select(closed_sessions.c.status)).scalars().all() == ["ended"]


def test_limit_caps_one_sweep_and_the_next_one_continues(
    ledger: ChatLedger, clock: ManualClock
) -> None:
    ids = seed_sessions(ledger, 25, at=clock())
    now = clock() + timedelta(hours=1)
    assert ledger.sweep(now, limit=10, batch_size=4) == 10
    assert ledger.sweep(now, batch_size=4) == 15
    assert all(len(timed_out_events(ledger, sid)) == 1 for sid in ids)
    assert index_rows(ledger) == {}


# ---------------------------------------------------------------- races


def test_lazy_path_and_sweeper_racing_on_a_session_time_it_out_once(database_url: str) -> None:
    """Two "servers" (two ledgers on one database): one takes the visitor's
    next message, the other sweeps, at the same instant. Many rounds."""
    policy = SessionPolicy(idle_timeout=timedelta(minutes=30))
    web = ChatLedger.open(database_url, policy=policy)
    worker = ChatLedger.open(database_url, policy=policy)
    try:
        rounds = 15
        at = T0
        old_sessions = []
        for i in range(rounds):
            visitor = f"racer-{i}"
            first = web.receive(visitor, "hi", at=at)
            worker.projector.catch_up()
            later = at + timedelta(minutes=31)
            barrier = threading.Barrier(2)
            results: dict[str, object] = {}

            def lazy(
                visitor: str,
                later: datetime,
                barrier: threading.Barrier,
                results: dict[str, object],
            ) -> None:
                barrier.wait()
                results["turn"] = web.receive(visitor, "I'm back", at=later)

            def sweep(
                later: datetime, barrier: threading.Barrier, results: dict[str, object]
            ) -> None:
                barrier.wait()
                results["swept"] = worker.sweep(later)

            threads = [
                threading.Thread(target=lazy, args=(visitor, later, barrier, results)),
                threading.Thread(target=sweep, args=(later, barrier, results)),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            turn = results["turn"]
            assert turn.session_id != first.session_id and turn.is_returning  # type: ignore[attr-defined]
            old_sessions.append(first.session_id)
            at = later + timedelta(seconds=1)
        for sid in old_sessions:
            [event] = timed_out_events(web, sid)
            assert event.occurred_at == web.session(sid).closed_at
        # Later rounds' sweeps also timed out earlier rounds' new sessions: once each.
        live = set()
        for i in range(rounds):
            for sid in web.visitor(f"racer-{i}").session_ids:  # type: ignore[union-attr]
                assert len(timed_out_events(web, sid)) <= 1
                if load_session(web, sid).status == "active":
                    live.add(sid)
        worker.projector.catch_up()
        assert set(index_rows(worker)) == live and len(live) == 1
    finally:
        web.close()
        worker.close()


def test_two_sweepers_racing_over_the_same_sessions_time_each_out_once(database_url: str) -> None:
    """Two servers sweep the same 600 due sessions at the same instant; on SQLite
    (no row locks) they collide and the loser's batches are retried and dropped."""
    first = ChatLedger.open(database_url)
    second = ChatLedger.open(database_url)
    try:
        ids = seed_sessions(first, 600, at=T0, batch=300)
        now = T0 + timedelta(hours=1)
        barrier = threading.Barrier(2)
        counts: list[int] = []

        def run(ledger: ChatLedger) -> None:
            barrier.wait()
            counts.append(ledger.sweep(now, batch_size=100))

        threads = [threading.Thread(target=run, args=(lg,)) for lg in (first, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(counts) == 600
        assert all(len(timed_out_events(first, sid)) == 1 for sid in ids)
        assert index_rows(first) == {}
    finally:
        first.close()
        second.close()


def test_a_session_closed_behind_the_index_is_dropped_without_a_second_event(
    database_url: str,
) -> None:
    """The sweeper read the row, then the lazy path closed the session: the
    batch append conflicts, the one-by-one retry appends nothing, the row goes."""
    clock = ManualClock(T0)
    with ChatLedger.open(database_url, clock=clock) as ledger:
        stale = ledger.receive("eve", "hi").session_id
        fresh = ledger.receive("fay", "hi").session_id
        ledger.projector.catch_up()
        rows = list(index_rows(ledger).values())
        clock.advance(hours=1)
        ledger.receive("eve", "back again")  # lazy path records eve's timeout first

        batch = time_out_batch(ledger, rows, clock())
        assert (batch.appended, batch.conflict) == (1, 1)
        assert set(batch.closed) == {stale, fresh}
        assert len(timed_out_events(ledger, stale)) == 1
        assert len(timed_out_events(ledger, fresh)) == 1


def test_a_stale_row_for_a_closed_session_is_cleaned_by_the_next_sweep(
    ledger: ChatLedger, clock: ManualClock
) -> None:
    sid = ledger.receive("gus", "hi").session_id
    ledger.projector.catch_up()
    with ledger.projector.engine.connect() as conn:
        row = dict(conn.execute(select(active_sessions)).one()._mapping)
    clock.advance(hours=1)
    assert ledger.sweep() == 1
    with ledger.projector.engine.begin() as conn:  # a ghost row, as a crash could leave
        conn.execute(active_sessions.insert(), [row])
    assert ledger.sweep() == 0
    assert index_rows(ledger) == {}
    assert len(timed_out_events(ledger, sid)) == 1


# ---------------------------------------------------------------- downtime and jobs


def test_a_sweeper_restarted_after_downtime_catches_up(database_url: str) -> None:
    clock = ManualClock(T0)
    with ChatLedger.open(database_url, clock=clock) as ledger:
        early = [ledger.receive(f"early-{i}", "hi").session_id for i in range(3)]
        clock.advance(minutes=40)
        assert ledger.sweep() == 3  # the worker ran, then went down
        late = [ledger.receive(f"late-{i}", "hi").session_id for i in range(4)]
        returned = ledger.receive("late-0", "back after lunch", at=clock() + timedelta(hours=2))
        clock.advance(hours=5)

    # A new process: a new ledger; the first sweep on start catches up.
    with ChatLedger.open(database_url, clock=clock) as restarted:
        assert restarted.sweep() == 4  # late-1..3 and late-0's second session
        for sid in early + late:
            assert len(timed_out_events(restarted, sid)) == 1
        [event] = timed_out_events(restarted, late[1])
        assert event.occurred_at == T0 + timedelta(minutes=70)
        assert event.detected_at == clock()
        [event] = timed_out_events(restarted, returned.session_id)
        assert event.occurred_at == T0 + timedelta(hours=3, minutes=10)
        assert restarted.sweep() == 0


def test_background_jobs_sweep_once_on_start(database_url: str) -> None:
    """A (re)started scheduler sweeps at once: no waiting a whole interval."""
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
    from chatledger.infrastructure.scheduler import SWEEP_JOB_ID, BackgroundJobs

    clock = ManualClock(T0)
    with ChatLedger.open(database_url, clock=clock) as ledger:
        sid = ledger.receive("hal", "hi").session_id
        clock.advance(hours=1)
        finished = threading.Event()
        outcome: list[object] = []
        jobs = BackgroundJobs(ledger, interval=3600)
        jobs.scheduler.add_listener(
            lambda e: (
                outcome.append(e.retval if e.exception is None else e.exception),
                finished.set(),
            )
            if e.job_id == SWEEP_JOB_ID  # the seal job runs on start too
            else None,
            EVENT_JOB_EXECUTED | EVENT_JOB_ERROR,
        )
        jobs.start()
        job = jobs.scheduler.get_job(SWEEP_JOB_ID)
        assert (job.max_instances, job.coalesce) == (1, True)
        assert finished.wait(60), "the first sweep did not run on start"
        jobs.stop()
        assert outcome == [1]
        assert len(timed_out_events(ledger, sid)) == 1


def test_start_and_stop_background_jobs(ledger: ChatLedger) -> None:
    jobs = ledger.start_background_jobs(interval=3600)
    assert jobs.scheduler.running
    assert sorted(jobs.job_ids) == ["chatledger.projections", "chatledger.seal", "chatledger.sweep"]  # retention off
    assert ledger.start_background_jobs() is jobs  # one scheduler per ledger
    ledger.stop_background_jobs()
    assert not jobs.scheduler.running
    with ledger.background_jobs(interval=3600, projections_interval=None) as again:
        assert again.scheduler.running and sorted(again.job_ids) == ["chatledger.seal", "chatledger.sweep"]
    assert not again.scheduler.running


def test_projections_job_catches_every_read_model_up(ledger: ChatLedger) -> None:
    from chatledger.infrastructure.scheduler import BackgroundJobs

    turn = ledger.receive("v-jobs", "hello")
    ledger.reply(turn.session_id, "hi")
    jobs = BackgroundJobs(ledger, interval=3600, projections_interval=3600)  # not started
    assert {s.lag for s in ledger.projection_status()} != {0}
    assert jobs.catch_up_projections() > 0
    assert {s.lag for s in ledger.projection_status()} == {0}
    assert [m.text for m in ledger.transcript(turn.session_id).messages] == ["hello", "hi"]
    assert jobs.catch_up_projections() == 0


# ---------------------------------------------------------------- bad input


def test_bad_input_is_refused_and_appends_nothing(ledger: ChatLedger, clock: ManualClock) -> None:
    ledger.receive("ivy", "hi")
    clock.advance(hours=1)
    head = ledger.recorder.max_notification_id()
    with pytest.raises(InvalidCommandError):
        ledger.sweep(datetime(2026, 1, 1, 12, 0))  # naive
    with pytest.raises(InvalidCommandError):
        ledger.sweep(limit=0)
    with pytest.raises(InvalidCommandError):
        ledger.sweep(batch_size=0)
    with pytest.raises(InvalidCommandError):
        ledger.start_background_jobs(interval=0)
    with pytest.raises(InvalidCommandError):
        ledger.archive_closed_sessions(timedelta(days=-1), "unused")
    assert ledger.recorder.max_notification_id() == head
    assert ledger.sweep() == 1
