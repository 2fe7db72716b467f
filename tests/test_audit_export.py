"""The auditor's export: a self-describing JSONL bundle that can be checked without chatledger."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from chatledger import (
    ChatLedger,
    InvalidCommandError,
    ManualClock,
    UnknownSessionError,
    UnknownSubjectError,
)
from chatledger.entrypoints.cli import app
from typer.testing import CliRunner

from .audit_helpers import RawDB


def independent_event_hash(prev: bytes, line: dict[str, Any]) -> bytes:
    """The header's recipe, re-implemented from its text alone."""
    h = hashlib.sha256(b"chatledger/event/v1")
    for part in (
        prev,
        line["originator_id"].encode(),
        str(line["originator_version"]).encode(),
        line["topic"].encode(),
        line["stored_state"].encode(),
    ):
        h.update(len(part).to_bytes(8, "big") + part)
    return h.digest()


def lines_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def make_history(ledger: ChatLedger, clock: ManualClock) -> tuple[Any, Any]:
    first = ledger.receive("v-anon", "charlie-secret before login")
    ledger.set_slot(first.session_id, "email", "charlie@example.org")
    ledger.link_identity("v-anon", "user-c")
    clock.advance(hours=1)
    second = ledger.receive("v-anon", "charlie-secret after login")
    ledger.receive("v-other", "someone else")
    return first.session_id, second.session_id


def test_a_user_export_describes_itself_and_its_hashes_check_out(ledger: ChatLedger, clock: ManualClock) -> None:
    first, second = make_history(ledger, clock)
    buf = io.StringIO()
    report = ledger.export_audit(buf, user_id="user-c")
    assert report.ok
    lines = lines_of(buf.getvalue())
    header, events, verdict = lines[0], lines[1:-1], lines[-1]
    assert header["record"] == "header" and header["format"] == "chatledger-audit-export"
    assert header["format_version"] == 1 and "event_hash" in header["fields"] and "event_hash" in header["hashing"]
    assert header["scope"]["session_ids"] == [str(first), str(second)]
    assert {e["originator_id"] for e in events if e["aggregate"] == "session"} == {str(first), str(second)}
    assert all(e["record"] == "event" for e in events)
    texts = [e["event"]["text"] for e in events if e["type"] == "MessageReceived"]
    assert texts == ["charlie-secret before login", "charlie-secret after login"]
    assert all("charlie-secret" not in e["stored_state"] for e in events)  # stored encrypted
    assert "someone else" not in buf.getvalue()
    prev: dict[str, bytes] = {}
    for e in events:
        digest = independent_event_hash(prev.get(e["originator_id"], bytes(32)), e)
        assert digest.hex() == e["event_hash"], e["type"]
        prev[e["originator_id"]] = digest
    assert verdict["record"] == "verification" and verdict["ok"] is True
    assert verdict["log"]["head_position"] == ledger.recorder.max_notification_id()


def test_an_export_after_erasure_shows_markers_and_still_verifies(ledger: ChatLedger, clock: ManualClock) -> None:
    first, _ = make_history(ledger, clock)
    ledger.erase(user_id="user-c")
    buf = io.StringIO()
    assert ledger.export_audit(buf, session_id=first).ok
    lines = lines_of(buf.getvalue())
    assert [e["event"]["text"] for e in lines[1:-1] if e["type"] == "MessageReceived"] == ["[erased]"]
    assert [e["event"]["value"] for e in lines[1:-1] if e["type"] == "SlotSet"] == [None]
    assert lines[-1]["ok"] is True


def test_an_export_of_a_tampered_log_says_so(database_url: str, clock: ManualClock) -> None:
    with ChatLedger.open(database_url, clock=clock) as ledger:
        first, _ = make_history(ledger, clock)
    RawDB(database_url).delete_event(first, 2, with_hash=False)
    with ChatLedger.open(database_url, clock=clock) as ledger:
        buf = io.StringIO()
        assert not ledger.export_audit(buf, user_id="user-c").ok
    verdict = lines_of(buf.getvalue())[-1]
    assert verdict["ok"] is False and verdict["aggregates"][str(first)] is False
    assert verdict["log"]["breaks"][0]["kind"] == "missing event"


def test_export_refuses_unknown_or_ambiguous_scopes(ledger: ChatLedger) -> None:
    ledger.receive("v-1", "hi")
    with pytest.raises(UnknownSubjectError):
        ledger.export_audit(io.StringIO(), user_id="nobody")
    with pytest.raises(UnknownSessionError):
        ledger.export_audit(io.StringIO(), session_id="00000000-0000-4000-8000-000000000000")
    with pytest.raises(InvalidCommandError):
        ledger.export_audit(io.StringIO())


def test_cli_export_writes_the_bundle(tmp_path: Path, sqlite_url: str) -> None:
    clock = ManualClock()
    with ChatLedger.open(sqlite_url, clock=clock) as ledger:
        _, second = make_history(ledger, clock)
    out = tmp_path / "bundle.jsonl"
    result = CliRunner().invoke(app, ["audit", "export", "--session", str(second), "--out", str(out), "-d", sqlite_url])
    assert result.exit_code == 0, result.output
    lines = lines_of(out.read_text())
    assert lines[0]["scope"] == {"session_id": str(second), "session_ids": [str(second)]}
    assert lines[-1]["ok"] is True and len(lines) == 2 + 2  # header, Started, MessageReceived, verdict
