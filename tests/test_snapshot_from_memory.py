"""Snapshots taken from the aggregate being saved equal those the library
rebuilds from the store; the cache never runs ahead of the store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from chatledger import ChatLedger, ManualClock
from chatledger.domain.session import Session

from .helpers import load_session


@pytest.fixture
def small_snapshots(database_url: str, clock: ManualClock) -> Iterator[ChatLedger]:
    ledger = ChatLedger.open(database_url, clock=clock, snapshot_interval=3)
    yield ledger
    ledger.close()


def check_latest_snapshot(ledger: ChatLedger, session_id: object, seen: list[int]) -> None:
    """The session has at most one snapshot, and it equals a rebuild from events."""
    assert ledger.snapshots is not None
    snapshots = list(ledger.snapshots.get(session_id))  # type: ignore[arg-type]
    assert len(snapshots) <= 1
    if not snapshots:
        return
    snapshot = snapshots[0]
    if not seen or seen[-1] != snapshot.originator_version:
        seen.append(snapshot.originator_version)
    rebuilt = None
    for event in ledger.events.get(session_id, lte=snapshot.originator_version):  # type: ignore[arg-type]
        rebuilt = event.mutate(rebuilt)
    assert isinstance(rebuilt, Session)
    expected = Session.Snapshot.take(rebuilt)
    assert snapshot.originator_version == expected.originator_version
    assert snapshot.topic == expected.topic
    assert snapshot.state == expected.state
    for key in ("_created_on", "_modified_on"):  # typed again after the JSON round trip
        assert isinstance(snapshot.state.model_extra[key], datetime)
        assert snapshot.state.model_extra[key] == getattr(rebuilt, key)


def test_snapshots_equal_a_rebuild_from_events(small_snapshots: ChatLedger, clock: ManualClock) -> None:
    ledger = small_snapshots
    turn = ledger.receive("v-1", "hi", client_message_id="m0")
    sid = turn.session_id
    seen: list[int] = []
    for i in range(5):
        clock.advance(timedelta(seconds=5))
        ledger.reply(sid, f"answer {i}")
        check_latest_snapshot(ledger, sid, seen)
        ledger.set_slot(sid, f"k{i}", {"n": i})
        check_latest_snapshot(ledger, sid, seen)
        ledger.receive("v-1", f"question {i}", client_message_id=f"m{i + 1}")
        check_latest_snapshot(ledger, sid, seen)
    for command in (
        lambda: ledger.start_task(sid, "refund"),
        lambda: ledger.link_identity("v-1", "u-1"),
        lambda: ledger.complete_task(sid, "refund"),
    ):
        command()
        check_latest_snapshot(ledger, sid, seen)
    assert len(seen) >= 5 and seen == sorted(seen)


def test_only_the_newest_snapshot_of_each_aggregate_is_kept(small_snapshots: ChatLedger, clock: ManualClock) -> None:
    """Checkpoints do not grow with the conversation: one snapshot row per
    aggregate, however long it runs, and cold reads still start from it."""
    ledger = small_snapshots
    sids = [ledger.receive(f"v-{n}", "hi").session_id for n in range(3)]
    for i in range(30):
        for sid in sids:
            ledger.reply(sid, f"answer {i}")
    assert ledger.snapshots is not None
    for sid in sids:
        versions = [s.originator_version for s in ledger.snapshots.get(sid)]
        assert versions == [30]  # 32 events, snapshots every 3: only the one at 30 is left
    visitor = ledger.visitor("v-0")
    assert visitor is not None
    with ChatLedger.open(ledger.settings.database_url, clock=clock, cache_size=0) as cold:
        for sid in sids:
            assert cold.session(sid) == ledger.session(sid)
            assert cold.session(sid, as_of=clock()) == ledger.session(sid)  # full replay agrees


def test_cache_is_never_ahead_of_the_store(small_snapshots: ChatLedger) -> None:
    ledger = small_snapshots
    turn = ledger.receive("v-2", "hi")
    session = load_session(ledger, turn.session_id)
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
