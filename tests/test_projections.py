"""Projections (issue 4): conversation log, analytics, user memory.

Every test runs on a real SQLite file and on PostgreSQL (``database_url``).
Projection tests follow one shape: the read model is empty before the runner
catches up, then it is caught up and checked, more is written, and it is
checked again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from chatledger import (
    ChatLedger,
    ChatLedgerError,
    Engagement,
    InvalidCommandError,
    ManualClock,
    SessionOwnershipError,
    SessionPolicy,
)
from chatledger.infrastructure.database import make_engine
from chatledger.projections import DEFAULT_READ_MODELS
from chatledger.projections.read_model import ReadModel
from chatledger.projections.runner import ProjectionRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from .conftest import POSTGRES_URL, drop_schema
from .helpers import examples

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def dump(ledger: ChatLedger) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every read-model table, in primary-key order."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    with ledger.projector.engine.connect() as conn:
        for projection in ledger.projector.projections.values():
            for table in projection.metadata.sorted_tables:
                query = select(table).order_by(*table.primary_key.columns)
                rows[table.name] = [tuple(r) for r in conn.execute(query)]
    return rows


def rebuilt(ledger: ChatLedger) -> dict[str, list[tuple[Any, ...]]]:
    for name in ledger.projector.projections:
        ledger.projector.rebuild(name)
    return dump(ledger)


# ------------------------------------------------------------------ conversation log


def test_transcript_by_user_includes_anonymous_sessions_from_before_login(ledger: ChatLedger) -> None:
    first = ledger.receive("browser-1", "Hi, where is my parcel?", at=at(0))
    ledger.reply(first.session_id, "Can you log in?", at=at(1))
    # An hour away: the first session times out, the next message starts another.
    second = ledger.receive("browser-1", "Back again", at=at(60))
    assert second.session_id != first.session_id

    assert ledger.transcript(user_id="ana").messages == ()  # empty before the runner runs
    ledger.catch_up()
    assert ledger.transcript(user_id="ana").messages == ()  # not linked yet
    assert len(ledger.transcript(visitor_id="browser-1").messages) == 3

    ledger.link_identity("browser-1", "ana", at=at(61))
    ledger.reply(second.session_id, "Welcome, Ana", at=at(62))
    ledger.receive("phone-7", "other person", at=at(63))
    stale = ledger.transcript(user_id="ana")
    assert stale.lag > 0 and stale.messages == ()

    ledger.catch_up()
    transcript = ledger.transcript(user_id="ana")
    assert transcript.lag == 0
    assert [m.text for m in transcript.messages] == [
        "Hi, where is my parcel?",
        "Can you log in?",
        "Back again",
        "Welcome, Ana",
    ]
    assert transcript.session_ids == (first.session_id, second.session_id)
    assert [m.position for m in transcript.messages] == [0, 1, 0, 1]
    assert {m.user_id for m in transcript.messages} == {"ana"}
    # Once linked, the visitor id no longer reads the (now the user's) history.
    assert ledger.transcript(visitor_id="browser-1").messages == ()

    # The same history for a login on a second device.
    third = ledger.receive("laptop-2", "From my laptop", at=at(100))
    ledger.link_identity("laptop-2", "ana", at=at(101))
    ledger.catch_up()
    assert [m.text for m in ledger.transcript(user_id="ana").messages][-1] == "From my laptop"
    assert ledger.transcript(third.session_id, user_id="ana").messages[0].text == "From my laptop"

    window = ledger.transcript(start=at(60), end=at(63))
    assert [m.text for m in window.messages] == ["Back again", "Welcome, Ana"]


def test_a_users_transcript_is_never_readable_through_another_identity(ledger: ChatLedger) -> None:
    mine = ledger.receive("v-ana", "secret of ana", at=at(0))
    ledger.link_identity("v-ana", "ana", at=at(1))
    ledger.receive("v-bob", "bob here", at=at(2))
    ledger.link_identity("v-bob", "bob", at=at(3))
    ledger.catch_up()

    assert [m.text for m in ledger.transcript(user_id="bob").messages] == ["bob here"]
    with pytest.raises(SessionOwnershipError):
        ledger.transcript(mine.session_id, user_id="bob")
    with pytest.raises(SessionOwnershipError):
        ledger.transcript(mine.session_id, visitor_id="v-bob")
    assert ledger.transcript(mine.session_id, user_id="ana").messages[0].text == "secret of ana"


def test_transcript_rejects_bad_input(ledger: ChatLedger) -> None:
    with pytest.raises(InvalidCommandError):
        ledger.transcript()
    with pytest.raises(InvalidCommandError):
        ledger.transcript(start=at(10), end=at(0))
    with pytest.raises(InvalidCommandError):
        ledger.transcript(start=datetime(2026, 1, 1))  # naive
    with pytest.raises(ChatLedgerError):
        ledger.transcript("not-a-uuid")


# ------------------------------------------------------------------ analytics


def test_analytics_counts_are_exact(ledger: ChatLedger) -> None:
    # Visitor a: 3 messages over 20 s, then idle; a message 40 min later is a new session.
    a1 = ledger.receive("a", "hello", at=at(0), channel="web")
    ledger.reply(a1.session_id, "hi!", at=at(0) + timedelta(seconds=5))
    ledger.receive("a", "thanks", at=at(0) + timedelta(seconds=20))
    a2 = ledger.receive("a", "me again", at=at(40), channel="web")
    # Visitor b: starts a task and never finishes it -> abandoned.
    b1 = ledger.receive("b", "refund please", at=at(5), channel="whatsapp")
    ledger.start_task(b1.session_id, "refund", at=at(6))
    # Visitor c: completes a task and says goodbye -> ended, engaged by its task.
    c1 = ledger.receive("c", "order status", at=at(70), channel="whatsapp")
    ledger.start_task(c1.session_id, "status", at=at(71))
    ledger.complete_task(c1.session_id, "status", at=at(72))
    ledger.end_session(c1.session_id, at=at(73))
    ledger.link_identity("c", "carla", at=at(73))

    assert ledger.analytics(as_of=at(300)).sessions == 0  # empty before the runner runs
    ledger.catch_up()
    report = ledger.analytics(as_of=at(300))
    assert report.lag == 0
    assert report.sessions == 4
    assert report.sessions_per_channel == {"web": 2, "whatsapp": 2}
    assert report.sessions_per_hour == {9: 3, 10: 1}
    assert sum(report.sessions_per_day.values()) == 4
    assert report.messages == 6 and report.user_messages == 5
    # a1 lasted 20 s of exchange: the 30 min idle tail before its timeout is not counted.
    assert sorted(report.durations_s) == [0.0, 0.0, 0.0, 20.0]
    assert report.end_reasons == {"timed_out": 2, "ended": 1, "abandoned": 1, "active": 0}
    assert report.engaged_sessions == 2  # a1 (20 s, 2 user messages) and c1 (completed task)
    assert (report.visitors, report.new_visitors, report.returning_visitors) == (3, 3, 1)
    assert report.returning_sessions == 1
    assert report.linked_visitors == 1 and report.identity_link_rate == pytest.approx(1 / 3)

    # Before a2's deadline it is still active; the message after the timeout
    # never inflated a1.
    earlier = ledger.analytics(as_of=at(41))
    assert earlier.end_reasons["active"] == 2  # a2 and b1 (task timeout is 60 min)
    strict = ledger.analytics(
        as_of=at(300), engagement=Engagement(min_duration=None, min_user_messages=3, completed_task=False)
    )
    assert strict.engaged_sessions == 0
    period = ledger.analytics(start=at(30), end=at(80), as_of=at(300))
    assert period.sessions == 2 and period.new_visitors == 1 and period.returning_visitors == 1

    ledger.receive("b", "still there?", at=at(200))
    ledger.catch_up()
    assert ledger.analytics(as_of=at(300)).sessions == 5
    assert a2.session_id != a1.session_id


def test_resessionize_under_another_timeout_leaves_the_log_alone(ledger: ChatLedger) -> None:
    t = 0.0
    for gap in (0, 5, 20, 10, 45, 2):  # minutes between messages of one visitor
        t += gap
        ledger.receive("v", f"message at {t}", at=at(t))
    ledger.catch_up()
    head = ledger.projector.head()
    assert ledger.analytics(as_of=at(500)).sessions == 2  # only the 45 min gap splits at 30 min
    assert ledger.resessionize(timedelta(minutes=30)).sessions == 2
    assert ledger.resessionize(timedelta(minutes=15)).sessions == 3
    assert ledger.resessionize(timedelta(minutes=10)).sessions == 3  # exactly 10 min does not split
    assert ledger.resessionize(timedelta(minutes=9)).sessions == 4
    assert ledger.resessionize(timedelta(hours=1)).sessions == 1
    assert ledger.resessionize(timedelta(minutes=15)).messages == 6
    assert ledger.projector.head() == head  # nothing was appended
    with pytest.raises(InvalidCommandError):
        ledger.resessionize(timedelta(0))


# ------------------------------------------------------------------ memory


def test_memory_welcomes_a_returning_user_and_merges_the_visitor(ledger: ChatLedger) -> None:
    s1 = ledger.receive("browser-1", "I want a refund", at=at(0))
    ledger.set_slot(s1.session_id, "name", "Ana", scope="user", at=at(1))
    ledger.set_slot(s1.session_id, "language", "pt", scope="user", at=at(1))
    ledger.set_slot(s1.session_id, "order", "A-17", at=at(2))
    ledger.start_task(s1.session_id, "refund_request", at=at(3))
    assert not ledger.memory(visitor_id="browser-1").known  # empty before the runner runs
    ledger.catch_up()
    anon = ledger.memory(visitor_id="browser-1")
    assert anon.known and anon.display_name == "Ana" and anon.session_count == 1
    assert anon.unfinished_tasks == ()  # the conversation is still going

    # The user had talked to the bot from another device before, logged in.
    ledger.receive("phone-9", "hello", at=at(-600))
    ledger.link_identity("phone-9", "ana", at=at(-599))
    phone = ledger.visitor("phone-9")
    assert phone is not None and phone.current_session_id is not None
    ledger.set_slot(phone.current_session_id, "language", "en", scope="user", at=at(-598))

    # Two hours later browser-1 comes back and logs in.
    ledger.receive("browser-1", "back", at=at(120))
    ledger.link_identity("browser-1", "ana", at=at(121))
    ledger.catch_up()
    memory = ledger.memory(user_id="ana")
    assert memory.lag == 0 and memory.known
    assert memory.display_name == "Ana"
    assert memory.preferences == {"language": "pt", "name": "Ana"}  # the later value wins
    assert memory.session_count == 3
    assert memory.first_seen_at == at(-600) and memory.last_seen_at == at(120)
    assert memory.left_off_session_id == s1.session_id
    assert memory.left_off_status == "timed_out"
    assert memory.unfinished_tasks == ("refund_request",)
    assert memory.last_slots["order"] == "A-17"
    # The visitor id no longer reads anything: it belongs to the user now.
    linked = ledger.memory(visitor_id="browser-1")
    assert linked.linked_to_user and not linked.known and linked.preferences == {}

    # Someone else never sees Ana's memory.
    ledger.receive("v-bob", "hi", at=at(130))
    ledger.link_identity("v-bob", "bob", at=at(131))
    ledger.catch_up()
    bob = ledger.memory(user_id="bob")
    assert bob.display_name is None and bob.preferences == {} and bob.session_count == 1
    assert not ledger.memory(user_id="nobody").known
    with pytest.raises(InvalidCommandError):
        ledger.memory(user_id="ana", visitor_id="browser-1")
    with pytest.raises(InvalidCommandError):
        ledger.memory()


# ------------------------------------------------------------------ live == rebuilt


@contextmanager
def fresh_ledger(database_url: str, tmp: Any, clock: ManualClock, policy: SessionPolicy) -> Iterator[ChatLedger]:
    """A ledger on a database of its own (one per hypothesis example)."""
    schema = None
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp}/{uuid4().hex}.db"
    else:
        schema = f"t_{uuid4().hex[:16]}"
        url = f"{POSTGRES_URL}?schema={schema}"
    ledger = ChatLedger.open(url, clock=clock, policy=policy)
    try:
        yield ledger
    finally:
        ledger.close()
        if schema is not None:
            drop_schema(schema)


VISITORS = [f"v{i}" for i in range(5)]
USERS = ["ana", "bob", "carla"]

commands = st.lists(
    st.one_of(
        st.tuples(st.just("receive"), st.sampled_from(VISITORS), st.integers(0, 50)),
        st.tuples(st.just("reply"), st.sampled_from(VISITORS), st.integers(0, 50)),
        st.tuples(st.just("slot"), st.sampled_from(VISITORS), st.sampled_from(["name", "lang", "topic"]), st.sampled_from(["user", "session"])),
        st.tuples(st.just("clear"), st.sampled_from(VISITORS), st.sampled_from(["name", "topic"])),
        st.tuples(st.just("task"), st.sampled_from(VISITORS), st.sampled_from(["refund", "order"])),
        st.tuples(st.just("done"), st.sampled_from(VISITORS), st.sampled_from(["refund", "order"])),
        st.tuples(st.just("link"), st.sampled_from(VISITORS), st.sampled_from(USERS)),
        st.tuples(st.just("end"), st.sampled_from(VISITORS)),
        st.tuples(st.just("sweep"), st.sampled_from(VISITORS)),
        st.tuples(st.just("wait"), st.integers(1, 120)),
        st.tuples(st.just("catch_up"), st.integers(1, 9)),
        st.tuples(st.just("archive"), st.integers(1, 120)),
    ),
    min_size=1,
    max_size=40,
)


def run_command(ledger: ChatLedger, clock: ManualClock, command: tuple[Any, ...], archives: Any) -> None:
    kind = command[0]
    if kind == "wait":
        clock.advance(minutes=command[1])
        return
    if kind == "catch_up":
        ledger.projector.catch_up(batch_size=command[1])
        return
    if kind == "archive":  # retention: sessions closed over N minutes ago
        ledger.archive_closed_sessions(timedelta(minutes=command[1]), archives, now=clock())
        return
    clock.advance(seconds=7)
    now = clock()
    visitor = command[1]
    state = ledger.visitor(visitor)
    sid = state.current_session_id if state else None
    try:
        if kind == "receive":
            ledger.receive(visitor, f"hello {command[2]}", at=now)
        elif kind == "link":
            ledger.link_identity(visitor, command[2], at=now)
        elif sid is None:
            return
        elif kind == "reply":
            ledger.reply(sid, f"answer {command[2]}", at=now)
        elif kind == "slot":
            ledger.set_slot(sid, command[2], f"value {now:%H%M%S}", scope=command[3], at=now)
        elif kind == "clear":
            ledger.clear_slot(sid, command[2], at=now)
        elif kind == "task":
            ledger.start_task(sid, command[2], at=now)
        elif kind == "done":
            ledger.complete_task(sid, command[2], at=now)
        elif kind == "end":
            ledger.end_session(sid, at=now)
        elif kind == "sweep":
            ledger.time_out_if_idle(sid, now=now)
    except ChatLedgerError:
        pass  # a rejected command appends nothing; the history goes on


@settings(
    max_examples=examples(20),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=commands)
def test_live_projections_equal_rebuilt_projections(
    database_url: str, tmp_path: Any, history: list[tuple[Any, ...]]
) -> None:
    """Law: for any history, every read model kept up to date live (caught up
    between commands, in batches of any size) equals, row for row, the same
    read model rebuilt from scratch from the whole log."""
    clock = ManualClock(T0)
    with fresh_ledger(database_url, tmp_path, clock, SessionPolicy()) as ledger:
        for command in history:
            run_command(ledger, clock, command, tmp_path / "archives")
        ledger.catch_up()
        live = dump(ledger)
        kinds = {c[0] for c in history}
        assert live["conversation_messages"] or "receive" not in kinds or "archive" in kinds
        assert rebuilt(ledger) == live


@settings(max_examples=examples(10), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gaps=st.lists(st.tuples(st.sampled_from(VISITORS[:3]), st.integers(0, 90), st.booleans()), min_size=1, max_size=25))
def test_resessionizing_with_the_policy_timeout_reproduces_the_sessions(
    sqlite_url: str, tmp_path: Any, gaps: list[tuple[str, int, bool]]
) -> None:
    """Law: on message-only histories, re-sessionizing under the timeout the
    sessions ran with yields exactly the recorded number of sessions."""
    clock = ManualClock(T0)
    with fresh_ledger(sqlite_url, tmp_path, clock, SessionPolicy(idle_timeout=timedelta(minutes=30))) as ledger:
        for visitor, minutes, bot in gaps:
            clock.advance(minutes=minutes)
            turn = ledger.receive(visitor, "hi", at=clock())
            if bot:
                ledger.reply(turn.session_id, "hello", at=clock())
        ledger.catch_up()
        recorded = ledger.analytics(as_of=clock())
        again = ledger.resessionize(timedelta(minutes=30))
        assert again.sessions == recorded.sessions
        assert again.messages == recorded.messages
        assert again.sessions_per_day == recorded.sessions_per_day


# ------------------------------------------------------------------ crashes and races


class Crash(BaseException):
    """The runner dying (as ``KeyboardInterrupt`` or ``SystemExit`` would): a
    ``BaseException``. An ``Exception`` from a handler is an event the read
    model cannot apply, which is recorded and skipped instead
    (tests/test_projection_failures.py)."""


def crashing(cls: type[ReadModel], after: int) -> type[ReadModel]:
    """The same read model, but the runner dies at its ``after``-th event."""
    seen = [0]

    class Crashing(cls):  # type: ignore[valid-type,misc]
        name = cls.name

        def process_event(self, domain_event: Any, tracking: Any) -> None:  # type: ignore[override]
            seen[0] += 1
            if seen[0] == after:
                raise Crash(f"killed at event {after}")
            super().process_event(domain_event, tracking)

    return Crashing


def write_history(ledger: ChatLedger, visitors: int = 6) -> None:
    for i in range(visitors):
        v = f"visitor-{i}"
        for k in range(3):
            t = ledger.receive(v, f"hello {k}", at=at(i + 90 * k))
            ledger.reply(t.session_id, "hi", at=at(i + 90 * k + 1))
            ledger.set_slot(t.session_id, "name", f"N{i}", scope="user", at=at(i + 90 * k + 1))
            if k == 1:
                ledger.link_identity(v, f"user-{i % 4}", at=at(i + 90 * k + 2))


def test_a_runner_killed_mid_batch_resumes_without_double_counting(ledger: ChatLedger) -> None:
    write_history(ledger)
    head = ledger.projector.head()
    for name in ledger.projector.projections:
        assert ledger.projector.position(name) == 0
    for after in (23, 61):
        broken = ProjectionRunner(
            ledger.name,
            ledger.recorder,
            ledger.mapper,
            ledger.projector.engine,
            [crashing(cls, after) for cls in DEFAULT_READ_MODELS],
        )
        with pytest.raises(Crash):
            broken.catch_up(batch_size=7)
        positions = [ledger.projector.position(n) for n in ledger.projector.projections]
        assert any(0 < p < head for p in positions)  # died mid-way: earlier batches committed
    ledger.projector.catch_up(batch_size=5)
    resumed = dump(ledger)
    assert sum(r[-1] for r in resumed["conversation_sessions"]) == 36  # message counts
    assert rebuilt(ledger) == resumed


def test_two_runners_racing_apply_each_event_once(database_url: str, ledger: ChatLedger) -> None:
    write_history(ledger, visitors=8)
    other = ProjectionRunner(
        ledger.name, ledger.recorder, ledger.mapper, make_engine(ledger.settings), DEFAULT_READ_MODELS
    )
    errors: list[BaseException] = []

    def run(projector: ProjectionRunner) -> None:
        try:
            projector.catch_up(batch_size=3)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(p,)) for p in (ledger.projector, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    other.engine.dispose()
    assert errors == []
    raced = dump(ledger)
    assert len(raced["conversation_messages"]) == 48
    assert rebuilt(ledger) == raced


def test_background_runner_keeps_projections_current(ledger: ChatLedger) -> None:
    ledger.receive("v", "hello", at=at(0))
    ledger.projector.start(interval=0.05)
    try:
        ledger.projector.wait_for(ledger.projector.head())
        assert [m.text for m in ledger.transcript(visitor_id="v").messages] == ["hello"]
    finally:
        ledger.projector.stop()


def test_public_types_are_exported() -> None:
    import chatledger

    for name in ("Analytics", "Engagement", "Memory", "ProjectionStatus", "Resessionized", "Transcript"):
        assert name in chatledger.__all__
    assert chatledger.__all__ == sorted(chatledger.__all__)


def test_reads_need_their_projection(tmp_path: Any) -> None:
    from chatledger.infrastructure.settings import Settings

    ledger = ChatLedger(Settings(database_url=f"sqlite:///{tmp_path}/x.db"), read_models=[])
    try:
        with pytest.raises(ChatLedgerError, match="not enabled"):
            ledger.memory(user_id="ana")
    finally:
        ledger.close()
