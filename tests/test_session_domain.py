"""Given/when/then on the Session aggregate alone (no store)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from chatledger import InvalidCommandError, SessionClosedError, SessionTimedOutError, TaskStateError
from chatledger.domain.policy import AppliedPolicy, SessionPolicy
from chatledger.domain.session import Session

T0 = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)


def started(policy: SessionPolicy | None = None) -> Session:
    session = Session.start(
        session_id=uuid4(), visitor_id="v", at=T0, policy=AppliedPolicy.of(policy or SessionPolicy())
    )
    session.receive("hello", at=T0)
    session.collect_events()
    return session


def new_events(session: Session) -> list[tuple[str, dict[str, object]]]:
    keep = {"originator_id", "originator_version", "timestamp", "originator_topic"}
    return [
        (type(e).__name__, e.model_dump(exclude=keep))  # type: ignore[attr-defined]
        for e in session.collect_events()
    ]


def test_idle_exactly_the_timeout_is_not_expired_one_microsecond_more_is() -> None:
    session = started()
    assert not session.is_expired(T0 + timedelta(minutes=30))
    assert session.is_expired(T0 + timedelta(minutes=30, microseconds=1))


def test_time_out_is_stamped_when_the_session_went_idle_not_when_noticed() -> None:
    session = started()
    noticed = T0 + timedelta(hours=5)
    assert session.time_out(detected_at=noticed)
    [(name, payload)] = new_events(session)
    assert name == "TimedOut"
    assert payload["occurred_at"] == T0 + timedelta(minutes=30)
    assert payload["detected_at"] == noticed
    assert payload["idle_since"] == T0
    assert payload["reason"] == "idle"


def test_time_out_before_the_deadline_appends_nothing() -> None:
    session = started()
    assert not session.time_out(detected_at=T0 + timedelta(minutes=29))
    assert new_events(session) == []


def test_open_task_extends_the_idle_timeout() -> None:
    session = started(SessionPolicy(task_idle_timeout=timedelta(minutes=90)))
    session.start_task("refund", at=T0)
    assert not session.is_expired(T0 + timedelta(minutes=89))
    assert session.is_expired(T0 + timedelta(minutes=90, seconds=1))
    session.complete_task("refund", at=T0 + timedelta(minutes=10))
    assert session.is_expired(T0 + timedelta(minutes=40, seconds=1))


def test_max_session_length_caps_an_always_busy_session() -> None:
    session = started(SessionPolicy(idle_timeout=timedelta(minutes=30), max_session_length=timedelta(hours=1)))
    for minute in range(10, 60, 10):
        session.receive("still here", at=T0 + timedelta(minutes=minute))
    session.collect_events()
    assert session.expiry() == (T0 + timedelta(hours=1), "max_length")
    assert session.time_out(detected_at=T0 + timedelta(hours=1, seconds=1))
    [(_, payload)] = new_events(session)
    assert payload["occurred_at"] == T0 + timedelta(hours=1)
    assert payload["reason"] == "max_length"


def test_rejected_commands_append_nothing() -> None:
    session = started()
    with pytest.raises(InvalidCommandError):
        session.receive("   ", at=T0)
    with pytest.raises(InvalidCommandError):
        session.receive("earlier", at=T0 - timedelta(seconds=1))
    with pytest.raises(TaskStateError):
        session.complete_task("never-started", at=T0)
    with pytest.raises(SessionTimedOutError):
        session.send("too late", at=T0 + timedelta(hours=1))
    with pytest.raises(InvalidCommandError):
        session.set_slot("k", 1, at=T0, scope="galaxy")  # type: ignore[arg-type]
    assert new_events(session) == []
    session.end(at=T0)
    new_events(session)
    with pytest.raises(SessionClosedError):
        session.receive("after the end", at=T0)
    assert new_events(session) == []


def test_naive_datetimes_are_refused() -> None:
    session = started()
    with pytest.raises(ValueError, match="no timezone"):
        session.receive("hi", at=datetime(2026, 3, 2, 14, 1))
