"""One event a read model cannot apply does not stop the read models: it is
recorded (which read model, which event, the error, never the content),
skipped by that read model only, shown by ``projection_status()`` and
``chatledger projections status``, listed by ``projection_failures()``, and
applied again by a rebuild after the fix. Errors of the database itself still
stop a catch-up, to be retried."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, ClassVar

import pytest
from chatledger import (
    ChatLedger,
    ConfigurationError,
    ManualClock,
    ProjectionFailure,
    ProjectionStatus,
)
from chatledger.domain.session import Session
from chatledger.entrypoints.cli import app
from chatledger.infrastructure.settings import Settings
from chatledger.projections import DEFAULT_READ_MODELS, ConversationLog
from typer.testing import CliRunner

from .helpers import log_head, store_unchecked

MARKER = "this text is refused by PickyLog"
TRANSIENT = "this text makes PickyLog's database fail"


def _picky_message(self: Any, e: Any, notification_id: int) -> None:
    if e.text == MARKER:
        raise RuntimeError("PickyLog refuses the marker")
    if e.text == TRANSIENT:
        raise sqlite3.OperationalError("disk I/O error")
    ConversationLog.handlers[type(e)](self, e, notification_id)


class PickyLog(ConversationLog):
    """The conversation log with a bug: it cannot apply one particular text."""

    name = "conversation_log"

    personal_fields = ConversationLog.personal_fields
    handlers: ClassVar[dict[Any, Any]] = {
        **ConversationLog.handlers,
        Session.MessageReceived: _picky_message,
    }


def _open(url: str, clock: ManualClock, log: type = PickyLog) -> ChatLedger:
    models = [log if m is ConversationLog else m for m in DEFAULT_READ_MODELS]
    return ChatLedger(Settings(database_url=url), clock=clock, read_models=models)


@pytest.fixture
def picky(database_url: str, clock: ManualClock) -> Iterator[ChatLedger]:
    ledger = _open(database_url, clock)
    yield ledger
    ledger.close()


def _texts(ledger: ChatLedger, visitor_id: str) -> list[str]:
    return [m.text for m in ledger.transcript(visitor_id=visitor_id).messages]


def _status(ledger: ChatLedger) -> dict[str, ProjectionStatus]:
    return {s.name: s for s in ledger.projection_status()}


def test_an_event_one_read_model_cannot_apply_is_recorded_and_skipped_by_it_only(
    picky: ChatLedger, clock: ManualClock
) -> None:
    first = picky.receive("ana", "hello")
    bad = picky.receive("ana", MARKER)
    bad_position = log_head(picky)
    picky.receive("ana", "still here")
    picky.receive("ben", "another visitor")

    applied = picky.catch_up()  # no exception: before, every catch-up raised here

    assert applied > 0
    status = _status(picky)
    assert {s.lag for s in status.values()} == {0}
    assert {n: s.failed for n, s in status.items()} == {
        "conversation_log": 1, "analytics": 0, "memory": 0, "active_sessions": 0, "message_gaps": 0,
    }  # fmt: skip
    assert _texts(picky, "ana") == ["hello", "still here"]
    assert _texts(picky, "ben") == ["another visitor"]
    assert picky.analytics().messages == 4  # the other read models applied it
    assert picky.memory(visitor_id="ana").known

    [failure] = picky.projection_failures()
    marker_event = [e for e in picky.session_events(bad.session_id) if getattr(e, "text", None) == MARKER]
    assert failure == ProjectionFailure(
        projection="conversation_log",
        notification_id=bad_position,
        originator_id=first.session_id,
        originator_version=marker_event[0].originator_version,
        topic="chatledger.domain.session:Session.MessageReceived",
        error_type="RuntimeError",
        error_message="PickyLog refuses the marker",
        failed_at=failure.failed_at,
    )
    assert failure.failed_at.tzinfo is not None
    assert picky.projection_failures("conversation_log") == [failure]
    assert picky.projection_failures("analytics") == []

    # Durable, and not recorded twice: a later catch-up goes on from after it.
    clock.advance(timedelta(seconds=5))
    picky.receive("ana", "later")
    assert picky.catch_up() > 0
    assert picky.projection_failures() == [failure]
    assert _texts(picky, "ana") == ["hello", "still here", "later"]


def test_only_the_bad_events_of_a_batch_are_skipped_in_bulk_and_live(
    picky: ChatLedger, clock: ManualClock
) -> None:
    """A batch is applied as one transaction; when it fails, it is applied
    again in parts: every good event of it lands, in order, in one pass."""
    texts = []
    for i in range(120):
        text = MARKER if i in (0, 37, 38, 119) else f"message {i}"
        texts.append(text)
        picky.receive(f"v{i % 3}", text)
        clock.advance(timedelta(seconds=1))
    head = log_head(picky)
    picky.projector.catch_up(batch_size=50)  # bulk: more than 4 batches behind
    assert _status(picky)["conversation_log"].failed == 4
    for v in range(3):
        expected = [t for i, t in enumerate(texts) if i % 3 == v and t != MARKER]
        assert _texts(picky, f"v{v}") == expected
    assert [f.notification_id for f in picky.projection_failures()] == sorted(
        f.notification_id for f in picky.projection_failures()
    )
    assert _status(picky)["conversation_log"].position == head

    picky.projector.rebuild("conversation_log", batch_size=1000)  # one batch
    assert len(picky.projection_failures()) == 4  # recorded again, not twice
    assert _texts(picky, "v1") == [t for i, t in enumerate(texts) if i % 3 == 1 and t != MARKER]


def test_a_rebuild_after_the_fix_applies_the_event_and_clears_its_failure(
    database_url: str, clock: ManualClock
) -> None:
    with _open(database_url, clock) as picky:
        picky.receive("ana", "hello")
        picky.receive("ana", MARKER)
        picky.catch_up()
        assert _status(picky)["conversation_log"].failed == 1
        picky.projector.rebuild("analytics")  # another read model's rebuild keeps it
        assert len(picky.projection_failures()) == 1

    with _open(database_url, clock, ConversationLog) as fixed:  # the fixed read model
        assert len(fixed.projection_failures()) == 1
        fixed.catch_up()  # a catch-up does not go back
        assert _texts(fixed, "ana") == ["hello"]
        fixed.projector.rebuild("conversation_log")
        assert fixed.projection_failures() == []
        assert _status(fixed)["conversation_log"].failed == 0
        assert _texts(fixed, "ana") == ["hello", MARKER]


def test_an_error_of_the_database_still_stops_the_catch_up_and_skips_nothing(
    picky: ChatLedger,
) -> None:
    picky.receive("ana", "hello")
    picky.receive("ana", TRANSIENT)
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        picky.catch_up()
    assert picky.projection_failures() == []
    assert _status(picky)["conversation_log"].position < log_head(picky)
    with pytest.raises(sqlite3.OperationalError):  # retried, not skipped
        picky.catch_up()
    assert _status(picky)["conversation_log"].failed == 0


def test_a_poisoned_stored_event_is_recorded_without_its_content(
    database_url: str, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A message text with a lone surrogate in the store (accepted before
    input validation existed) made every catch-up fail with a raw
    UnicodeEncodeError, for every read model. On PostgreSQL a NUL does too."""
    poison = "secret words \ud800" if "sqlite" in database_url else "secret words \x00"
    with ChatLedger.open(database_url, clock=clock) as ledger:
        turn = ledger.receive("ana", "hello")
        position = store_unchecked(
            ledger, turn.session_id, Session.MessageReceived,
            text=poison, client_message_id=None, metadata={},
        )  # fmt: skip
        ledger.receive("ben", "after the poison")
        ledger.catch_up()
        status = _status(ledger)
        assert {s.lag for s in status.values()} == {0}
        assert status["conversation_log"].failed == 1
        assert _texts(ledger, "ana") == ["hello"]
        assert _texts(ledger, "ben") == ["after the poison"]
        [failure] = ledger.projection_failures()
        assert failure.notification_id == position
        assert failure.originator_id == turn.session_id
        assert failure.error_type in ("UnicodeEncodeError", "psycopg.DataError")
        assert "secret" not in failure.error_message
        assert f"log position {position}" in caplog.text and "secret" not in caplog.text
        assert ledger.verify().break_count == 0  # the audit chain holds it as any event

        result = CliRunner().invoke(app, ["projections", "status", "-d", database_url])
        assert result.exit_code == 0, result.output
        assert "conversation_log" in result.output and "not applied" in result.output
        assert f"conversation_log: log position {position}, Session.MessageReceived of {turn.session_id}" in result.output
        assert "secret" not in result.output


