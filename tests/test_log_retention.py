"""Log retention (issue 17): archived sessions' events removed from the live log
under a sealed record, while analytics, verify and the archive agree.

Every test runs on a real SQLite file and on PostgreSQL (``database_url``)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from chatledger import ChatLedger, ManualClock
from chatledger.application.log_retention import check_archives, remove_archived_sessions
from chatledger.infrastructure.settings import Settings
from chatledger.domain.errors import InvalidCommandError, UnknownSessionError
from chatledger.domain.retention import RemovedSession, RetentionRecord
from chatledger.projections import ActiveSessions, SessionAnalytics

from .helpers import log_head


def _story(ledger: ChatLedger, clock: ManualClock, n: int = 3) -> list[UUID]:
    """``n`` sessions that time out, and one that stays live."""
    old = []
    for i in range(n):
        turn = ledger.receive(visitor_id=f"v-{i}", text=f"hello {i}")
        ledger.reply(turn.session_id, "hi there")
        ledger.set_slot(turn.session_id, "order", f"A-{i}")
        old.append(turn.session_id)
    ledger.start_task(old[0], "refund")
    ledger.link_identity(visitor_id="v-1", user_id="u-1")
    clock.advance(hours=2)
    ledger.sweep()
    ledger.receive(visitor_id="v-live", text="still here")
    return old


def _figures(ledger: ChatLedger, as_of: Any) -> dict[str, Any]:
    figures = ledger.analytics(as_of=as_of).model_dump()
    for key in ("position", "head"):
        figures.pop(key)
    return figures


def _sql(ledger: ChatLedger, database_url: str, statement: str, *params: Any) -> None:
    """Hand-written SQL, as an attacker with write access would run it."""
    statement = statement.replace("{events}", ledger.recorder.events_table_name)  # type: ignore[attr-defined]
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            conn.execute(statement.replace("%s", "?"), params)
    else:
        schema = ledger.recorder.datastore.schema  # type: ignore[attr-defined]
        with ledger.recorder.datastore.get_connection() as conn:  # type: ignore[attr-defined]
            conn.execute(f"SET search_path TO {schema}")
            conn.execute(statement, params)
            conn.commit()


def _oid(database_url: str, sid: UUID) -> Any:
    return sid.hex if database_url.startswith("sqlite") else sid


def _archive_and_remove(ledger: ChatLedger, clock: ManualClock, tmp_path: Path) -> Any:
    clock.advance(days=2)
    assert ledger.archive_closed_sessions(timedelta(days=1), tmp_path).archived == 3
    return remove_archived_sessions(ledger, timedelta(days=1), tmp_path)


def test_removal_keeps_analytics_verify_and_archive_in_agreement(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    ledger = ChatLedger.open(database_url, clock=clock)
    try:
        old = _story(ledger, clock)
        ledger.catch_up()
        as_of = clock()
        before = _figures(ledger, as_of)
        result = _archive_and_remove(ledger, clock, tmp_path)
        assert result.removed_sessions == 3 and len(result.paths) == 1
        # The events are gone from the live log; the live session is untouched.
        for sid in old:
            assert list(ledger.recorder.select_events(sid)) == []
            with pytest.raises(UnknownSessionError):
                ledger.session(sid)
        # verify: the removed part is accounted for, not tampering.
        report = ledger.verify()
        assert report.ok, report.breaks
        assert report.removed == result.removed_events
        assert report.removed_by_archive == {result.paths[0].name: result.removed_events}
        # The archive holds exactly what the log hashed.
        check = check_archives(ledger, tmp_path)
        assert (check.sessions, check.agreed, check.problems) == (3, 3, [])
        # Analytics over the period before: the same live, and after a rebuild from the log.
        assert _figures(ledger, as_of) == before
        ledger.projector.rebuild("analytics")
        assert _figures(ledger, as_of) == before
        # Anchors taken before the removal still verify.
    finally:
        ledger.close()


def test_anchor_before_removal_verifies_and_deleting_without_a_record_is_tampering(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    ledger = ChatLedger.open(database_url, clock=clock)
    try:
        old = _story(ledger, clock)
        clock.advance(days=2)
        ledger.archive_closed_sessions(timedelta(days=1), tmp_path)
        anchor = ledger.anchor()
        result = remove_archived_sessions(ledger, timedelta(days=1), tmp_path)
        assert result.removed_sessions == 3
        assert ledger.verify(anchor=anchor).ok
        live = ledger.receive(visitor_id="v-x", text="a")
        ledger.reply(live.session_id, "b")
        ledger.seal()
        # A live session's event deleted by hand, with no record: still tampering.
        _sql(ledger, database_url, "DELETE FROM {events} WHERE originator_id=%s AND originator_version=2",
             _oid(database_url, live.session_id))
        report = ledger.verify()
        assert not report.ok
        assert [b.kind for b in report.breaks] == ["missing event"]
        assert report.removed == result.removed_events  # the removed part is still accounted for
    finally:
        ledger.close()


@pytest.mark.slow
def test_a_changed_chain_row_of_a_removed_session_is_detected(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    ledger = ChatLedger.open(database_url, clock=clock)
    try:
        old = _story(ledger, clock)
        result = _archive_and_remove(ledger, clock, tmp_path)
        last = result.removed_events  # any: the first session's last version
        _sql(ledger, database_url,
             "UPDATE chatledger_event_hashes SET event_hash=%s WHERE originator_id=%s AND originator_version="
             "(SELECT MAX(originator_version) FROM chatledger_event_hashes WHERE originator_id=%s)",
             bytes(32), _oid(database_url, old[0]), _oid(database_url, old[0]))
        kinds = {b.kind for b in ledger.verify().breaks}
        assert kinds == {"altered removed event", "broken seal"}, kinds
        assert last > 0
    finally:
        ledger.close()


@pytest.mark.slow
def test_an_altered_archive_is_reported(database_url: str, clock: ManualClock, tmp_path: Path) -> None:
    ledger = ChatLedger.open(database_url, clock=clock)
    try:
        _story(ledger, clock)
        result = _archive_and_remove(ledger, clock, tmp_path)
        path = result.paths[0]
        lines = gzip.decompress(path.read_bytes()).decode().splitlines()
        with gzip.open(path, "wt") as out:
            out.write("\n".join(lines[1:]) + "\n")  # one session dropped from the archive
        check = check_archives(ledger, tmp_path)
        assert (check.sessions, check.agreed, len(check.problems)) == (3, 2, 1)
        assert "is not in archive" in check.problems[0]
        assert json.loads(lines[0])["session_id"] in check.problems[0]
    finally:
        ledger.close()


def test_a_projection_behind_the_removal_applies_every_remaining_event_once(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    """The writer keeps only the read models retention needs; a second ledger with every
    read model catches up once before and once after the removal (ids now have gaps)."""
    writer = ChatLedger(Settings(database_url=database_url), clock=clock, read_models=[ActiveSessions, SessionAnalytics])
    reader = ChatLedger.open(database_url, clock=clock)
    try:
        _story(writer, clock)
        reader.catch_up()  # behind from here on
        writer.receive(visitor_id="v-0", text="back after the timeout")  # a later session, kept
        clock.advance(days=2)
        writer.archive_closed_sessions(timedelta(days=1), tmp_path)
        writer.receive(visitor_id="v-new", text="written after the archive")
        result = remove_archived_sessions(writer, timedelta(days=1), tmp_path)
        assert result.removed_sessions == 3
        writer.receive(visitor_id="v-new", text="and after the removal")
        reader.catch_up()
        live = {name: reader.transcript(visitor_id=name).model_dump()["messages"] for name in ("v-0", "v-new", "v-live")}
        assert len(live["v-new"]) == 2 and len(live["v-0"]) == 1
        reader.projector.rebuild_many(list(reader.projector.projections))
        rebuilt = {name: reader.transcript(visitor_id=name).model_dump()["messages"] for name in live}
        assert rebuilt == live
        assert reader.projector.position("conversation_log") == log_head(reader)
    finally:
        writer.close()
        reader.close()


@pytest.mark.slow
def test_a_visitor_whose_sessions_were_removed_comes_back_and_can_be_erased(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    ledger = ChatLedger.open(database_url, clock=clock)
    try:
        old = _story(ledger, clock)
        _archive_and_remove(ledger, clock, tmp_path)
        assert ledger.current_session("v-1") is None
        turn = ledger.receive(visitor_id="v-1", text="I am back")
        # The previous session is gone from the log: nothing to link or carry over.
        assert turn.session_id not in old and turn.previous_session_id is None
        ledger.link_identity(visitor_id="v-2", user_id="u-2")
        receipt = ledger.erase(visitor_id="v-1")
        assert set(old) & set(receipt.session_ids) == {old[1]}
        # The archive line of the erased visitor's removed session is shredded with its key.
        check = check_archives(ledger, tmp_path)
        assert (check.agreed, check.erased, check.problems) == (2, 1, [])
        assert ledger.verify().ok
    finally:
        ledger.close()


def test_the_retention_record_is_in_no_tenants_feed(database_url: str, clock: ManualClock, tmp_path: Path) -> None:
    """The record names sessions of every tenant (visitor and user ids): only a read of all
    tenants sees it, not the default tenant's feed (nor its webhooks and HTTP /events)."""
    ledger = ChatLedger.open(database_url, clock=clock)
    try:
        acme = ledger.tenant("acme")
        sid = acme.receive(visitor_id="alice@acme.example", text="hi").session_id
        acme.link_identity(visitor_id="alice@acme.example", user_id="crm-4711")
        acme.end_session(sid)
        clock.advance(days=2)
        assert ledger.archive_closed_sessions(timedelta(days=1), tmp_path, all_tenants=True).archived == 1
        assert remove_archived_sessions(ledger, timedelta(days=1), tmp_path).removed_sessions == 1
        removed = "RetentionRecord.Removed"
        assert [e.type for e in ledger.events_after(0, all_tenants=True)].count(removed) == 1
        for feed in (ledger.events_after(0), acme.events_after(0)):
            assert removed not in [e.type for e in feed]
        assert "crm-4711" not in json.dumps([e.data for e in ledger.events_after(0)])  # acme's, not default's
    finally:
        ledger.close()


