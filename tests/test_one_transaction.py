"""Issue 9, item 4: one command is one transaction, all or nothing, also when the
database (or its driver) refuses a value half-way through the recorder's work."""

from __future__ import annotations

import pytest
from chatledger import ChatLedger, InvalidTextError, ValueRefusedError

from .audit_helpers import RawDB
from .helpers import log_head, unicode_checks_off

TABLES = ("chatledger_event_hashes", "chatledger_keys", "chatledger_key_subjects")


def row_counts(url: str) -> dict[str, int]:
    raw = RawDB(url)
    return {t: raw.execute(f"SELECT count(*) FROM {t}")[0][0] for t in (raw.events, *TABLES)}


def test_a_nul_visitor_id_is_refused_before_anything_is_written(database_url: str) -> None:
    ledger = ChatLedger.open(database_url)
    try:
        with pytest.raises(InvalidTextError, match="visitor_id"):
            ledger.receive("a\x00b", "hi")
        with pytest.raises(InvalidTextError, match="visitor_id"):
            ledger.receive("a\x00b", "hi")  # a retry writes nothing either
        assert log_head(ledger) == 0
        assert set(row_counts(database_url).values()) == {0}
    finally:
        ledger.close()


@pytest.mark.postgres
def test_a_value_the_database_refuses_rolls_the_whole_command_back(postgres_url: str) -> None:
    """psycopg refuses a NUL in a text parameter client-side, in pipeline mode,
    after the events and their hash rows were sent: the library's recorder then
    committed those (4 events, 4 hash rows, no key). Now the transaction rolls
    back and the refusal is a ChatLedgerError."""
    ledger = ChatLedger.open(postgres_url)
    try:
        with unicode_checks_off():
            for _attempt in range(2):  # a retry must not find half of the first one
                with pytest.raises(ValueRefusedError, match="NUL"):
                    ledger.receive("a\x00b", "hi")
        assert log_head(ledger) == 0
        assert set(row_counts(postgres_url).values()) == {0}
        turn = ledger.receive("ab", "hi")  # the store is fine afterwards
        counts = row_counts(postgres_url)  # (log_head skips the ids the rollbacks used)
        assert counts["chatledger_events"] == counts["chatledger_event_hashes"] == 4
        assert len(ledger.session(turn.session_id).messages) == 1
        assert ledger.verify().ok
    finally:
        ledger.close()