@pytest.mark.postgres
def test_a_nan_slot_value_on_postgresql_stops_only_memory(postgres_url: str, clock: ManualClock) -> None:
    with ChatLedger.open(postgres_url, clock=clock) as ledger:
        turn = ledger.receive("ana", "hello")
        store_unchecked(
            ledger, turn.session_id, Session.SlotSet, key="score", value=float("nan"), scope="session"
        )
        ledger.receive("ana", "more")
        ledger.catch_up()
        failed = {s.name: s.failed for s in ledger.projection_status()}
        assert failed == {"conversation_log": 0, "analytics": 0, "memory": 1, "active_sessions": 0, "message_gaps": 0}
        assert _texts(ledger, "ana") == ["hello", "more"]
        [failure] = ledger.projection_failures()
        assert failure.topic.endswith("Session.SlotSet") and failure.projection == "memory"
        assert "NaN" not in failure.error_message  # PostgreSQL's detail quotes the value


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydantic, on the unchecked event
def test_an_event_that_cannot_be_decoded_is_recorded_for_each_read_model_that_reads_it(
    database_url: str, clock: ManualClock
) -> None:
    with ChatLedger.open(database_url, clock=clock) as ledger:
        turn = ledger.receive("ana", "hello")
        position = store_unchecked(
            ledger, turn.session_id, Session.MessageReceived,
            text=["secret", "words"], client_message_id=None, metadata={},
        )  # fmt: skip
        ledger.receive("ben", "after")  # (ana's session itself no longer loads)
        ledger.catch_up()
        failures = ledger.projection_failures()
        assert {f.notification_id for f in failures} == {position}
        assert {f.projection for f in failures} == {
            s.name for s in ledger.projection_status() if s.failed
        }
        assert "conversation_log" in {f.projection for f in failures}
        assert all("validation error" in f.error_message for f in failures)
        assert all("secret" not in f.error_message for f in failures)
        assert _texts(ledger, "ana") == ["hello"]
        assert _texts(ledger, "ben") == ["after"]
        assert {s.lag for s in ledger.projection_status()} == {0}


def test_failures_of_an_unknown_read_model_are_refused(ledger: ChatLedger) -> None:
    with pytest.raises(ConfigurationError, match="No read model named 'nope'.*conversation_log"):
        ledger.projection_failures("nope")
