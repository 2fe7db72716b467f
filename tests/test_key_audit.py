"""``verify`` covers the key table: a key may be missing only where an erasure record says so."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from uuid import UUID

import pytest
from chatledger import ChatLedger, ManualClock
from chatledger.domain.erasure import ERASED_TEXT

from .audit_helpers import RawDB


@dataclass
class Keys:
    ledger: ChatLedger
    raw: RawDB
    url: str
    alice: UUID
    bob: UUID

    def kid(self, visitor_id: str) -> str:
        rows = self.raw.execute("SELECT kid FROM chatledger_keys WHERE visitor_id=?", (visitor_id,))
        assert len(rows) == 1
        return str(rows[0][0])


@pytest.fixture
def keys(database_url: str, clock: ManualClock) -> Iterator[Keys]:
    ledger = ChatLedger.open(database_url, clock=clock)
    alice = ledger.receive("v-alice", "alice's secret").session_id
    ledger.set_slot(alice, "card", "4242")
    bob = ledger.receive("v-bob", "bob's secret").session_id
    ledger.reply(bob, "hello bob")
    assert ledger.verify().ok
    yield Keys(ledger, RawDB(database_url), database_url, alice, bob)
    ledger.close()


def breaks(ledger: ChatLedger, session_id: UUID | None = None) -> list[tuple[str, str]]:
    report = ledger.verify(session_id)
    return [(b.kind, b.detail) for b in report.breaks]


def test_a_deleted_key_row_is_reported_with_its_key_and_visitor(keys: Keys) -> None:
    kid = keys.kid("v-alice")
    keys.raw.execute("DELETE FROM chatledger_keys WHERE kid=?", (kid,))
    with ChatLedger.open(keys.url) as fresh:
        # The content now reads as erased, with no erasure on record ...
        assert fresh.session(keys.alice).messages[0].text == ERASED_TEXT
        report = fresh.verify()
        assert not report.ok
        assert [b.kind for b in report.breaks] == ["missing key"]
        first = report.breaks[0]
        assert kid in first.detail and "'v-alice'" in first.detail
        assert first.originator_id == str(keys.alice) and first.version == 1
        # ... and the session's own verification sees it too; Bob's does not.
        assert [k for k, _ in breaks(fresh, keys.alice)] == ["missing key"]
        assert fresh.verify(keys.bob).ok


def test_overwritten_key_bytes_are_reported(keys: Keys) -> None:
    kid = keys.kid("v-bob")
    keys.raw.execute("UPDATE chatledger_keys SET key=? WHERE kid=?", (os.urandom(32), kid))
    with ChatLedger.open(keys.url) as fresh:
        found = breaks(fresh)
    assert [k for k, _ in found] == ["altered key"]
    assert kid in found[0][1] and "'v-bob'" in found[0][1]


def test_a_key_row_truncated_to_another_length_is_reported(keys: Keys) -> None:
    keys.raw.execute("UPDATE chatledger_keys SET key=? WHERE visitor_id=?", (b"short", "v-alice"))
    with ChatLedger.open(keys.url) as fresh:
        assert [k for k, _ in breaks(fresh)] == ["altered key"]


def test_a_real_erasure_verifies(keys: Keys) -> None:
    keys.ledger.erase(visitor_id="v-alice")
    assert keys.raw.execute("SELECT kid FROM chatledger_keys WHERE visitor_id=?", ("v-alice",)) == []
    with ChatLedger.open(keys.url) as fresh:
        assert fresh.verify().ok
        assert fresh.verify(keys.alice).ok  # the receipt is on the visitor, found for a session too
        # Alice comes back: a new key, also covered.
        fresh.receive("v-alice", "back again")
        assert fresh.verify().ok


def test_a_destroyed_key_put_back_is_reported(keys: Keys) -> None:
    kid = keys.kid("v-alice")
    row = keys.raw.execute("SELECT kid, visitor_id, key, created_at FROM chatledger_keys WHERE kid=?", (kid,))[0]
    keys.ledger.erase(visitor_id="v-alice")
    keys.raw.execute("INSERT INTO chatledger_keys VALUES (?,?,?,?)", row)  # from a backup
    with ChatLedger.open(keys.url) as fresh:
        found = breaks(fresh)
    assert [k for k, _ in found] == ["resurrected key"]
    assert kid in found[0][1]


def test_a_forged_destroyed_key_row_without_an_erasure_record_is_not_enough(keys: Keys) -> None:
    """``chatledger_destroyed_keys`` is not chained: only an erasure in the log accounts for a key."""
    kid = keys.kid("v-bob")
    keys.raw.execute("DELETE FROM chatledger_keys WHERE kid=?", (kid,))
    keys.raw.execute("INSERT INTO chatledger_destroyed_keys VALUES (?)", (kid,))
    with ChatLedger.open(keys.url) as fresh:
        assert [k for k, _ in breaks(fresh)] == ["missing key"]


def test_the_cli_exits_1_on_a_missing_key(keys: Keys) -> None:
    from chatledger.entrypoints.cli import app
    from typer.testing import CliRunner

    keys.raw.execute("DELETE FROM chatledger_keys WHERE visitor_id=?", ("v-bob",))
    result = CliRunner().invoke(app, ["audit", "verify", "-d", keys.url])
    assert result.exit_code == 1, result.output
    assert "BROKEN" in result.output and "missing key" in result.output and "v-bob" in result.output


def test_keys_are_checked_in_batches_while_the_log_is_read(
    database_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Key look-ups interleave with reading the events (in the same snapshot)."""
    from chatledger.infrastructure import key_audit

    monkeypatch.setattr(key_audit, "KEY_CHECK_BATCH", 2)
    with ChatLedger.open(database_url, clock=clock) as ledger:
        for n in range(7):
            ledger.receive(f"v-{n}", f"secret {n}")
        ledger.erase(visitor_id="v-5")
        assert ledger.verify().ok
    raw = RawDB(database_url)
    raw.execute("DELETE FROM chatledger_keys WHERE visitor_id=?", ("v-1",))
    raw.execute("UPDATE chatledger_keys SET key=? WHERE visitor_id=?", (os.urandom(32), "v-4"))
    with ChatLedger.open(database_url) as fresh:
        found = breaks(fresh)
    assert sorted(k for k, _ in found) == ["altered key", "missing key"]
    assert any("'v-1'" in d for k, d in found if k == "missing key")
    assert any("'v-4'" in d for k, d in found if k == "altered key")


