"""PostgreSQL writes in one round trip (issue 12): each batch is one call of the store's
insert function; erasures and stores without the function take the pipelined path."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from chatledger import ChatLedger
from chatledger.infrastructure.postgres.insert_function import FUNCTION_NAME

from .conftest import POSTGRES_CONNINFO

pytestmark = pytest.mark.postgres


def pipelined_calls(ledger: ChatLedger, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the batches written by the pipelined path."""
    recorder: Any = ledger.recorder
    calls: list[int] = []
    inner = recorder.insert_events_in_pipeline

    def counted(stored_events: Any, **kwargs: Any) -> Any:
        calls.append(len(stored_events))
        return inner(stored_events, **kwargs)

    monkeypatch.setattr(recorder, "insert_events_in_pipeline", counted)
    return calls


def hash_rows(ledger: ChatLedger) -> int:
    schema = ledger.recorder.datastore.schema  # type: ignore[attr-defined]
    with psycopg.connect(POSTGRES_CONNINFO) as conn:
        row = conn.execute(f'SELECT count(*) FROM "{schema}".chatledger_event_hashes').fetchone()
    assert row is not None
    return int(row[0])


def test_turns_are_written_by_the_function_and_verify(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ChatLedger.open(postgres_url) as ledger:
        calls = pipelined_calls(ledger, monkeypatch)
        turn = ledger.receive("v-1", "hello")
        ledger.reply(turn.session_id, "hi there")
        ledger.receive("v-1", "and again")
        assert calls == []
        assert hash_rows(ledger) == ledger.recorder.max_notification_id()  # type: ignore[attr-defined]
        assert [m.text for m in ledger.session(turn.session_id).messages] == ["hello", "hi there", "and again"]
        assert ledger.verify().ok
        ledger.erase(visitor_id="v-1")  # an erasure destroys keys: the pipelined path
        assert len(calls) == 1
        assert ledger.verify().ok


def test_a_store_without_the_function_is_written_by_the_pipelined_path(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ChatLedger.open(postgres_url) as ledger:
        turn = ledger.receive("v-1", "hello")
        schema = ledger.recorder.datastore.schema  # type: ignore[attr-defined]
        with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as conn:
            conn.execute(f'DROP FUNCTION "{schema}".{FUNCTION_NAME}')
        calls = pipelined_calls(ledger, monkeypatch)
        ledger.reply(turn.session_id, "hi there")
        ledger.receive("v-1", "and again")
        assert len(calls) == 2
        assert ledger.recorder.insert_function_ready is False  # type: ignore[attr-defined]
        assert [m.text for m in ledger.session(turn.session_id).messages] == ["hello", "hi there", "and again"]
        assert ledger.verify().ok
    with ChatLedger.open(postgres_url) as again:  # opening creates the function again
        calls = pipelined_calls(again, monkeypatch)
        again.receive("v-1", "after reopening")
        assert calls == []
        assert again.verify().ok
