"""Reading every message of a session loaded from its snapshot decodes the
stored ones in one pass (one key lookup, one validation of the list): what it
gives is exactly what reading them one at a time, and replaying the events,
give; erased messages read as erased, and concurrent readers agree."""

from __future__ import annotations

import threading
from datetime import timedelta

from chatledger import ChatLedger, ManualClock
from chatledger.domain.erasure import ERASED_METADATA, ERASED_TEXT


def _conversation(url: str, clock: ManualClock, n: int = 40) -> object:
    with ChatLedger.open(url, clock=clock, snapshot_interval=7) as ledger:
        sid = ledger.receive("v", "hello \u00e9\u4e2d \"quoted\" \\ back", client_message_id="c0", metadata={"k": [1, "x"]}).session_id
        for n_ in range(1, n):
            clock.advance(timedelta(seconds=1))
            if n_ % 3 == 0:
                ledger.receive("v", f"user {n_}", client_message_id=f"c{n_}", metadata={"n": n_, "nested": {"a": None}})
            elif n_ % 3 == 1:
                ledger.reply(sid, f"bot {n_} \n line two")
            else:
                ledger.receive("v", f"plain user {n_}")
        return sid


def test_all_at_once_equals_one_at_a_time_equals_the_replay(sqlite_url: str, clock: ManualClock) -> None:
    sid = _conversation(sqlite_url, clock)
    with ChatLedger.open(sqlite_url, clock=clock, snapshot_interval=7) as ledger:
        replayed = list(ledger.session(sid, as_of=clock()).messages)
    with ChatLedger.open(sqlite_url, clock=clock, snapshot_interval=7) as one:
        state = one.session(sid)
        singly = [state.messages[i] for i in range(len(state.messages))]
    with ChatLedger.open(sqlite_url, clock=clock, snapshot_interval=7) as bulk:
        at_once = list(bulk.session(sid).messages)
    assert len(replayed) == 40
    assert at_once == singly == replayed
    for a, r in zip(at_once, replayed, strict=True):
        assert a.model_dump() == r.model_dump()
        assert type(a.at) is type(r.at) and a.at.utcoffset() == r.at.utcoffset()
    assert at_once[0].metadata == {"k": [1, "x"]} and at_once[0].client_message_id == "c0"
    assert at_once[0].text == "hello \u00e9\u4e2d \"quoted\" \\ back"
    assert [m.position for m in at_once] == list(range(40))


def test_slices_and_a_partly_decoded_log_read_the_same(sqlite_url: str, clock: ManualClock) -> None:
    sid = _conversation(sqlite_url, clock)
    with ChatLedger.open(sqlite_url, clock=clock, snapshot_interval=7) as ledger:
        replayed = list(ledger.session(sid, as_of=clock()).messages)
    with ChatLedger.open(sqlite_url, clock=clock, snapshot_interval=7) as ledger:
        messages = ledger.session(sid).messages
        assert messages[5] == replayed[5]  # one decoded on its own first
        assert messages[3:9] == replayed[3:9]
        assert messages[::5] == replayed[::5]
        assert list(messages) == replayed


def test_erased_messages_read_erased_in_bulk(sqlite_url: str, clock: ManualClock) -> None:
    sid = _conversation(sqlite_url, clock)
    with ChatLedger.open(sqlite_url, clock=clock, snapshot_interval=7) as ledger:
        ledger.erase(visitor_id="v")
        replayed = list(ledger.session(sid, as_of=clock()).messages)
    with ChatLedger.open(sqlite_url, clock=clock, snapshot_interval=7) as fresh:
        at_once = list(fresh.session(sid).messages)
    assert at_once == replayed
    assert {m.text for m in at_once} == {ERASED_TEXT}
    assert {m.client_message_id for m in at_once} == {None}
    assert all(m.metadata in ({}, ERASED_METADATA) for m in at_once)
    assert at_once[0].metadata == ERASED_METADATA


def test_concurrent_readers_of_one_cold_session_agree(sqlite_url: str, clock: ManualClock) -> None:
    sid = _conversation(sqlite_url, clock, n=60)
    with ChatLedger.open(sqlite_url, clock=clock, snapshot_interval=7) as ledger:
        replayed = list(ledger.session(sid, as_of=clock()).messages)
    with ChatLedger.open(sqlite_url, clock=clock, snapshot_interval=7) as ledger:
        messages = ledger.session(sid).messages
        results: list[list[object]] = []
        barrier = threading.Barrier(4)

        def read() -> None:
            barrier.wait()
            results.append(list(messages))

        threads = [threading.Thread(target=read) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == 4
    assert all(r == replayed for r in results)


def test_a_cold_session_erased_before_its_messages_are_read_reads_erased(sqlite_url: str, clock: ManualClock) -> None:
    sid = _conversation(sqlite_url, clock)
    with ChatLedger.open(sqlite_url, clock=clock, snapshot_interval=7) as ledger:
        before = ledger.session(sid)  # from the snapshot: rows read, no message decoded
        assert before.messages.stored_count > 0
        ledger.erase(visitor_id="v")
        after = list(ledger.session(sid).messages)
        replayed = list(ledger.session(sid, as_of=clock()).messages)
    assert after == replayed
    assert {m.text for m in after} == {ERASED_TEXT}
    assert {m.client_message_id for m in after} == {None}
