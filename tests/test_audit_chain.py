"""Tamper evidence: hand-written SQL edits to the log are each detected, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from uuid import UUID, uuid4

import pytest
from chatledger import ChatLedger, ManualClock, UnknownSessionError
from chatledger.domain.visitor import visitor_aggregate_id
from chatledger.entrypoints.cli import app
from chatledger.infrastructure.hashchain import GENESIS, event_hash
from eventsourcing.persistence import StoredEvent
from typer.testing import CliRunner

from .audit_helpers import RawDB


@dataclass
class Scene:
    ledger: ChatLedger
    raw: RawDB
    url: str
    alice: UUID  # a session of 6 events
    bob: UUID  # a session with later events after it


@pytest.fixture
def scene(database_url: str, clock: ManualClock) -> Iterator[Scene]:
    ledger = ChatLedger.open(database_url, clock=clock)
    a = ledger.receive("v-alice", "my card ends 4242").session_id
    ledger.reply(a, "thanks")
    ledger.set_slot(a, "card", "4242")
    b = ledger.receive("v-bob", "hello from bob").session_id
    clock.advance(minutes=1)
    ledger.reply(a, "anything else?")
    ledger.receive("v-alice", "no, bye")
    ledger.receive("v-carol", "carol was here")  # events after everyone else's
    ledger.seal()  # the tampering below is in the sealed range (the tail: test_sealing.py)
    yield Scene(ledger, RawDB(database_url), database_url, a, b)
    ledger.close()


def verify(scene: Scene, session: UUID | None = None) -> object:
    # a fresh ledger: no cache, nothing in memory from before the tampering
    with ChatLedger.open(scene.url) as fresh:
        return fresh.verify(session)


def test_an_untouched_log_verifies(scene: Scene) -> None:
    report = scene.ledger.verify()
    assert report.ok and report.checked == scene.ledger.recorder.max_notification_id()
    assert report.head_position == report.checked == report.sealed_through and len(report.seal_root) == 64
    assert report.tail_count == 0 and report.seals == 1
    session = scene.ledger.verify(scene.alice)
    assert session.ok and session.checked == 6


def test_editing_a_payload_is_detected(scene: Scene) -> None:
    state = json.loads(scene.raw.state(scene.alice, 3))
    state["occurred_at"] = "2025-12-31T23:59:00Z"
    scene.raw.set_state(scene.alice, 3, json.dumps(state).encode())
    report = verify(scene)
    assert not report.ok  # type: ignore[attr-defined]
    first = report.first_break  # type: ignore[attr-defined]
    assert (first.kind, first.originator_id, first.version) == ("altered event", str(scene.alice), 3)
    assert not verify(scene, scene.alice).ok  # type: ignore[attr-defined]
    assert verify(scene, scene.bob).ok  # type: ignore[attr-defined]


def test_editing_a_payload_and_rehashing_its_own_row_is_still_detected(scene: Scene) -> None:
    """An attacker who recomputes the edited event's own hash breaks the next link
    of its session and the seal over it (0.2: the log chain's link at that position)."""
    new_state = scene.raw.state(scene.alice, 3).replace(b"2026", b"2027", 1)
    scene.raw.set_state(scene.alice, 3, new_state)
    pos = scene.raw.execute(
        f"SELECT {scene.raw.position} FROM {scene.raw.events} WHERE originator_id=? AND originator_version=3",
        (scene.raw.id_param(scene.alice),),
    )[0][0]
    prev = scene.raw.execute(
        "SELECT event_hash FROM chatledger_event_hashes WHERE originator_id=? AND originator_version=2",
        (scene.raw.id_param(scene.alice),),
    )[0][0]
    topic = scene.raw.execute(
        f"SELECT topic FROM {scene.raw.events} WHERE originator_id=? AND originator_version=3",
        (scene.raw.id_param(scene.alice),),
    )[0][0]
    forged = event_hash(bytes(prev), scene.alice, 3, topic, new_state)
    scene.raw.execute("UPDATE chatledger_event_hashes SET event_hash=? WHERE notification_id=?", (forged, pos))
    report = verify(scene)
    assert not report.ok  # type: ignore[attr-defined]
    kinds = [(b.kind, b.originator_id, b.version) for b in report.breaks]  # type: ignore[attr-defined]
    assert kinds == [("altered event", str(scene.alice), 4), ("broken seal", "", 0)]
    assert "positions 1-" in report.breaks[1].detail  # type: ignore[attr-defined]


def test_deleting_an_event_is_detected(scene: Scene) -> None:
    scene.raw.delete_event(scene.alice, 2, with_hash=False)
    first = verify(scene).first_break  # type: ignore[attr-defined]
    assert (first.kind, first.originator_id, first.version) == ("missing event", str(scene.alice), 2)


def test_deleting_an_event_and_its_hash_row_is_detected(scene: Scene) -> None:
    scene.raw.delete_event(scene.alice, 4, with_hash=True)
    report = verify(scene)
    kinds = {(b.kind, b.originator_id, b.version) for b in report.breaks}  # type: ignore[attr-defined]
    assert ("broken seal", "", 0) in kinds  # 0.2: "broken log chain"; the seal now holds the log-wide link
    assert ("version gap", str(scene.alice), 5) in kinds
    assert not verify(scene, scene.alice).ok  # type: ignore[attr-defined]


def test_swapping_two_states_is_detected(scene: Scene) -> None:
    s2, s3 = scene.raw.state(scene.alice, 2), scene.raw.state(scene.alice, 3)
    scene.raw.set_state(scene.alice, 2, s3)
    scene.raw.set_state(scene.alice, 3, s2)
    first = verify(scene).first_break  # type: ignore[attr-defined]
    assert (first.kind, first.version) == ("altered event", 2)


def test_swapping_two_versions_is_detected(scene: Scene) -> None:
    scene.raw.swap_versions(scene.alice, 3, 5)
    report = verify(scene)
    assert not report.ok  # type: ignore[attr-defined]
    assert report.first_break.kind == "reordered event"  # type: ignore[attr-defined]
    assert not verify(scene, scene.alice).ok  # type: ignore[attr-defined]


@pytest.mark.parametrize("with_hashes", [False, True])
def test_deleting_a_whole_session_is_detected(scene: Scene, with_hashes: bool) -> None:
    scene.raw.delete_aggregate(scene.bob, with_hashes=with_hashes)
    report = verify(scene)
    assert not report.ok  # type: ignore[attr-defined]
    first = report.first_break  # type: ignore[attr-defined]
    if with_hashes:  # no trace left of bob's session in either table: the seal over it breaks
        assert (first.kind, first.position) == ("broken seal", 1)  # 0.2: "broken log chain"
    else:
        assert (first.kind, first.originator_id, first.version) == ("missing event", str(scene.bob), 1)
    if with_hashes:
        with pytest.raises(UnknownSessionError):
            verify(scene, scene.bob)
    else:  # the chain still remembers bob's session
        assert verify(scene, scene.bob).break_count == 2  # type: ignore[attr-defined]


def test_inserting_an_event_by_hand_is_detected(scene: Scene) -> None:
    state = scene.raw.state(scene.alice, 2)
    scene.raw.execute(
        f"INSERT INTO {scene.raw.events} (originator_id, originator_version, topic, state) "
        f"SELECT originator_id, 99, topic, ? FROM {scene.raw.events} WHERE originator_id=? AND originator_version=2",
        (state, scene.raw.id_param(scene.alice)),
    )
    first = verify(scene).first_break  # type: ignore[attr-defined]
    assert (first.kind, first.version) == ("unchained event", 99)


def test_cli_verify_exits_non_zero_and_names_the_first_break(scene: Scene) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify", "-d", scene.url])
    assert ok.exit_code == 0, ok.output
    assert "OK" in ok.output
    scene.raw.delete_event(scene.alice, 2, with_hash=False)
    broken = runner.invoke(app, ["audit", "verify", "-d", scene.url])
    assert broken.exit_code == 1
    assert "missing event" in broken.output and f"{scene.alice} version 2" in " ".join(broken.output.split())
    as_json = runner.invoke(app, ["audit", "verify", "-d", scene.url, "--session", str(scene.bob), "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.output)["ok"] is True


def test_the_chain_hashes_what_is_stored(scene: Scene) -> None:
    """The first event of a session chains from the genesis hash over its stored bytes."""
    row = scene.raw.execute(
        f"SELECT topic, state FROM {scene.raw.events} WHERE originator_id=? AND originator_version=1",
        (scene.raw.id_param(scene.bob),),
    )[0]
    stored = scene.raw.execute(
        "SELECT event_hash FROM chatledger_event_hashes WHERE originator_id=? AND originator_version=1",
        (scene.raw.id_param(scene.bob),),
    )[0][0]
    assert bytes(stored) == event_hash(GENESIS, scene.bob, 1, row[0], bytes(row[1]))


# --------------------------------------------------------------------------- 100k


def bulk_log(ledger: ChatLedger, events: int, per_session: int = 50, batch: int = 5000) -> None:
    """Append ``events`` stored events straight through the recorder (hash rows included)."""
    topic = "chatledger.domain.session:Session.MessageReceived"
    pending: list[StoredEvent] = []
    sessions = [uuid4() for _ in range(events // per_session)]
    for version in range(1, per_session + 1):
        for sid in sessions:
            body = {"occurred_at": "2026-01-01T09:00:00Z", "text": f"message {version} of {sid.hex[:8]}"}
            pending.append(StoredEvent(sid, version, topic, json.dumps(body).encode()))
            if len(pending) == batch:
                ledger.recorder.insert_events(pending)
                pending = []
    if pending:
        ledger.recorder.insert_events(pending)


@pytest.mark.slow
def test_an_untouched_100k_event_log_verifies_and_one_edit_in_it_is_found(database_url: str) -> None:
    with ChatLedger.open(database_url) as ledger:
        bulk_log(ledger, 100_000)
        report = ledger.verify()
        assert report.ok, report.first_break
        assert report.checked == 100_000 == report.head_position
    raw = RawDB(database_url)
    target = raw.execute(f"SELECT originator_id FROM {raw.events} WHERE {raw.position}=77777")[0][0]
    victim = UUID(str(target))
    state = raw.state(victim, 40)
    raw.set_state(victim, 40, state.replace(b"message", b"massage"))
    with ChatLedger.open(database_url) as ledger:
        report = ledger.verify()
    assert report.break_count == 1 and report.first_break is not None
    assert (report.first_break.originator_id, report.first_break.version) == (str(victim), 40)


def test_verify_of_an_unknown_session_is_refused(ledger: ChatLedger) -> None:
    ledger.receive("v-1", "hi")
    with pytest.raises(UnknownSessionError):
        ledger.verify(uuid4())
    assert ledger.verify(visitor_aggregate_id("v-1")).ok  # any aggregate's chain can be checked