def test_an_archive_name_in_a_record_never_leads_out_of_the_archive_folder(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    """A record's archive name is data (review F2): a forged record naming ``../outside/…``
    is a problem, never a read of a file outside the folder ``--archive`` names."""
    ledger = ChatLedger.open(database_url, clock=clock)
    try:
        _story(ledger, clock)
        archive, outside = tmp_path / "archive", tmp_path / "outside"
        _archive_and_remove(ledger, clock, archive)
        (record,) = [e for e in ledger.events_after(0, all_tenants=True) if e.type == "RetentionRecord.Removed"]
        names = {s["archive"] for s in record.data["sessions"]}
        outside.mkdir()
        for name in names:
            shutil.move(str(archive / name), str(outside / name))
        forged = [
            RemovedSession.model_validate({**s, "archive": f"../outside/{s['archive']}"}) for s in record.data["sessions"]
        ]
        ledger.save(RetentionRecord.removed(forged, sealed_through=record.data["sealed_through"], at=clock()))
        check = check_archives(ledger, archive)
        assert check.agreed == 0 and len(check.problems) == check.sessions == 3
    finally:
        ledger.close()


@pytest.mark.slow
def test_bad_arguments_and_tenant_handles_remove_nothing(database_url: str, clock: ManualClock, tmp_path: Path) -> None:
    ledger = ChatLedger.open(database_url, clock=clock)
    try:
        _story(ledger, clock)
        head = log_head(ledger)
        with pytest.raises(InvalidCommandError):
            remove_archived_sessions(ledger, timedelta(days=-1), tmp_path)
        with pytest.raises(InvalidCommandError):
            remove_archived_sessions(ledger.tenant("acme"), timedelta(days=1), tmp_path)
        # Nothing archived yet: nothing removed, no file left.
        assert remove_archived_sessions(ledger, timedelta(minutes=1), tmp_path).removed_sessions == 0
        assert list(tmp_path.glob("*.jsonl.gz")) == []
        assert log_head(ledger) == head
    finally:
        ledger.close()


SCRIPT = shutil.which("chatledger", path=str(Path(sys.executable).parent))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    assert SCRIPT is not None, "pip install -e . first"
    return subprocess.run([SCRIPT, *args], check=False, capture_output=True, text=True, timeout=120, env=dict(os.environ))


@pytest.mark.slow
def test_the_console_script_purges_and_verifies_the_archive(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    """``chatledger retention purge`` then ``chatledger audit verify --archive``: the
    sessions of the story are months old on the real clock."""
    ledger = ChatLedger.open(database_url, clock=clock)
    try:
        old = _story(ledger, clock)
    finally:
        ledger.close()
    archive = tmp_path / "archive"
    done = _cli("retention", "purge", "--older-than-days", "30", "--archive-dir", str(archive), "-d", database_url, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["archived"], doc["removed_sessions"]) == (3, 3)
    checked = _cli("audit", "verify", "--archive", str(archive), "-d", database_url)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    said = " ".join(checked.stdout.split())  # rich wraps long lines
    assert f"removed by retention: {doc['removed_events']} events" in said
    assert "3 of 3 removed sessions agree with the log" in said
    path = Path(doc["removal_archives"][0])
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    path.write_bytes(gzip.compress(("\n".join(lines[:-1]) + "\n").encode()))  # a line lost
    broken = _cli("audit", "verify", "--archive", str(archive), "-d", database_url)
    assert broken.returncode == 1
    said = " ".join(broken.stdout.split())
    assert "archive mismatch" in said and json.loads(lines[-1])["session_id"] in said
    assert json.loads(lines[-1])["session_id"] in {str(sid) for sid in old}
