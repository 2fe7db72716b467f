"""Stores written by earlier releases open, read, verify and keep working.

Every folder under ``tests/fixtures/stores/`` holds a SQLite store written by
``tests/fixtures/store_story.py`` at one release, and what that release saw in
it. The current code must see the same, keep the erased content unreadable, and
go on writing, verifying and erasing in the old store.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from chatledger import ChatLedger, ManualClock, SessionPolicy

from .fixtures import store_story

FIXTURES = Path(__file__).resolve().parent / "fixtures"

STORES = sorted(p for p in (FIXTURES / "stores").iterdir() if (p / "expected.json").exists())


def expected_now(recorded: dict[str, Any]) -> dict[str, Any]:
    """What the current code must see in a store, from what its release saw:
    the recorded expectations with each deliberate change since applied (each
    one named here, with the release that made it)."""
    expected = json.loads(json.dumps(recorded["expected"]))
    release = tuple(int(p) for p in recorded.get("chatledger", "0.1.0").split("."))
    if release < (0, 2, 0):
        # 0.2.0: an erased message's client message id reads None, like its text
        # (0.1.0 stored ids in plaintext; the bytes stay, the API no longer shows them)
        for session in expected["sessions"].values():
            if session["user_id"] == "user-eve":
                for message in session["messages"]:
                    message[3] = None
    return expected


def _open_copy(store: Path, tmp_path: Path) -> tuple[ChatLedger, ManualClock, dict[str, Any]]:
    recorded = json.loads((store / "expected.json").read_text())
    db = tmp_path / "chatledger.sqlite"
    shutil.copyfile(store / "chatledger.sqlite", db)
    clock = ManualClock(datetime.fromisoformat(recorded["clock"]))
    ledger = ChatLedger.open(f"sqlite:///{db}", policy=SessionPolicy(**store_story.POLICY), clock=clock)  # type: ignore[arg-type]
    return ledger, clock, recorded


def test_there_is_a_store_of_the_first_release() -> None:
    assert "0.1.0" in [p.name for p in STORES]


@pytest.mark.parametrize("store", STORES, ids=[p.name for p in STORES])
def test_an_old_store_reads_as_it_did_when_written(store: Path, tmp_path: Path) -> None:
    ledger, _, recorded = _open_copy(store, tmp_path)
    with ledger:
        seen = store_story.observe(ledger, recorded["ids"])
    assert seen == expected_now(recorded)
    assert seen["verify_ok"] is True
    assert store_story.plaintext_found(tmp_path / "chatledger.sqlite") == []
    if store.name != "0.1.0":  # 0.1.0 kept client message ids in plaintext
        assert store_story.plaintext_found(tmp_path / "chatledger.sqlite", (store_story.EVE_CLIENT_ID,)) == []


@pytest.mark.parametrize("store", STORES, ids=[p.name for p in STORES])
def test_an_old_store_takes_new_writes_rebuilds_and_erasures(store: Path, tmp_path: Path) -> None:
    ledger, clock, recorded = _open_copy(store, tmp_path)
    ids = recorded["ids"]
    with ledger:
        clock.advance(minutes=5)
        turn = ledger.receive("visitor-ana", "one more question", client_message_id="wa-4")
        assert turn.is_returning and turn.previous_session_id is not None
        assert ledger.receive("visitor-ana", "one more question", client_message_id="wa-4").duplicate
        # an id recorded by the old release is still recognised as a retry
        assert ledger.receive("visitor-ana", "I'm back, I'd like to order", client_message_id="wa-3").duplicate
        assert ledger.memory(user_id="user-ana").display_name == "Ana"
        ledger.catch_up()
        before = ledger.analytics().model_dump(exclude={"position", "head", "lag", "as_of"})
        ledger.projector.rebuild_many()  # every read model from position 0, on the old events
        assert ledger.analytics().model_dump(exclude={"position", "head", "lag", "as_of"}) == before
        texts = [m.text for m in ledger.transcript(user_id="user-ana").messages]
        assert texts[-1] == "one more question" and "Do you ship to Portugal?" in texts
        assert ledger.verify().ok
        if recorded.get("anchor"):  # sealed by its release: the old seals still verify
            assert ledger.verify(anchor=recorded["anchor"]).ok
        receipt = ledger.erase(visitor_id="visitor-bob")
        assert ids["bob"] in [str(s) for s in receipt.session_ids]
        assert [m.text for m in ledger.session(ids["bob"]).messages] == ["[erased]", "[erased]"]
        assert [m.text for m in ledger.session(ids["eve"]).messages] == ["[erased]", "[erased]"]
        assert ledger.verify().ok


PG_DUMPS = [p for p in STORES if (p / "postgres.sql").exists()]


@pytest.mark.postgres
@pytest.mark.parametrize("store", PG_DUMPS, ids=[p.name for p in PG_DUMPS])
def test_an_old_postgres_store_reads_verifies_and_takes_writes(store: Path, postgres_url: str) -> None:
    import psycopg

    from .conftest import POSTGRES_CONNINFO

    schema = postgres_url.rsplit("schema=", 1)[1]
    script = "\n".join(
        line for line in (store / "postgres.sql").read_text().splitlines() if not line.startswith("\\")
    ).replace(store_story.PG_SCHEMA, schema)
    with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as conn:
        conn.execute(script)  # type: ignore[arg-type]
    recorded = json.loads((store / "postgres.json").read_text())
    clock = ManualClock(datetime.fromisoformat(recorded["clock"]))
    with ChatLedger.open(postgres_url, policy=SessionPolicy(**store_story.POLICY), clock=clock) as ledger:  # type: ignore[arg-type]
        assert store_story.observe(ledger, recorded["ids"]) == expected_now(recorded | {"chatledger": store.name})
        eve = [e.model_dump_json() for e in ledger.events_after(0, limit=10_000, content=True) if e.stream == recorded["ids"]["eve"]]
        assert eve and not [f for f in eve if '"e-1"' in f or store_story.EVE_CLIENT_ID in f]  # erased, not delivered
        clock.advance(minutes=5)
        assert ledger.receive("visitor-ana", "I'm back, I'd like to order", client_message_id="wa-3").duplicate
        ledger.receive("visitor-bob", "still there?")
        ledger.erase(visitor_id="visitor-bob")
        ledger.catch_up()
        assert ledger.verify().ok
        if recorded.get("anchor"):
            assert ledger.verify(anchor=recorded["anchor"]).ok
        assert [m.text for m in ledger.session(recorded["ids"]["eve"]).messages] == ["[erased]", "[erased]"]
        # A named tenant in the old store: the same ids are its own people, its memory
        # keys fit (the old memory tables' key columns are widened on open).
        acme = ledger.tenant("acme")
        sid = acme.receive("visitor-ana", "acme's ana").session_id
        acme.set_slot(sid, "display_name", "Acme Ana", scope="user")
        acme.link_identity("visitor-ana", "user-ana")
        ledger.catch_up()
        assert acme.memory(user_id="user-ana").display_name == "Acme Ana"
        assert ledger.memory(user_id="user-ana").display_name == "Ana"
        assert [m.text for m in acme.transcript(user_id="user-ana").messages] == ["acme's ana"]
        assert ledger.projection_failures() == []


@pytest.mark.parametrize("store", STORES, ids=[p.name for p in STORES])
def test_subscribers_never_get_erased_content_of_an_old_store(store: Path, tmp_path: Path) -> None:
    """0.1.0 stored client message ids and end reasons in plaintext; once the
    session's content is erased they must not reach a subscriber with content
    (nor, sealed, without), also for an erasure made by the current code."""
    ledger, clock, recorded = _open_copy(store, tmp_path)
    ids = recorded["ids"]
    with ledger:
        clock.advance(minutes=5)
        ledger.erase(visitor_id="visitor-ana")  # her 0.1.0 client ids and end reason
        secrets = ("e-1", store_story.EVE_CLIENT_ID, "wa-1", "wa-2", "wa-3", "bot-1", "order placed")
        for content in (True, False):
            events = ledger.events_after(0, limit=10_000, content=content)
            erased = [e for e in events if e.stream in (ids["eve"], ids["ana_first"], ids["ana_second"])]
            assert any(e.type == "Session.Ended" for e in erased)
            # An id is looked for as a whole JSON string ("e-1" also occurs inside random UUIDs).
            needles = [json.dumps(s) if re.fullmatch(r"[\w-]+", s) else s for s in secrets]
            found = [(e.position, e.type, s) for e in erased for s in needles if s in e.model_dump_json()]
            assert found == [], found
            ended = next(e for e in erased if e.type == "Session.Ended")
            assert ended.data["reason"] == ("[erased]" if content else "[sealed]")
        # content after an erasure is new content, delivered as it is
        ledger.receive("visitor-ana", "a new question", client_message_id="wa-new")
        last = ledger.events_after(0, limit=10_000, content=True)[-1]
        assert (last.data["text"], last.data["client_message_id"]) == ("a new question", "wa-new")
