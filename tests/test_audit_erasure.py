"""Erasure by crypto-shredding, checked in the raw database (SQLite file bytes, PostgreSQL rows)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

import pytest
from chatledger import (
    ChatLedger,
    InvalidCommandError,
    ManualClock,
    SessionPolicy,
    UnknownSubjectError,
)
from chatledger.domain.erasure import ERASED_TEXT
from chatledger.domain.visitor import Visitor, visitor_aggregate_id
from chatledger.entrypoints.cli import app
from typer.testing import CliRunner

from .audit_helpers import RawDB
from .helpers import key_ring_caches, log_head

POLICY = SessionPolicy(carry_over_slots=frozenset({"name"}))


def contains(dump: bytes, secret: bytes) -> bool:
    """PostgreSQL prints bytea as hex; SQLite files hold the raw bytes."""
    return secret in dump or secret.hex().encode() in dump


@dataclass
class World:
    ledger: ChatLedger
    raw: RawDB
    url: str
    a_sessions: list[UUID] = field(default_factory=list)
    b_sessions: list[UUID] = field(default_factory=list)
    a_texts: list[str] = field(default_factory=list)
    b_texts: list[str] = field(default_factory=list)


@pytest.fixture
def world(database_url: str, clock: ManualClock) -> Iterator[World]:
    ledger = ChatLedger.open(database_url, clock=clock, policy=POLICY, snapshot_interval=3)
    w = World(ledger, RawDB(database_url), database_url)

    def say(visitor: str, text: str, texts: list[str], sessions: list[UUID]) -> UUID:
        turn = ledger.receive(visitor, text, context={"page_url": f"https://shop/?who={visitor}-pageurl"},
                              metadata={"device": f"{visitor}-device-meta"})
        texts.append(text)
        if turn.session_id not in sessions:
            sessions.append(turn.session_id)
        return turn.session_id

    # User A: an anonymous visit, a login, a returning visit, and a second device.
    s = say("v-a-web", "alpha-secret-1 my address is 1 Main St", w.a_texts, w.a_sessions)
    ledger.reply(s, "alpha-secret-2 noted your address")
    w.a_texts.append("alpha-secret-2 noted your address")
    ledger.set_slot(s, "name", "alpha-secret-name-Anna", scope="user")
    ledger.link_identity("v-a-web", "user-a")
    say("v-b-web", "bravo-secret-1 hello", w.b_texts, w.b_sessions)
    clock.advance(hours=2)
    say("v-a-web", "alpha-secret-3 back again", w.a_texts, w.a_sessions)  # carries the name slot
    say("v-a-phone", "alpha-secret-4 from my phone", w.a_texts, w.a_sessions)
    ledger.link_identity("v-a-phone", "user-a")
    b = say("v-b-web", "bravo-secret-2 still here", w.b_texts, w.b_sessions)
    ledger.set_slot(b, "name", "bravo-secret-name-Bob")
    ledger.link_identity("v-b-web", "user-b")
    yield w
    ledger.close()


def key_bytes(raw: RawDB, visitor_id: str) -> list[bytes]:
    return [bytes(r[0]) for r in raw.execute("SELECT key FROM chatledger_keys WHERE visitor_id=?", (visitor_id,))]


def counts(ledger: ChatLedger, sessions: list[UUID]) -> dict[UUID, tuple[int, int, list[str]]]:
    result = {}
    for sid in sessions:
        steps = list(ledger.history(sid))
        result[sid] = (len(steps), len(steps[-1].state.messages), [type(e).__name__ for e, _ in steps])
    return result


def test_erasing_a_user_shreds_their_content_everywhere_and_nothing_else(world: World) -> None:
    ledger, raw = world.ledger, world.raw
    a_keys = key_bytes(raw, "v-a-web") + key_bytes(raw, "v-a-phone")
    b_keys = key_bytes(raw, "v-b-web")
    assert len(a_keys) == 2 and len(b_keys) == 1
    before_counts = counts(ledger, world.a_sessions + world.b_sessions)
    kids = sorted(r[0] for r in raw.execute("SELECT kid FROM chatledger_keys WHERE visitor_id IN (?, ?)", ("v-a-web", "v-a-phone")))

    dump = raw.dump()
    assert all(contains(dump, k) for k in a_keys + b_keys)  # the search can find what is there
    assert contains(dump, b"v-a-web")  # ids are metadata, stored in the clear
    assert not any(contains(dump, t.encode()) for t in world.a_texts + world.b_texts)  # content never is

    receipt = ledger.erase(user_id="user-a")

    assert receipt.subject == "user" and receipt.user_id == "user-a"
    assert set(receipt.visitor_ids) == {"v-a-web", "v-a-phone"}
    assert set(receipt.session_ids) == set(world.a_sessions)  # the pre-login session too
    assert len(world.a_sessions) == 3
    assert sorted(receipt.key_ids) == kids
    # Started + messages + slot + reply of A's sessions, all encrypted under A's keys
    assert receipt.events_affected == sum(
        sum(1 for n in names if n in ("Started", "MessageReceived", "MessageSent", "SlotSet"))
        for sid, (_, _, names) in before_counts.items()
        if sid in world.a_sessions
    )

    dump = raw.dump()
    assert not any(contains(dump, k) for k in a_keys), "a destroyed key survived in the database"
    assert all(contains(dump, k) for k in b_keys)
    assert not any(contains(dump, t.encode()) for t in world.a_texts)

    # A fresh process (no cache) sees A's content as erased and B's intact.
    with ChatLedger.open(world.url, policy=POLICY) as fresh:
        for sid in world.a_sessions:
            state = fresh.session(sid)
            assert {m.text for m in state.messages} == {ERASED_TEXT}
            # user messages carried metadata (now erased); bot replies had none (stays empty)
            assert all(
                m.metadata == ({"$erased": True} if m.role == "user" else {}) for m in state.messages
            )
            assert all(v is None for v in state.slots.values())
            assert state.context.page_url is None and state.context.client_metadata == {"$erased": True}
            for event, step in fresh.history(sid):
                assert "alpha-secret" not in event.model_dump_json() + step.model_dump_json()
        b_texts = [m.text for sid in world.b_sessions for m in fresh.session(sid).messages]
        assert b_texts == world.b_texts
        assert fresh.session(world.b_sessions[-1]).slots == {"name": "bravo-secret-name-Bob"}
        assert fresh.session(world.b_sessions[-1]).context.page_url == "https://shop/?who=v-b-web-pageurl"
        # Counts (sessions, messages per session, event types) are unchanged, but for
        # the one ContentErased fact that closes each of A's sessions' histories.
        expected = {
            sid: (n + 1, msgs, [*types, "ContentErased"]) if sid in world.a_sessions else (n, msgs, types)
            for sid, (n, msgs, types) in before_counts.items()
        }
        assert counts(fresh, world.a_sessions + world.b_sessions) == expected
        # The hashes were over ciphertext, which did not change.
        assert fresh.verify().ok
        # The log records the erasure on each visitor, with the receipt.
        for visitor_id in ("v-a-web", "v-a-phone"):
            last = list(fresh.events.get(visitor_aggregate_id(visitor_id)))[-1]
            assert isinstance(last, Visitor.DataErased) and last.receipt == receipt
        assert not isinstance(list(fresh.events.get(visitor_aggregate_id("v-b-web")))[-1], Visitor.DataErased)
        # A keeps using the product: new content gets a new key and stays readable.
        again = fresh.receive("v-a-web", "alpha-new after erasure")
        assert fresh.session(again.session_id).messages[-1].text == "alpha-new after erasure"


def test_snapshots_of_erased_sessions_are_dropped_and_the_cache_evicted(world: World) -> None:
    ledger = world.ledger
    assert ledger.snapshots is not None
    assert any(list(ledger.snapshots.get(sid)) for sid in world.a_sessions)
    ledger.session(world.a_sessions[0])  # warm the cache with plaintext
    ledger.erase(user_id="user-a")
    assert not any(list(ledger.snapshots.get(sid)) for sid in world.a_sessions)
    assert {m.text for m in ledger.session(world.a_sessions[0]).messages} == {ERASED_TEXT}


def test_erasing_an_anonymous_visitor_covers_only_that_visitor(world: World) -> None:
    receipt = world.ledger.erase(visitor_id="v-a-phone")
    assert receipt.subject == "visitor" and receipt.visitor_ids == ("v-a-phone",)
    assert receipt.user_id == "user-a"
    assert receipt.session_ids == (world.a_sessions[-1],)
    assert world.ledger.session(world.a_sessions[-1]).messages[0].text == ERASED_TEXT
    assert world.ledger.session(world.a_sessions[0]).messages[0].text == world.a_texts[0]


def test_a_rejected_erasure_appends_nothing_and_destroys_nothing(world: World) -> None:
    ledger, raw = world.ledger, world.raw
    head = log_head(ledger)
    keys = raw.execute("SELECT kid FROM chatledger_keys ORDER BY kid")
    with pytest.raises(UnknownSubjectError) as err:
        ledger.erase(user_id="nobody")
    assert err.value.subject_id == "nobody"
    with pytest.raises(UnknownSubjectError):
        ledger.erase(visitor_id="never-seen")
    with pytest.raises(InvalidCommandError):
        ledger.erase()
    with pytest.raises(InvalidCommandError):
        ledger.erase(user_id="user-a", visitor_id="v-a-web")
    assert log_head(ledger) == head
    assert raw.execute("SELECT kid FROM chatledger_keys ORDER BY kid") == keys


def test_cli_erase_prints_the_receipt(world: World) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["erase", "--user", "user-b", "-d", world.url])
    assert result.exit_code == 0, result.output
    receipt = json.loads(result.output)
    assert receipt["visitor_ids"] == ["v-b-web"] and receipt["events_affected"] > 0
    assert "key" not in {k for k in receipt if k != "key_ids"}
    unknown = runner.invoke(app, ["erase", "--user", "nobody", "-d", world.url])
    assert isinstance(unknown.exception, UnknownSubjectError)


def figures(ledger: ChatLedger) -> dict[str, object]:
    """Analytics without the read position (the erasure events move it on)."""
    data = ledger.analytics().model_dump()
    return {k: v for k, v in data.items() if k not in ("position", "head", "lag")}


def test_read_models_blank_erased_content_live_and_after_a_rebuild(world: World) -> None:
    ledger, raw = world.ledger, world.raw
    assert ledger.read_models, "the default read models copy message texts"
    ledger.projector.catch_up()
    assert contains(raw.dump(), b"alpha-secret-1")  # the transcript holds plaintext
    before = figures(ledger)

    ledger.erase(user_id="user-a")  # brings the read models up to date itself

    dump = raw.dump()
    assert not any(contains(dump, t.encode()) for t in world.a_texts)
    assert not contains(dump, b"alpha-secret-name-Anna")
    assert all(contains(dump, t.encode()) for t in world.b_texts)
    assert {m.text for m in ledger.transcript(user_id="user-a").messages} == {ERASED_TEXT}
    assert [m.text for m in ledger.transcript(user_id="user-b").messages] == world.b_texts
    assert figures(ledger) == before  # counts, times and rates unchanged
    for name in list(ledger.projector.projections):
        ledger.projector.rebuild(name)
    assert {m.text for m in ledger.transcript(user_id="user-a").messages} == {ERASED_TEXT}
    assert figures(ledger) == before
    ledger.recorder.purge_free_space()  # type: ignore[attr-defined]
    dump = raw.dump()
    assert not any(contains(dump, t.encode()) for t in world.a_texts)
    assert ledger.verify().ok


def test_erasure_reaches_the_cache_of_another_process_and_is_never_undone(sqlite_url: str) -> None:
    """Server A erases; server B had the session cached in plaintext. B must read
    it erased, and B's next writes (a snapshot included) must not store the
    erased content again, under any key."""
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
    a = ChatLedger.open(sqlite_url, snapshot_interval=4)
    b = ChatLedger.open(sqlite_url, snapshot_interval=4)
    try:
        sid = a.receive("v-1", "my ssn is 123-45-6789", at=t0).session_id
        b.reply(sid, "noted", at=t0 + timedelta(seconds=1))  # B caches the plaintext
        assert b.session(sid).messages[0].text.startswith("my ssn")
        a.erase(visitor_id="v-1", at=t0 + timedelta(seconds=2))
        assert [m.text for m in b.session(sid).messages] == ["[erased]", "[erased]"]
        b.reply(sid, "still here", at=t0 + timedelta(seconds=3))  # version 4: a snapshot
        b.reply(sid, "and here", at=t0 + timedelta(seconds=4))
    finally:
        a.close()
        b.close()
    with ChatLedger.open(sqlite_url, cache_size=0) as fresh:
        texts = [m.text for m in fresh.session(sid).messages]
    assert texts == ["[erased]", "[erased]", "still here", "and here"]
    raw = b"".join(
        path.read_bytes()
        for path in Path(sqlite_url.removeprefix("sqlite:///")).parent.glob("chat.db*")
    )
    assert b"123-45-6789" not in raw


def _read_model_text(ledger: ChatLedger) -> str:
    from .test_projections import dump

    return json.dumps(dump(ledger), default=str)


def test_read_models_that_skip_decryption_store_the_same_rows_and_never_a_placeholder(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """analytics and active_sessions get events with their envelopes left closed
    (``personal_fields = ()``); forcing full decryption gives the same rows, and
    no read model ever stores a sealed placeholder."""
    from chatledger.infrastructure.personal_fields import SEALED_TEXT
    from chatledger.projections import DEFAULT_READ_MODELS

    from .test_projections import dump

    ledger = world.ledger
    ledger.projector.catch_up()
    sealed_calls: list[str] = []
    to_sealed = ledger.mapper.to_sealed_event  # type: ignore[attr-defined]
    monkeypatch.setattr(
        ledger.mapper, "to_sealed_event", lambda s: sealed_calls.append(s.topic) or to_sealed(s)
    )
    skipping = [cls for cls in DEFAULT_READ_MODELS if cls.personal_fields == ()]
    assert {cls.name for cls in skipping} >= {"analytics", "active_sessions"}
    for cls in skipping:
        ledger.projector.rebuild(cls.name)
    assert any("Message" in t for t in sealed_calls)  # messages reached them sealed
    sealed_rows = dump(ledger)

    for cls in skipping:
        monkeypatch.setattr(cls, "personal_fields", None)  # decrypt everything
    sealed_calls.clear()
    for cls in skipping:
        ledger.projector.rebuild(cls.name)
    assert sealed_calls == []
    assert dump(ledger) == sealed_rows
    monkeypatch.undo()

    ledger.projector.rebuild_many()  # shared batches: decrypted events serve everyone
    assert dump(ledger) == sealed_rows
    for name in ledger.projector.projections:  # and one at a time
        ledger.projector.rebuild(name)
        assert dump(ledger) == sealed_rows
    assert [m.text for m in ledger.transcript(user_id="user-b").messages] == world.b_texts
    text = _read_model_text(ledger)
    assert SEALED_TEXT not in text and "$sealed" not in text


def test_a_sealed_event_equals_the_decoded_one_except_its_personal_fields(world: World) -> None:
    from chatledger.infrastructure.personal_fields import SEALED_VALUES

    ledger = world.ledger
    mapper = ledger.mapper
    records = ledger.recorder.select_notifications(0, 1000)
    personal = {"text", "metadata", "context", "value", "carried_slots"}
    seen = set()
    for record in records:
        opened = mapper.to_domain_event(record)
        sealed = mapper.to_sealed_event(record)  # type: ignore[attr-defined]
        assert type(sealed) is type(opened)
        a, b = opened.model_dump(), sealed.model_dump()
        assert {k: v for k, v in a.items() if k not in personal} == {
            k: v for k, v in b.items() if k not in personal
        }
        for field_name in ("text", "metadata", "value"):
            if field_name in b and b[field_name] != a[field_name]:
                assert b[field_name] == SEALED_VALUES[field_name]
                seen.add(field_name)
    assert {"text", "metadata", "value"} <= seen


def test_a_rebuild_in_a_fresh_process_after_erasure_shows_markers_not_content(world: World) -> None:
    """Keys are prefetched per batch in one query; destroyed ones read as erased."""
    world.ledger.erase(user_id="user-a")
    with ChatLedger.open(world.url, policy=POLICY) as fresh:
        fresh.projector.rebuild_many()
        assert {m.text for m in fresh.transcript(user_id="user-a").messages} == {ERASED_TEXT}
        assert [m.text for m in fresh.transcript(user_id="user-b").messages] == world.b_texts
        assert fresh.memory(user_id="user-a").preferences.get("name") is None
        assert fresh.memory(user_id="user-b").known
        text = _read_model_text(fresh)
        assert not any(t in text for t in world.a_texts)
        assert "alpha-secret-name-Anna" not in text


def test_the_fast_decoders_give_what_the_general_path_gives(world: World) -> None:
    """Messages and slots are decoded by splicing plaintext into the stored
    bytes; the general path (parse, open each envelope, validate) must agree,
    before and after an erasure, for texts that need escaping too."""
    from eventsourcing.utils import resolve_topic

    ledger = world.ledger
    turn = ledger.receive("v-c", 'quotes " and \\ backslash, café, \u2603, \x01', metadata={"k": ["\u00e9", 1.5, None]})
    ledger.set_slot(turn.session_id, "prefs", {"nested": {"a": [1, "two"]}}, scope="user")

    def check() -> int:
        opened = 0
        for record in ledger.recorder.select_notifications(0, 1000):
            if b'"$enc"' not in record.state or record.topic.endswith("Snapshot"):
                continue
            general = resolve_topic(record.topic).model_validate(ledger.mapper.decrypt_state(record))  # type: ignore[attr-defined]
            assert ledger.mapper.to_domain_event(record) == general
            opened += 1
        return opened

    assert check() > 10
    ledger.erase(visitor_id="v-c")
    assert check() > 10


def test_personal_values_shaped_like_an_envelope_are_stored_and_read_back_unchanged(database_url: str) -> None:
    """The store marks encrypted fields with ``{"$enc", "kid"}``; a visitor's own data
    of exactly that shape must not be taken for one (nor decrypted, nor blanked)."""
    from datetime import UTC, datetime

    lookalike = {"$enc": "bm90IGNpcGhlcnRleHQ=", "kid": "not-a-key"}
    t0 = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
    with ChatLedger.open(database_url, snapshot_interval=3) as ledger:
        sid = ledger.receive("v-1", "hi", metadata=lookalike, at=t0).session_id
        ledger.set_slot(sid, "weird", lookalike, at=t0)
        ledger.reply(sid, "ok", metadata=lookalike, at=t0)  # version 4: after a snapshot
        ledger.catch_up()
        transcript = ledger.transcript(session_id=sid)
    with ChatLedger.open(database_url, cache_size=0) as fresh:
        state = fresh.session(sid)
        replayed = fresh.session(sid, as_of=t0)
    for view in (state, replayed):
        assert [m.metadata for m in view.messages] == [lookalike, lookalike]
        assert view.slots["weird"] == lookalike
    assert [m.text for m in transcript.messages] == ["hi", "ok"]


def test_erasing_one_device_of_a_user_blanks_only_what_that_device_said_in_memory(world: World) -> None:
    ledger = world.ledger
    phone = world.a_sessions[-1]
    ledger.set_slot(phone, "lang", "alpha-secret-lang-pt", scope="user")
    ledger.catch_up()
    memory = ledger.memory(user_id="user-a")
    assert memory.display_name == "alpha-secret-name-Anna"
    assert memory.preferences == {"name": "alpha-secret-name-Anna", "lang": "alpha-secret-lang-pt"}
    other = ledger.memory(user_id="user-b")

    ledger.erase(visitor_id="v-a-phone")
    ledger.catch_up()
    live = ledger.memory(user_id="user-a")
    assert live.preferences == {"name": "alpha-secret-name-Anna", "lang": None}
    assert live.display_name == "alpha-secret-name-Anna"  # said on the web, not erased
    assert ledger.memory(user_id="user-b").model_dump(exclude={"position", "head"}) == other.model_dump(
        exclude={"position", "head"}
    )
    ledger.projector.rebuild("memory")
    assert ledger.memory(user_id="user-a") == live

    ledger.erase(visitor_id="v-a-web")
    ledger.catch_up()
    assert ledger.memory(user_id="user-a").preferences == {"name": None, "lang": None}
    assert ledger.memory(user_id="user-a").display_name is None
    ledger.projector.rebuild("memory")
    assert ledger.memory(user_id="user-a").preferences == {"name": None, "lang": None}


def test_the_key_rings_caches_stay_bounded_however_many_visitors_pass(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that meets millions of visitors must not keep a key object for
    each (issue 3: nothing in memory grows with the number of sessions)."""
    from datetime import UTC, datetime, timedelta

    from chatledger.infrastructure import key_ring

    monkeypatch.setattr(key_ring, "MAX_CACHED_KEYS", 8)
    t0 = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
    with ChatLedger.open(sqlite_url) as ledger:
        sids = [ledger.receive(f"v-{n}", f"secret {n}", at=t0 + timedelta(seconds=n)).session_id for n in range(40)]
        ledger.erase(visitor_id="v-3", at=t0 + timedelta(minutes=5))
        ledger.catch_up()
        for cache in key_ring_caches(ledger).values():
            assert len(cache) <= 8
        with ChatLedger.open(sqlite_url, cache_size=0) as cold:  # every key read again
            texts = [cold.session(sid).messages[0].text for sid in sids]
            assert len(key_ring_caches(cold)["by_kid"]) <= 8
        assert [m.text for m in ledger.transcript(session_id=sids[5]).messages] == ["secret 5"]
    assert texts == [ERASED_TEXT if n == 3 else f"secret {n}" for n in range(40)]


def test_a_subclass_must_declare_personal_fields_again_to_get_sealed_events() -> None:
    """A subclass of a read model that reads no personal field may add a handler
    that does: it gets everything opened unless it says otherwise."""
    from chatledger.projections.analytics import SessionAnalytics
    from chatledger.projections.read_model import personal_set

    class WithTexts(SessionAnalytics):
        pass

    class StillNone(SessionAnalytics):
        personal_fields = ()

    view = object.__new__(SessionAnalytics)
    assert personal_set(view) == frozenset()
    assert personal_set(object.__new__(WithTexts)) is None
    assert personal_set(object.__new__(StillNone)) == frozenset()
