"""A session's snapshot holds its state, not its messages (issue 12): its size
does not grow with the conversation, the messages are read from the log, a
state read from a snapshot equals the replay of every event (erasure too), and
``secure_delete`` is on only where erased data could survive."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from chatledger import ChatLedger, ManualClock
from chatledger.domain.erasure import ERASED_TEXT
from hypothesis import given, settings
from hypothesis import strategies as st

from .audit_helpers import RawDB
from .helpers import examples


def _snapshot_sizes(ledger: ChatLedger, sid: object) -> list[tuple[int, int]]:
    rows = ledger.snapshots.recorder.select_events(sid)  # type: ignore[union-attr]
    return [(r.originator_version, len(r.state)) for r in rows]


def test_a_session_snapshot_does_not_grow_with_its_messages(database_url: str, clock: ManualClock) -> None:
    with ChatLedger.open(database_url, clock=clock, snapshot_interval=10) as ledger:
        sid = ledger.receive("v-long", "a" * 300).session_id
        for n in range(9):
            ledger.reply(sid, f"reply {n} " + "b" * 300)
        [(version, small)] = _snapshot_sizes(ledger, sid)
        assert version == 10
        for n in range(190):
            ledger.reply(sid, f"reply {n} " + "c" * 300)
        [(version, later)] = _snapshot_sizes(ledger, sid)  # only the newest is kept
        assert version == 200
        assert later < small + 100  # 190 more messages of 300 characters: not in it
        as_replayed = ledger.session(sid, as_of=clock())
    with ChatLedger.open(database_url, clock=clock, snapshot_interval=10) as fresh:
        state = fresh.session(sid)  # from the snapshot, the messages from the log
        assert state == as_replayed
        assert [m.position for m in state.messages] == list(range(200))
        assert state.messages[-1].text.startswith("reply 189 ")
        assert state.messages[0].text == "a" * 300
    # Read before its ledger closed, a state still reads every message after.
    assert [m.text for m in state.messages[:2]] == ["a" * 300, "reply 0 " + "b" * 300]
    assert len(list(state.messages)) == 200


@settings(max_examples=examples(10), deadline=None)
@given(
    texts=st.lists(
        st.text(st.characters(categories=("L", "N", "P", "S", "Zs")), min_size=1, max_size=20).filter(str.strip),
        min_size=1,
        max_size=12,
    ),
    interval=st.integers(2, 5),
    erase_after=st.integers(0, 12),
)
def test_a_state_from_a_snapshot_is_the_replay_of_its_events(
    tmp_path_factory: object, texts: list[str], interval: int, erase_after: int
) -> None:
    """Whatever the cadence and wherever an erasure falls, reading a session
    from its snapshot and stored messages gives what replaying it gives."""
    path = tmp_path_factory.mktemp("snap") / "chat.db"  # type: ignore[attr-defined]
    url = f"sqlite:///{path}"
    clock = ManualClock()
    with ChatLedger.open(url, clock=clock, snapshot_interval=interval) as ledger:
        sid = ledger.receive("v", texts[0], client_message_id="c0").session_id
        for n, text in enumerate(texts[1:], 1):
            clock.advance(timedelta(seconds=1))
            if n == erase_after:
                ledger.erase(visitor_id="v")
                break
            if n % 2:
                ledger.reply(sid, text)
            else:
                ledger.receive("v", text, client_message_id=f"c{n}")
        replayed = ledger.session(sid, as_of=clock())
    with ChatLedger.open(url, clock=clock, snapshot_interval=interval) as fresh:
        state = fresh.session(sid)
    assert state == replayed
    if erase_after < len(texts) and erase_after > 0:
        assert {m.text for m in state.messages} == {ERASED_TEXT}


def test_secure_delete_is_off_on_the_plain_write_path_and_keys_leave_no_bytes(sqlite_url: str) -> None:
    with ChatLedger.open(sqlite_url, snapshot_interval=2) as ledger:
        sid = ledger.receive("v-key", "first").session_id
        for n in range(4):
            ledger.reply(sid, f"reply {n}")  # snapshots replaced: pages freed
        with ledger.recorder.datastore.transaction(commit=False) as c:  # type: ignore[attr-defined]
            c.execute("PRAGMA secure_delete")
            assert c.fetchone()[0] == 0
        raw = RawDB(sqlite_url)
        [(key,)] = raw.execute("SELECT key FROM chatledger_keys")
        key = bytes(key)
        ledger.erase(visitor_id="v-key")
        with ledger.recorder.datastore.transaction(commit=False) as c:  # type: ignore[attr-defined]
            c.execute("PRAGMA secure_delete")
            assert c.fetchone()[0] == 0  # back off after the erasure's transaction
        assert ledger.recorder.purge_free_space()  # type: ignore[attr-defined]
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    dump = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    assert key not in dump
