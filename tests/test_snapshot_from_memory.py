"""Snapshots taken from the aggregate being saved equal those the library
rebuilds from the store; the cache never runs ahead of the store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from chatledger import ChatLedger, ManualClock
from chatledger.domain.session import Session


@pytest.fixture
def small_snapshots(database_url: str, clock: ManualClock) -> Iterator[ChatLedger]:
    ledger = ChatLedger.open(database_url, clock=clock, snapshot_interval=3)
    yield ledger
    ledger.close()


def test_snapshots_equal_a_rebuild_from_events(small_snapshots: ChatLedger, clock: ManualClock) -> None:
    ledger = small_snapshots
    turn = ledger.receive("v-1", "hi", client_message_id="m0")
    for i in range(5):
        clock.advance(timedelta(seconds=5))
        ledger.reply(turn.session_id, f"answer {i}")
        ledger.set_slot(turn.session_id, f"k{i}", {"n": i})
        ledger.receive("v-1", f"question {i}", client_message_id=f"m{i + 1}")
    ledger.start_task(turn.session_id, "refund")
    ledger.link_identity("v-1", "u-1")
    ledger.complete_task(turn.session_id, "refund")
    assert ledger.snapshots is not None
    snapshots = list(ledger.snapshots.get(turn.session_id))
    assert len(snapshots) >= 5
    for snapshot in snapshots:
        rebuilt = None
        for event in ledger.events.get(turn.session_id, lte=snapshot.originator_version):
            rebuilt = event.mutate(rebuilt)
        assert isinstance(rebuilt, Session)
        expected = Session.Snapshot.take(rebuilt)
        assert snapshot.originator_version == expected.originator_version
        assert snapshot.topic == expected.topic
        assert snapshot.state == expected.state
        for key in ("_created_on", "_modified_on"):  # typed again after the JSON round trip
            assert isinstance(snapshot.state.model_extra[key], datetime)
            assert snapshot.state.model_extra[key] == getattr(rebuilt, key)


def test_cache_is_never_ahead_of_the_store(small_snapshots: ChatLedger) -> None:
    ledger = small_snapshots
    turn = ledger.receive("v-2", "hi")
    session = ledger._get_session(turn.session_id)
    session.send("kept", at=session.last_activity_at)
    ledger.save(session)
    session.send("never saved", at=session.last_activity_at)  # mutate after save, don't save
    state = ledger.session(turn.session_id)
    assert [m.text for m in state.messages] == ["hi", "kept"]
    assert state.version == 3
    other = ChatLedger.open(ledger.settings.database_url, clock=ledger.clock)
    try:
        assert other.session(turn.session_id) == state  # a cold read agrees
    finally:
        other.close()
