"""Erasure reaches every piece of caller-supplied free text it encrypts: message texts
and metadata, client message ids, slot values, end reasons, context, and the
retention archives; checked in the raw database, the audit export and the archive."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest
from chatledger import ChatLedger, InvalidCommandError, ManualClock
from chatledger.domain.erasure import ERASED_TEXT
from chatledger.domain.session import Session
from chatledger.infrastructure import personal_fields

from .audit_helpers import RawDB
from .helpers import log_head


def contains(dump: bytes, secret: str) -> bool:
    """PostgreSQL prints bytea as hex; SQLite files hold the raw bytes."""
    raw = secret.encode()
    return raw in dump or raw.hex().encode() in dump


def strings(who: str) -> dict[str, str]:
    """Every caller-supplied string one person's conversation uses (bar ids)."""
    return {
        "text": f"{who}-text-secret",
        "reply": f"{who}-reply-secret",
        "cmid": f"{who}-cmid-secret",
        "reply_cmid": f"{who}-reply-cmid-secret",
        "meta": f"{who}-meta-secret",
        "page": f"https://shop/{who}-page-secret",
        "slot_value": f"{who}-slot-value-secret",
        "reason": f"{who}-reason-secret",
    }


@dataclass
class Scene:
    ledger: ChatLedger
    raw: RawDB
    url: str
    archive: Path
    a: dict[str, str]
    b: dict[str, str]
    a_session: UUID
    b_session: UUID

    def export(self, user_id: str) -> str:
        out = io.StringIO()
        self.ledger.export_audit(out, user_id=user_id)
        return out.getvalue()

    def archive_text(self) -> str:
        return gzip.decompress(self.archive.read_bytes()).decode()


def converse(ledger: ChatLedger, visitor: str, user: str, s: dict[str, str]) -> UUID:
    turn = ledger.receive(
        visitor, s["text"], client_message_id=s["cmid"], context={"page_url": s["page"]},
        metadata={"device": s["meta"]},
    )
    sid = turn.session_id
    ledger.reply(sid, s["reply"], client_message_id=s["reply_cmid"])
    ledger.set_slot(sid, "pref", s["slot_value"], scope="user")
    ledger.link_identity(visitor, user)
    ledger.end_session(sid, reason=s["reason"])
    return sid


@pytest.fixture
def scene(database_url: str, clock: ManualClock, tmp_path: Path) -> Iterator[Scene]:
    ledger = ChatLedger.open(database_url, clock=clock, snapshot_interval=3)
    a, b = strings("alpha"), strings("bravo")
    a_session = converse(ledger, "v-alpha", "user-alpha", a)
    b_session = converse(ledger, "v-bravo", "user-bravo", b)
    ledger.catch_up()
    clock.advance(days=3)
    result = ledger.archive_closed_sessions(timedelta(days=1), tmp_path / "archive")
    assert result.archived == 2 and result.path is not None
    yield Scene(ledger, RawDB(database_url), database_url, result.path, a, b, a_session, b_session)
    ledger.close()


def test_a_retried_client_message_id_is_recognised_though_it_is_stored_encrypted(
    database_url: str, clock: ManualClock
) -> None:
    with ChatLedger.open(database_url, clock=clock) as ledger:
        first = ledger.receive("v-1", "hello", client_message_id="cmid-retry-secret")
        sid = first.session_id
        ledger.reply(sid, "hi there", client_message_id="reply-retry-secret")
        head = log_head(ledger)
    dump = RawDB(database_url).dump()
    assert not contains(dump, "cmid-retry-secret") and not contains(dump, "reply-retry-secret")
    with ChatLedger.open(database_url, clock=clock, cache_size=0) as fresh:  # decoded from the log
        again = fresh.receive("v-1", "hello", client_message_id="cmid-retry-secret")
        assert again.duplicate and again.message == first.message
        assert fresh.reply(sid, "hi there", client_message_id="reply-retry-secret").position == 1
        assert log_head(fresh) == head
        assert [m.client_message_id for m in fresh.session(sid).messages] == [
            "cmid-retry-secret", "reply-retry-secret",
        ]


