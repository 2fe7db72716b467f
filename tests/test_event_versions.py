"""Versioned events (issue 11): every event class has a ``class_version``; an
event stored at an older version is upcast by the upcasters next to its class
before it is validated, on every decode path; one stored by a newer release is
refused with :class:`EventVersionError`; a snapshot of another version is passed
over and the aggregate replayed from its events, never mis-read.

Version-1 data is written by version-1 classes through the ledger's own mapper
and recorder into a real SQLite file and PostgreSQL schema, then read back, as
stored, under the version-2 classes (``tests/versioned_events.py``; helpers
``read_stored_as``). ``Session``'s own classes are only bumped in the tests that
say so, with ``monkeypatch``, to reach the fast and sealed decoders.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Literal

import pytest
from chatledger import ChatLedger, EventVersionError, ManualClock
from chatledger.domain.erasure import ERASED_METADATA, ERASED_TEXT
from chatledger.domain.pydantic_aggregates import DomainEvent
from chatledger.domain.session import Session
from chatledger.infrastructure.personal_fields import PERSONAL_FIELDS
from pydantic import Field, JsonValue

from .helpers import read_stored_as, stored_states
from .versioned_events import NoteV1, NoteV2, NoteV3

V1_TO_V2 = {NoteV1.Titled: NoteV2.Titled, NoteV1.Coloured: NoteV2.Coloured, NoteV1.Signed: NoteV2.Signed}


def write_v1_note(ledger: ChatLedger, clock: ManualClock) -> Any:
    """A note written by the version-1 classes (an older release)."""
    note = NoteV1.create(at=clock())
    note.trigger_event(NoteV1.Titled, occurred_at=clock(), title="Minutes")
    note.trigger_event(NoteV1.Coloured, occurred_at=clock(), colour="red", shade="crimson")
    note.trigger_event(NoteV1.Signed, occurred_at=clock(), author="Ada Lovelace")
    ledger.save(note)
    return note.id


def by_type(events: list[Any]) -> dict[str, Any]:
    return {type(e).__name__: e for e in events}


def test_version_1_is_stored_as_the_library_stores_it(ledger: ChatLedger, clock: ManualClock) -> None:
    note_id = write_v1_note(ledger, clock)
    states = stored_states(ledger, note_id)
    assert len(states) == 4
    assert all(b"class_version" not in s for s in states)  # stores of today are unchanged
    assert [type(e) for e in read_stored_as(ledger, note_id)] == [
        NoteV1.Created, NoteV1.Titled, NoteV1.Coloured, NoteV1.Signed,
    ]  # fmt: skip


def test_a_renamed_field_is_upcast(ledger: ChatLedger, clock: ManualClock) -> None:
    note_id = write_v1_note(ledger, clock)
    titled = by_type(read_stored_as(ledger, note_id, V1_TO_V2))["Titled"]
    assert isinstance(titled, NoteV2.Titled)
    assert titled.heading == "Minutes"
    assert "title" not in titled.model_dump()


def test_a_removed_field_is_upcast(ledger: ChatLedger, clock: ManualClock) -> None:
    note_id = write_v1_note(ledger, clock)
    coloured = by_type(read_stored_as(ledger, note_id, V1_TO_V2))["Coloured"]
    assert isinstance(coloured, NoteV2.Coloured)
    assert coloured.model_dump(include={"colour", "shade"}) == {"colour": "red"}


def test_a_split_field_is_upcast(ledger: ChatLedger, clock: ManualClock) -> None:
    note_id = write_v1_note(ledger, clock)
    events = read_stored_as(ledger, note_id, V1_TO_V2)
    signed = by_type(events)["Signed"]
    assert isinstance(signed, NoteV2.Signed)
    assert (signed.first_name, signed.last_name) == ("Ada", "Lovelace")
    # The upcast events rebuild the aggregate the new code expects.
    note = None
    for event in events:
        note = event.mutate(note)
    assert (note.heading, note.colour, note.first_name, note.last_name) == ("Minutes", "red", "Ada", "Lovelace")  # type: ignore[union-attr]


def test_upcasters_run_in_turn_from_the_stored_version(ledger: ChatLedger, clock: ManualClock) -> None:
    v1_id = write_v1_note(ledger, clock)
    v2 = NoteV2.create(at=clock())
    v2.trigger_event(NoteV2.Signed, occurred_at=clock(), first_name="Grace", last_name="Hopper")
    ledger.save(v2)
    [v1_signed] = [e for e in read_stored_as(ledger, v1_id, {NoteV1.Signed: NoteV3.Signed}) if isinstance(e, NoteV3.Signed)]
    [v2_signed] = [e for e in read_stored_as(ledger, v2.id, {NoteV2.Signed: NoteV3.Signed}) if isinstance(e, NoteV3.Signed)]
    assert (v1_signed.first_name, v1_signed.last_name) == ("Ada", "LOVELACE")  # v1 -> v2 -> v3
    assert (v2_signed.first_name, v2_signed.last_name) == ("Grace", "HOPPER")  # v2 -> v3


def test_the_current_version_is_stored_with_it_and_read_without_upcasting(
    ledger: ChatLedger, clock: ManualClock
) -> None:
    note = NoteV2.create(at=clock())
    note.trigger_event(NoteV2.Titled, occurred_at=clock(), heading="Agenda")
    ledger.save(note)
    created, titled = stored_states(ledger, note.id)
    assert b"class_version" not in created  # NoteV2.Created is at version 1
    assert titled.endswith(b',"class_version":2}')
    assert json.loads(titled)["heading"] == "Agenda"
    # Read at its own version: no upcaster runs (this one would fail on v2 data).
    [_, event] = read_stored_as(ledger, note.id)
    assert isinstance(event, NoteV2.Titled) and event.heading == "Agenda"
    assert ledger.repository.get(note.id).heading == "Agenda"


def test_an_event_of_a_newer_version_is_refused_not_misread(ledger: ChatLedger, clock: ManualClock) -> None:
    """An old process (version-1 classes) meets what a new one (version 2) wrote."""
    note = NoteV2.create(at=clock())
    note.trigger_event(NoteV2.Titled, occurred_at=clock(), heading="Agenda")
    ledger.save(note)
    with pytest.raises(EventVersionError) as caught:
        read_stored_as(ledger, note.id, {NoteV2.Titled: NoteV1.Titled})
    err = caught.value
    assert (err.event, err.stored, err.current) == ("NoteV1.Titled", 2, 1)
    assert (err.originator_id, err.originator_version) == (note.id, 2)
    assert "NoteV1.Titled" in str(err) and "class_version 2" in str(err) and "version 1" in str(err)
    with pytest.raises(EventVersionError, match="up to version 2"):
        v3 = NoteV3.Signed(
            originator_id=note.id, originator_version=3, timestamp=clock(), occurred_at=clock(),
            first_name="A", last_name="B",
        )  # fmt: skip
        ledger.recorder.insert_events([ledger.mapper.to_stored_event(v3)])
        read_stored_as(ledger, note.id, {NoteV1.Titled: NoteV2.Titled, NoteV3.Signed: NoteV2.Signed})


def test_a_version_without_its_upcaster_is_refused_when_defined() -> None:
    with pytest.raises(TypeError, match="upcast_v2_v3"):

        class Incomplete(DomainEvent):
            class_version = 3
            upcast_v1_v2 = staticmethod(lambda state: None)


# ------------------------------------------------------------------ a real event class


class MessageReceivedV2(Session.Event):
    """``Session.MessageReceived`` as a later release might define it: ``text``
    renamed ``body``. ``text`` is a personal (encrypted) field."""

    class_version = 2
    body: str
    client_message_id: str | None = None
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    role: Literal["user"] = "user"

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["body"] = state.pop("text")


def test_a_stored_message_reads_under_a_renamed_personal_field(ledger: ChatLedger) -> None:
    """Upcasters run on the decrypted state: the envelope stored at ``text`` is
    opened there (its associated data names that path) before ``body`` exists."""
    turn = ledger.receive("visitor-1", "Hello there", client_message_id="c-1", metadata={"plan": "gold"})
    states = stored_states(ledger, turn.session_id)
    assert b'"text":{"$enc"' in states[1] and b"Hello there" not in states[1]
    [message] = [e for e in read_stored_as(ledger, turn.session_id, {Session.MessageReceived: MessageReceivedV2})
                 if isinstance(e, MessageReceivedV2)]  # fmt: skip
    assert (message.body, message.client_message_id, message.metadata) == ("Hello there", "c-1", {"plan": "gold"})
    ledger.erase(visitor_id="visitor-1")
    [message] = [e for e in read_stored_as(ledger, turn.session_id, {Session.MessageReceived: MessageReceivedV2})
                 if isinstance(e, MessageReceivedV2)]  # fmt: skip
    assert (message.body, message.client_message_id, message.metadata) == (ERASED_TEXT, None, ERASED_METADATA)


@pytest.fixture
def bump_slot_set(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Yields a function that makes ``Session.SlotSet`` version 2 (a slot value
    is stored wrapped: ``{"v1": value}`` for those stored at version 1)."""

    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["value"] = {"v1": state["value"]}

    def bump() -> None:
        monkeypatch.setattr(Session.SlotSet, "class_version", 2)
        monkeypatch.setattr(Session.SlotSet, "upcast_v1_v2", staticmethod(upcast_v1_v2), raising=False)

    yield bump  # type: ignore[misc]


