"""``verify(incremental=True)`` (the console's audit page, issue 15): the seals an earlier clean
check of this process verified are trusted while their seal rows are unchanged; what follows
them is checked in full. Tampering after the cache: in the new part it shows at once, a rewritten
or deleted trusted seal shows at once, and a change inside a trusted range shows in the full check
(the report names the trusted range, so a reader knows what was not re-hashed)."""

from __future__ import annotations

from uuid import UUID

from chatledger import ChatLedger

from .audit_helpers import RawDB


def _talk(ledger: ChatLedger, who: str) -> UUID:
    sid = ledger.receive(f"v-{who}", f"hello from {who}").session_id
    ledger.reply(sid, f"hi {who}")
    return sid


def test_an_incremental_check_trusts_verified_seals_and_checks_the_rest(database_url: str) -> None:
    raw = RawDB(database_url)
    with ChatLedger.open(database_url, seal_every_events=0) as ledger:
        first = [_talk(ledger, w) for w in ("ann", "ben")]
        ledger.seal()
        cold = ledger.verify(incremental=True)  # nothing verified yet in this process: a full check
        assert cold.ok and cold.trusted_seals == 0 and cold.checked == cold.sealed_through > 0
        sealed = cold.sealed_through
        later = _talk(ledger, "cid")
        ledger.seal()
        tail = _talk(ledger, "dan")

        # 1. an event altered after the trusted range (a new seal's range, or the tail): caught
        for sid in (later, tail):
            state = raw.state(sid, 2)
            raw.set_state(sid, 2, state + b" ")
            report = ledger.verify(incremental=True)
            assert report.trusted_seals == (1 if sid == later else 2)  # the failed check trusts nothing after
            assert [b.kind for b in report.breaks] == ["altered event"]
            assert report.breaks[0].originator_id == str(sid)
            raw.set_state(sid, 2, state)
            assert ledger.verify(incremental=True).trusted_seals == 0  # so this one is a full check
        assert ledger.verify(incremental=True).trusted_seals == 2

        # what an incremental check reads: the events after the trusted seals, the seals after them
        sealed = ledger.verify().sealed_through  # the default, the full check, trusts nothing
        _talk(ledger, "eve")
        ledger.seal()
        _talk(ledger, "fay")
        warm = ledger.verify(incremental=True)
        head = ledger.recorder.max_notification_id()
        assert warm.ok and (warm.trusted_seals, warm.trusted_through) == (2, sealed)
        assert warm.trusted_since  # the time of the full check the trusted seals go back to
        assert warm.checked == head - sealed and warm.seals == 3 and warm.tail_count > 0
        assert ledger.verify().trusted_seals == 0

        # 2. inside the trusted range: the incremental check does not re-hash it (and says so) ...
        state = raw.state(first[0], 2)
        raw.set_state(first[0], 2, state + b" ")
        quick = ledger.verify(incremental=True)
        assert quick.ok and quick.trusted_through >= sealed
        full = ledger.verify()  # ... the full check does
        assert [b.kind for b in full.breaks][:1] == ["altered event"]
        raw.set_state(first[0], 2, state)
        assert ledger.verify().ok

        # 3. a trusted seal rewritten, or deleted: caught without re-hashing
        assert ledger.verify(incremental=True).trusted_seals == 3
        raw.execute("UPDATE chatledger_seals SET root=? WHERE seq=1", (bytes(32),))
        rewritten = ledger.verify(incremental=True)
        assert rewritten.trusted_seals == 3 and [b.kind for b in rewritten.breaks] == ["broken seal"]
        assert "not the row an earlier check verified" in rewritten.breaks[0].detail


def test_a_deleted_trusted_seal_is_caught(database_url: str) -> None:
    raw = RawDB(database_url)
    with ChatLedger.open(database_url, seal_every_events=0) as ledger:
        _talk(ledger, "ann")
        ledger.seal()
        _talk(ledger, "ben")
        ledger.seal()
        assert ledger.verify(incremental=True).ok
        raw.execute("DELETE FROM chatledger_seals WHERE seq=2")
        report = ledger.verify(incremental=True)
        assert not report.ok and {b.kind for b in report.breaks} == {"broken seal"}
