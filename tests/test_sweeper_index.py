"""The active-session index agrees with the domain; retention; the worker command."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest
from chatledger import ChatLedger, ChatLedgerError, ManualClock, SessionPolicy
from chatledger.application.retention import RetentionPolicy
from chatledger.domain.session import Session
from chatledger.projections.active_sessions import active_sessions, closed_sessions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from typer.testing import CliRunner

from .helpers import background_jobs, event_names, examples, load_session

T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)

Step = tuple[str, float]
steps = st.lists(
    st.tuples(
        st.sampled_from(["reply", "slot", "task", "done", "link", "end"]),
        st.floats(min_value=0, max_value=45, allow_nan=False),
    ),
    max_size=8,
)


def test_index_deadline_is_the_sessions_own_expiry(sqlite_url: str) -> None:
    """Law: for any history, the index row says what ``Session.expiry()`` says,
    and the event the sweeper writes from it is the one ``Session.time_out``
    would have written."""
    policy = SessionPolicy(
        idle_timeout=timedelta(minutes=30),
        task_idle_timeout=timedelta(minutes=47, microseconds=333),
        max_session_length=timedelta(minutes=95),
    )
    ledger = ChatLedger.open(sqlite_url, policy=policy)
    epoch = [T0]

    @settings(max_examples=examples(40), deadline=None, suppress_health_check=list(HealthCheck))
    @given(history=steps)
    def check(history: list[Step]) -> None:
        at = epoch[0]
        sid = ledger.receive(f"v-{uuid4().hex[:8]}", "hi", at=at).session_id
        tasks: list[str] = []
        for n, (action, gap) in enumerate(history):
            at += timedelta(minutes=gap)
            session = load_session(ledger, sid)
            if session.is_expired(at):
                break
            if action == "reply":
                ledger.reply(sid, "ok", at=at)
            elif action == "slot":
                ledger.set_slot(sid, "k", n, at=at)
            elif action == "task":
                tasks.append(f"t{n}")
                ledger.start_task(sid, f"t{n}", at=at)
            elif action == "done" and tasks:
                ledger.complete_task(sid, tasks.pop(0), at=at)
            elif action == "link":
                ledger.link_identity(session.visitor_id, "user", at=at)
            elif action == "end":
                ledger.end_session(sid, at=at)
                break
        epoch[0] = at + timedelta(days=1)  # the next history never overlaps this one
        ledger.projector.catch_up()
        session = load_session(ledger, sid)
        with ledger.projector.engine.connect() as conn:
            row = conn.execute(
                select(active_sessions).where(active_sessions.c.session_id == sid)
            ).one_or_none()
        if session.status != "active":
            assert row is None
            return
        assert row is not None
        assert (row.expires_at, row.expiry_reason) == session.expiry()
        assert row.version == session.version

        detected = session.expiry()[0] + timedelta(microseconds=1)
        assert ledger.sweep(detected) == 1
        expected = _reload_before_last(ledger, sid)  # what the domain itself would record
        assert expected.time_out(detected_at=detected)
        [want] = expected.collect_events()
        got = ledger.session_events(sid)[-1]
        assert isinstance(got, Session.TimedOut)
        skip = {"timestamp"}
        assert got.model_dump(exclude=skip) == want.model_dump(exclude=skip)

    try:
        check()
    finally:
        ledger.close()


def _reload_before_last(ledger: ChatLedger, sid: object) -> Session:
    session: Session | None = None
    events = ledger.session_events(sid)  # type: ignore[arg-type]
    for event in events[:-1]:
        session = event.mutate(session)  # type: ignore[attr-defined]
    assert session is not None
    return session


def test_a_rebuilt_index_equals_the_live_one(ledger: ChatLedger, clock: ManualClock) -> None:
    """Law: replaying the log from scratch gives the same rows (expiry included)."""
    for i in range(6):
        sid = ledger.receive(f"r{i}", "hi").session_id
        if i % 2:
            ledger.start_task(sid, "order")
        if i % 3 == 0:
            ledger.end_session(sid)
        clock.advance(minutes=7)
    assert ledger.sweep() == 0
    clock.advance(minutes=40)
    assert ledger.sweep() > 0
    ledger.projector.catch_up()
    live = _dump(ledger)
    ledger.projector.rebuild("active_sessions")
    rebuilt = _dump(ledger)
    # A rebuild learns visitor ids the sweeper's early drop could not pass on.
    for rows in (live, rebuilt):
        for row in rows[1]:
            row.pop("visitor_id")
    assert rebuilt == live
    assert live[0] and live[1]


def _dump(ledger: ChatLedger) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    with ledger.projector.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            [dict(r._mapping) for r in conn.execute(select(t).order_by(t.c.session_id))]
            for t in (active_sessions, closed_sessions)
        )


def test_retention_archives_old_closed_sessions_and_keeps_the_log(
    ledger: ChatLedger, clock: ManualClock, tmp_path: Path
) -> None:
    old = ledger.receive("old", "hi").session_id
    ledger.set_slot(old, "name", "Ana", scope="user")
    ledger.end_session(old)
    idle = ledger.receive("idle", "hi").session_id
    clock.advance(days=10)
    assert ledger.sweep() == 1  # idle times out (stamped ten days ago)
    recent = ledger.receive("recent", "hi").session_id
    ledger.end_session(recent)
    live = ledger.receive("live", "hi").session_id
    head = ledger.recorder.max_notification_id()
    ledger.catch_up()
    metrics = ("sessions", "messages", "end_reasons", "durations_s", "visitors")
    counts_before = ledger.analytics().model_dump(include=set(metrics))

    result = ledger.archive_closed_sessions(timedelta(days=5), tmp_path / "archive")
    assert result.archived == 2 and result.path is not None
    with gzip.open(result.path, "rt") as lines:  # encrypted: only ids in the clear
        assert {json.loads(line)["session_id"] for line in lines} == {str(old), str(idle)}
    by_id = {str(a.session_id): a for a in ledger.read_archive(result.path)}
    assert set(by_id) == {str(old), str(idle)}
    assert by_id[str(idle)].state["status"] == "timed_out"
    assert [e["type"] for e in by_id[str(old)].events] == [
        "Session.Started",
        "Session.MessageReceived",
        "Session.SlotSet",
        "Session.Ended",
    ]
    with ledger.projector.engine.connect() as conn:
        closed = set(conn.execute(select(closed_sessions.c.session_id)).scalars())
        active = set(conn.execute(select(active_sessions.c.session_id)).scalars())
    assert closed == {recent} and active == {live}
    # Nothing in the log changed; one Archived fact per archived session was appended.
    assert ledger.recorder.max_notification_id() == head + 2
    assert ledger.session(old).status == "ended"
    assert ledger.session(old).archived_at == clock()
    assert event_names(ledger, old)[-1] == "Archived"
    # The transcripts are gone from the read model, the rest stays.
    assert ledger.transcript(session_id=old).messages == ()
    assert [m.text for m in ledger.transcript(session_id=recent).messages] == ["hi"]
    assert ledger.memory(visitor_id="old").display_name == "Ana"
    assert ledger.analytics().model_dump(include=set(metrics)) == counts_before
    again = ledger.archive_closed_sessions(timedelta(days=5), tmp_path / "archive")
    assert (again.archived, again.path) == (0, None)
    # A rebuild from scratch drops exactly what the live run dropped.
    live_rows = read_model_rows(ledger)
    for name in ledger.projector.projections:
        ledger.projector.rebuild(name)
    assert read_model_rows(ledger) == live_rows


def read_model_rows(ledger: ChatLedger) -> dict[str, list[tuple[object, ...]]]:
    rows: dict[str, list[tuple[object, ...]]] = {}
    with ledger.projector.engine.connect() as conn:
        for model in ledger.projector.projections.values():
            for table in model.metadata.sorted_tables:
                rows[table.name] = sorted(map(tuple, conn.execute(select(table))), key=repr)
    return rows


def test_an_archived_session_is_archived_once_and_only_when_closed(ledger: ChatLedger, clock: ManualClock) -> None:
    from chatledger import SessionClosedError

    sid = ledger.receive("v", "hi").session_id
    session = ledger.repository.get(sid)
    assert isinstance(session, Session)
    with pytest.raises(SessionClosedError, match="still active"):
        session.record_archive("a.jsonl.gz", at=clock())
    ledger.end_session(sid)
    session = ledger.repository.get(sid)
    session.record_archive("a.jsonl.gz", at=clock())
    with pytest.raises(ChatLedgerError, match="already archived to a.jsonl.gz"):
        session.record_archive("b.jsonl.gz", at=clock())


def test_retention_policy_refuses_nonsense() -> None:
    for bad in (0, -3):
        with pytest.raises(ChatLedgerError):
            RetentionPolicy.days(bad, "x")
    with pytest.raises(ChatLedgerError, match="interval"):
        RetentionPolicy(archive_after=timedelta(days=1), archive_dir="x", interval=timedelta(0))
    assert RetentionPolicy.days(30, "x").archive_after == timedelta(days=30)


def test_worker_once_sweeps_and_prints_the_count(sqlite_url: str) -> None:
    from chatledger.entrypoints.cli import app

    with ChatLedger.open(sqlite_url) as ledger:  # the system clock: these are due
        ledger.receive("w1", "hi", at=datetime.now(UTC) - timedelta(hours=2))
        ledger.receive("w2", "hi", at=datetime.now(UTC) - timedelta(hours=3))
        ledger.receive("w3", "hi")
    result = CliRunner().invoke(app, ["worker", "--once", "--database", sqlite_url])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "2"
    with ChatLedger.open(sqlite_url) as ledger:
        ledger.projector.catch_up()
        with ledger.projector.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(active_sessions)).scalar() == 1


def test_the_embedding_example_in_docs_timeouts_runs(sqlite_url: str) -> None:
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "timeouts.md").read_text()
    [block] = re.findall(r"```python\n(.*?)```", doc, re.DOTALL)
    served: list[bool] = []
    namespace: dict[str, object] = {
        "ChatLedger": ChatLedger,
        "url": sqlite_url,
        "serve": lambda: served.append(ledger_jobs_running(namespace)),
    }
    exec(compile(block, "docs/timeouts.md", "exec"), namespace)  # noqa: S102
    ledger = namespace["ledger"]
    assert isinstance(ledger, ChatLedger)
    assert served == [True]  # the jobs ran while serve() ran ...
    assert background_jobs(ledger) is None  # ... and stopped after the block
    ledger.close()


def ledger_jobs_running(namespace: dict[str, object]) -> bool:
    ledger = namespace["ledger"]
    if not isinstance(ledger, ChatLedger):
        return False
    jobs = background_jobs(ledger)
    return jobs is not None and bool(jobs.scheduler.running)