def test_a_bumped_real_event_on_every_decode_path_and_a_rolling_deploy(
    database_url: str, clock: ManualClock, bump_slot_set: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ChatLedger.open(database_url, clock=clock) as old:
        sid = old.receive("visitor-1", "hi").session_id
        old.set_slot(sid, "plan", "gold")
        old.catch_up()

    bump_slot_set()  # the new release
    with ChatLedger.open(database_url, clock=clock) as new:
        assert new.session(sid).slots["plan"] == {"v1": "gold"}  # fast decoder, decrypted, upcast
        records = new.recorder.select_notifications(start=0, limit=100)
        [v1_record] = [r for r in records if r.topic.endswith("Session.SlotSet")]
        general = new.mapper.to_domain_event(v1_record)
        assert general.value == {"v1": "gold"}
        assert new.mapper.to_sealed_event(v1_record) == general  # type: ignore[attr-defined]
        new.set_slot(sid, "tier", "silver")  # written at version 2
        records = new.recorder.select_notifications(start=0, limit=100)
        [_, v2_record] = [r for r in records if r.topic.endswith("Session.SlotSet")]
        assert bytes(v2_record.state).endswith(b',"class_version":2}')
        assert new.mapper.to_domain_event(v2_record).value == "silver"  # no upcast at its own version
        assert new.mapper.to_sealed_event(v2_record).value == {"$sealed": True}  # type: ignore[attr-defined]
        assert new.verify().ok

    with ChatLedger.open(database_url, clock=clock) as upgraded:
        state = upgraded.session(sid)
        assert state.slots == {"plan": {"v1": "gold"}, "tier": "silver"}

    monkeypatch.undo()  # an old process still running on the same database
    with ChatLedger.open(database_url, clock=clock) as old:
        with pytest.raises(EventVersionError) as caught:
            old.session(sid)
        assert (caught.value.event, caught.value.stored, caught.value.current) == ("Session.SlotSet", 2, 1)
        # A read model stops at the event (it never skips it) and records no failure.
        with pytest.raises(EventVersionError):
            old.catch_up()
        assert old.projection_failures() == []

    bump_slot_set()  # that process upgraded: its read models go on from where they stopped
    with ChatLedger.open(database_url, clock=clock) as new:
        new.catch_up()
        assert new.projection_failures() == []
        assert all(s.lag == 0 for s in new.projection_status())


# ------------------------------------------------------------------ snapshots


def test_a_snapshot_of_another_version_is_passed_over_and_replaced(
    database_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ChatLedger.open(database_url, clock=clock, snapshot_interval=3) as ledger:
        sid = ledger.receive("visitor-1", "one").session_id
        ledger.reply(sid, "two")  # version 3: a snapshot
        ledger.receive("visitor-1", "three")
        ledger.reply(sid, "four")  # version 5
        assert [s.originator_version for s in ledger.snapshots.get(sid)] == [3]  # type: ignore[union-attr]
        # A snapshot at version 5 that, if read, gives a different state than the
        # events do (one message instead of four): it shows when a snapshot is used.
        wrong = copy.deepcopy(ledger.repository.get(sid))
        wrong.messages = wrong.messages[:1]
        ledger.snapshots.put([Session.Snapshot.take(wrong)])  # type: ignore[union-attr]
        [row] = list(ledger.snapshots.recorder.select_events(sid))  # type: ignore[union-attr]
        assert row.originator_version == 5 and bytes(row.state).endswith(
            b',"class_version":%d}' % Session.Snapshot.class_version
        )

    with ChatLedger.open(database_url, clock=clock, snapshot_interval=3) as same_version:
        assert len(same_version.session(sid).messages) == 1  # the same version reads its own snapshot

    monkeypatch.setattr(Session.Snapshot, "class_version", Session.Snapshot.class_version + 1)  # shape changed
    with ChatLedger.open(database_url, clock=clock, snapshot_interval=3) as ledger:
        assert list(ledger.snapshots.get(sid)) == []  # type: ignore[union-attr]
        state = ledger.session(sid)
        assert [m.text for m in state.messages] == ["one", "two", "three", "four"]
        assert state == ledger.session(sid, as_of=clock())  # == replaying every event
        clock.advance(timedelta(seconds=1))
        ledger.reply(sid, "five")  # version 6: a fresh snapshot, at the new class version
        [row] = list(ledger.snapshots.recorder.select_events(sid))  # type: ignore[union-attr]
        assert row.originator_version == 6 and bytes(row.state).endswith(
            b',"class_version":%d}' % Session.Snapshot.class_version
        )

    with ChatLedger.open(database_url, clock=clock, snapshot_interval=3) as ledger:
        [snapshot] = list(ledger.snapshots.get(sid))  # type: ignore[union-attr]
        assert snapshot.originator_version == 6
        assert ledger.session(sid) == ledger.session(sid, as_of=clock())

    monkeypatch.undo()  # an old process passes over the newer snapshot too
    with ChatLedger.open(database_url, clock=clock, snapshot_interval=3) as ledger:
        assert list(ledger.snapshots.get(sid)) == []  # type: ignore[union-attr]
        assert [m.text for m in ledger.session(sid).messages] == ["one", "two", "three", "four", "five"]


def test_a_visitor_snapshot_of_another_version_is_passed_over(
    database_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Visitor snapshots hold no personal field: the plain decoder's path."""
    from chatledger.domain.visitor import Visitor

    from .helpers import visitor_stream_id

    vid = visitor_stream_id("visitor-1")
    with ChatLedger.open(database_url, clock=clock, snapshot_interval=2) as ledger:
        ledger.receive("visitor-1", "hi")  # Registered, SessionOpened: a snapshot at 2
        ledger.link_identity("visitor-1", "user-1")  # version 3
        assert [s.originator_version for s in ledger.snapshots.get(vid)] == [2]  # type: ignore[union-attr, arg-type]
        wrong = copy.deepcopy(ledger.repository.get(vid))
        wrong.session_ids = []  # a snapshot at 3 that differs from the events
        ledger.snapshots.put([Visitor.Snapshot.take(wrong)])  # type: ignore[union-attr]
    with ChatLedger.open(database_url, clock=clock, snapshot_interval=2) as ledger:
        assert ledger.repository.get(vid).session_ids == []  # the snapshot is what is read
    monkeypatch.setattr(Visitor.Snapshot, "class_version", Visitor.Snapshot.class_version + 1)
    with ChatLedger.open(database_url, clock=clock, snapshot_interval=2) as ledger:
        assert list(ledger.snapshots.get(vid)) == []  # type: ignore[union-attr, arg-type]
        assert len(ledger.repository.get(vid).session_ids) == 1  # replayed from its events


def test_a_session_snapshot_of_release_0_1_0_after_an_erasure_is_not_read(
    database_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0.2.0 changed what ``ContentErased.apply`` builds (client message ids
    are forgotten too): a snapshot 0.1.0 took of a session that went on after
    its visitor's erasure holds the erased client ids, so it is of another
    version and must be replayed, not read."""

    def apply_of_0_1_0(self: Any, s: Any) -> None:  # 0.1.0 kept client message ids
        s.messages = [m.model_copy(update={"text": "[erased]", "metadata": {}}) for m in s.messages]

    with monkeypatch.context() as release_0_1_0:
        release_0_1_0.setattr(Session.ContentErased, "apply", apply_of_0_1_0)
        release_0_1_0.setattr(Session.Snapshot, "class_version", 1)  # what 0.1.0 wrote
        for cls in (Session.MessageReceived, Session.MessageSent):  # client ids in plaintext
            release_0_1_0.setitem(PERSONAL_FIELDS, cls, ("text", "metadata"))
        with ChatLedger.open(database_url, clock=clock, snapshot_interval=4) as old:
            sid = old.receive("visitor-1", "my card ends 4242", client_message_id="secret-id").session_id
            old.erase(visitor_id="visitor-1")  # ContentErased at version 2
            old.reply(sid, "noted")
            old.receive("visitor-1", "still there?")  # version 4: a snapshot, under the new key
            [row] = list(old.snapshots.recorder.select_events(sid))  # type: ignore[union-attr]
            assert row.originator_version == 4 and b"class_version" not in row.state

    with ChatLedger.open(database_url, clock=clock, snapshot_interval=4) as new:
        state = new.session(sid)
        assert state.messages[0].client_message_id is None  # as replaying the events gives
        assert state == new.session(sid, as_of=clock())
        # and a retry of the erased message is a new message, not a duplicate
        assert not new.receive("visitor-1", "my card ends 4242", client_message_id="secret-id").duplicate