def test_caller_text_is_never_stored_in_plaintext_and_reads_back_before_erasure(scene: Scene) -> None:
    log = b"\n".join(bytes(r[0]) for r in scene.raw.execute(f"SELECT state FROM {scene.raw.events}"))
    dump = scene.raw.dump()
    for secret in [*scene.a.values(), *scene.b.values()]:
        assert secret.encode() not in log, secret
        assert secret not in scene.archive_text(), secret
    for who in (scene.a, scene.b):  # no read model copies these (transcripts and memory copy texts and values)
        for name in ("cmid", "reply_cmid", "reason"):
            assert not contains(dump, who[name]), who[name]
    assert contains(dump, "v-alpha")  # ids are stored in the clear: the search finds what is there
    exported = scene.export("user-alpha")
    assert all(secret in exported for secret in scene.a.values())  # decrypted for the auditor
    state = scene.ledger.session(scene.a_session)
    assert state.close_reason == scene.a["reason"]
    archived = {a.session_id: a for a in scene.ledger.read_archive(scene.archive)}
    assert archived[scene.a_session].state["close_reason"] == scene.a["reason"]
    assert [m["client_message_id"] for m in archived[scene.a_session].state["messages"]] == [
        scene.a["cmid"], scene.a["reply_cmid"],
    ]


def test_after_erasure_no_caller_text_is_readable_anywhere_and_others_are_intact(scene: Scene) -> None:
    ledger = scene.ledger
    ledger.erase(user_id="user-alpha")
    ledger.catch_up()

    dump = scene.raw.dump()
    exported = scene.export("user-alpha")
    with ChatLedger.open(scene.url, cache_size=0) as fresh:
        archived = {a.session_id: a for a in fresh.read_archive(scene.archive)}
        replayed = fresh.session(scene.a_session)
        history = json.dumps([e.model_dump(mode="json") for e in fresh.session_events(scene.a_session)])
        b_state = fresh.session(scene.b_session)
        assert fresh.verify().ok
    archive_bytes = scene.archive_text()
    for secret in scene.a.values():
        assert not contains(dump, secret), secret
        assert secret not in exported, secret
        assert secret not in archive_bytes, secret
        assert secret not in history, secret
        assert secret not in json.dumps(archived[scene.a_session].model_dump(mode="json")), secret
    # What erased content reads as.
    assert archived[scene.a_session].erased and archived[scene.a_session].state == ERASED_TEXT
    assert replayed.close_reason == ERASED_TEXT
    assert [m.client_message_id for m in replayed.messages] == [None, None]
    assert [m.text for m in replayed.messages] == [ERASED_TEXT, ERASED_TEXT]
    cached = ledger.session(scene.a_session)  # the erasing process's copy agrees
    assert cached.close_reason == ERASED_TEXT and [m.client_message_id for m in cached.messages] == [None, None]
    # The other user's content is intact everywhere.
    assert not archived[scene.b_session].erased
    assert archived[scene.b_session].state["close_reason"] == scene.b["reason"]
    assert b_state.close_reason == scene.b["reason"]
    assert [m.client_message_id for m in b_state.messages] == [scene.b["cmid"], scene.b["reply_cmid"]]
    assert all(secret in scene.export("user-bravo") for secret in scene.b.values())
    # What stays: ids, times, counts, event types.
    assert contains(dump, "v-alpha") and contains(dump, "user-alpha")
    assert len(replayed.messages) == 2 and replayed.status == "ended"


def test_analytics_never_store_an_end_reason(scene: Scene) -> None:
    assert scene.ledger.analytics().sessions == 2
    for name in list(scene.ledger.projector.projections):
        scene.ledger.projector.rebuild(name)
    dump = scene.raw.dump()
    assert not contains(dump, scene.a["reason"]) and not contains(dump, scene.b["reason"])