def test_an_earlier_erasure_of_the_visitor_does_not_explain_a_later_key_deleted_by_hand(keys: Keys) -> None:
    """A receipt explains only the keys it destroyed: not a key the visitor got after
    it, deleted outside the ledger with a forged ``chatledger_destroyed_keys`` row."""
    keys.ledger.erase(visitor_id="v-alice")
    back = keys.ledger.receive("v-alice", "alice is back with a new secret").session_id
    kid = keys.kid("v-alice")
    keys.raw.execute("DELETE FROM chatledger_keys WHERE kid=?", (kid,))
    keys.raw.execute("INSERT INTO chatledger_destroyed_keys VALUES (?)", (kid,))
    with ChatLedger.open(keys.url) as fresh:
        assert fresh.session(back).messages[0].text == ERASED_TEXT
        assert [k for k, _ in breaks(fresh)] == ["missing key"]
        assert [k for k, _ in breaks(fresh, back)] == ["missing key"]


def test_another_visitors_erasure_does_not_explain_a_key_deleted_by_hand(keys: Keys) -> None:
    """``chatledger_key_subjects`` is not chained either: pointing Bob's session at an
    erased visitor does not make Bob's deleted key look erased."""
    keys.ledger.erase(visitor_id="v-alice")
    kid = keys.kid("v-bob")
    keys.raw.execute("DELETE FROM chatledger_keys WHERE kid=?", (kid,))
    keys.raw.execute("INSERT INTO chatledger_destroyed_keys VALUES (?)", (kid,))
    keys.raw.execute("UPDATE chatledger_key_subjects SET visitor_id=? WHERE visitor_id=?", ("v-alice", "v-bob"))
    with ChatLedger.open(keys.url) as fresh:
        assert [k for k, _ in breaks(fresh)] == ["missing key"]
        assert [k for k, _ in breaks(fresh, keys.bob)] == ["missing key"]