def test_events_written_before_client_ids_and_reasons_were_encrypted_still_work(
    database_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stores written by earlier versions hold client ids and end reasons in
    plaintext: they must still decode, a retry must still be recognised, and
    ``verify`` must still pass."""
    old = {
        Session.MessageReceived: ("text", "metadata"),
        Session.MessageSent: ("text", "metadata"),
    }
    with monkeypatch.context() as m:
        for cls, fields in old.items():
            m.setitem(personal_fields.PERSONAL_FIELDS, cls, fields)
        m.delitem(personal_fields.PERSONAL_FIELDS, Session.Ended)
        with ChatLedger.open(database_url, clock=clock) as writer:
            turn = writer.receive("v-old", "old text", client_message_id="old-cmid")
            sid = turn.session_id
            writer.reply(sid, "old reply", client_message_id="old-reply-cmid")
            writer.end_session(sid, reason="old-reason")
            other = writer.receive("v-old-2", "other", client_message_id="old-cmid-2").session_id
    raw = RawDB(database_url)
    states = b"".join(raw.state(sid, v) for v in (2, 3, 4))
    assert b'"client_message_id":"old-cmid"' in states and b'"reason":"old-reason"' in states  # the old shape
    with ChatLedger.open(database_url, clock=clock, cache_size=0) as ledger:
        state = ledger.session(sid)
        assert [m.client_message_id for m in state.messages] == ["old-cmid", "old-reply-cmid"]
        assert state.close_reason == "old-reason"
        head = log_head(ledger)
        again = ledger.receive("v-old-2", "other", client_message_id="old-cmid-2")
        assert again.duplicate and again.session_id == other and log_head(ledger) == head
        ledger.receive("v-old-2", "new", client_message_id="new-cmid")  # new shape in the same session
        assert [m.client_message_id for m in ledger.session(other).messages] == ["old-cmid-2", "new-cmid"]
        assert ledger.verify().ok
        ledger.catch_up()
        ledger.erase(visitor_id="v-old")
        erased = ledger.session(sid)
        assert [m.client_message_id for m in erased.messages] == [None, None]
        assert erased.close_reason == ERASED_TEXT
        assert ledger.verify().ok


def test_archives_written_before_encryption_are_read_as_they_are(tmp_path: Path, sqlite_url: str) -> None:
    path = tmp_path / "old.jsonl.gz"
    line = {"session_id": "0190f0d8-0000-7000-8000-000000000001", "state": {"status": "ended"}, "events": [{"type": "Ended"}]}
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")
    with ChatLedger.open(sqlite_url) as ledger:
        [session] = ledger.read_archive(path)
    assert not session.erased and session.state == {"status": "ended"} and session.events == [{"type": "Ended"}]


def test_an_altered_archive_line_is_refused_with_its_line_number(scene: Scene) -> None:
    lines = scene.archive_text().splitlines()
    line = json.loads(lines[1])
    line["session_id"] = json.loads(lines[0])["session_id"]  # moved to another session
    lines[1] = json.dumps(line)
    scene.archive.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(InvalidCommandError, match="Line 2 of archive"):
        scene.ledger.read_archive(scene.archive)
    with pytest.raises(InvalidCommandError, match="does not exist"):
        scene.ledger.read_archive(scene.archive.with_name("missing.jsonl.gz"))


def test_the_fast_and_sealed_decoders_agree_on_client_ids_and_reasons(scene: Scene) -> None:
    """Messages and ends are decoded by the mapper's fast paths; the general path
    (open each envelope, then validate) must agree, before and after erasure,
    and the sealed decoding differs only in the personal fields."""
    from chatledger.infrastructure.personal_fields import PERSONAL_FIELDS, SEALED_VALUES
    from eventsourcing.utils import get_topic, resolve_topic

    ledger = scene.ledger
    mapper = ledger.mapper
    topics = {get_topic(Session.MessageReceived), get_topic(Session.MessageSent), get_topic(Session.Ended)}

    def check() -> set[str]:
        seen: set[str] = set()
        for record in ledger.recorder.select_notifications(0, 1000):
            if record.topic not in topics:
                continue
            general = resolve_topic(record.topic).model_validate(mapper.decrypt_state(record))  # type: ignore[attr-defined]
            decoded = mapper.to_domain_event(record)
            assert decoded == general
            sealed = mapper.to_sealed_event(record).model_dump()  # type: ignore[attr-defined]
            personal = PERSONAL_FIELDS[type(decoded)]
            opened = decoded.model_dump()
            assert {k: v for k, v in sealed.items() if k not in personal} == {
                k: v for k, v in opened.items() if k not in personal
            }
            for name in ("client_message_id", "reason"):
                if name in personal and opened[name] is not None:
                    assert sealed[name] == SEALED_VALUES[name]
                    seen.add(name)
        return seen

    assert check() == {"client_message_id", "reason"}
    ledger.erase(user_id="user-alpha")
    assert check() == {"client_message_id", "reason"}  # Bravo's still open; Alpha's read erased


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("notes.txt", b"just some text\n", "not a gzipped"),
        ("text.jsonl.gz", gzip.compress(b"not json\n"), "Line 1 of archive"),
        ("list.jsonl.gz", gzip.compress(b"[1, 2]\n"), "Line 1 of archive"),
        ("other.jsonl.gz", gzip.compress(b'{"id": 1}\n'), "Line 1 of archive"),
        ("bad-id.jsonl.gz", gzip.compress(b'{"session_id": "x", "state": 1}\n'), "Line 1 of archive"),
        ("cut.jsonl.gz", gzip.compress(b"x" * 5000)[:-12], "truncated"),
    ],
    ids=["text", "gzip-not-json", "gzip-list", "gzip-other-json", "bad-fields", "truncated"],
)
def test_a_file_that_is_no_archive_is_refused_with_its_name(
    tmp_path: Path, sqlite_url: str, name: str, data: bytes, match: str
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with ChatLedger.open(sqlite_url) as ledger, pytest.raises(InvalidCommandError, match=match) as caught:
        ledger.read_archive(path)
    assert str(path) in str(caught.value)


def test_an_archive_folder_that_is_a_file_is_refused(tmp_path: Path, sqlite_url: str) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    with ChatLedger.open(sqlite_url) as ledger:
        head = log_head(ledger)
        with pytest.raises(InvalidCommandError, match="archive_dir") as caught:
            ledger.archive_closed_sessions(timedelta(days=1), tmp_path / "taken")
        assert getattr(caught.value, "field", None) == "archive_dir"
        with pytest.raises(InvalidCommandError, match="archive_dir"):
            ledger.archive_closed_sessions(timedelta(days=1), tmp_path / "taken" / "below")
        assert log_head(ledger) == head


def test_a_session_snapshot_left_under_a_destroyed_key_is_dropped_not_fatal(
    database_url: str, clock: ManualClock
) -> None:
    """Erasure deletes the session's snapshots after its transaction commits: one a
    crash left behind (or another process reads in between) is stale derived data
    under a destroyed key. Reading the session drops it and replays the events."""
    with ChatLedger.open(database_url, clock=clock, snapshot_interval=2) as ledger:
        sid = ledger.receive("v-snap", "a secret").session_id
        for n in range(5):
            ledger.reply(sid, f"secret reply {n}")
        raw = RawDB(database_url)
        table = "stored_snapshots" if raw.is_sqlite else "chatledger_snapshots"
        oid = sid.hex if raw.is_sqlite else sid
        rows = raw.execute(f"SELECT * FROM {table} WHERE originator_id=?", (oid,))
        assert rows  # the session has a snapshot
        ledger.erase(visitor_id="v-snap")
    marks = ",".join("?" * len(rows[0]))
    for row in rows:  # the process died before deleting them
        raw.execute(f"INSERT INTO {table} VALUES ({marks})", row)
    with ChatLedger.open(database_url, clock=clock, snapshot_interval=2) as fresh:
        assert {m.text for m in fresh.session(sid).messages} == {ERASED_TEXT}
        fresh.reply(sid, "still going")
        assert fresh.session(sid).messages[-1].text == "still going"
        assert fresh.verify().ok
