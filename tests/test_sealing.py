"""The log seal: truncation against an anchor, forged re-seals, the unsealed tail and its bound,
on SQLite and PostgreSQL (the per-event tamper table is tests/test_audit_chain.py, sealed too)."""

from __future__ import annotations

import json
import threading
from uuid import UUID

import pytest
from chatledger import ChatLedger, ManualClock
from chatledger.entrypoints.cli import app
from chatledger.infrastructure.hashchain import event_hash
from typer.testing import CliRunner

from .audit_helpers import RawDB


def _story(ledger: ChatLedger) -> list[UUID]:
    sessions = []
    for who in ("ann", "ben", "cid"):
        sid = ledger.receive(f"v-{who}", f"hello from {who}").session_id
        ledger.reply(sid, f"hi {who}")
        sessions.append(sid)
    return sessions


def test_truncating_the_tail_is_caught_only_by_the_anchor(database_url: str) -> None:
    with ChatLedger.open(database_url, seal_every_events=0) as ledger:
        _story(ledger)
        ledger.seal()
        cut = ledger.recorder.max_notification_id()
        late = ledger.receive("v-dan", "the last words").session_id
        ledger.seal()
        anchor = ledger.anchor()
        assert anchor is not None and anchor.endswith(f"@{ledger.recorder.max_notification_id()}")
        assert ledger.verify(anchor=anchor).ok
    raw = RawDB(database_url)
    raw.delete_aggregate(late, with_hashes=True)  # the attacker removes the tail, hashes and its seal
    raw.execute(f"DELETE FROM {raw.events} WHERE {raw.position} > ?", (cut,))
    raw.execute("DELETE FROM chatledger_event_hashes WHERE notification_id > ?", (cut,))
    raw.execute("DELETE FROM chatledger_seals WHERE last_id > ?", (cut,))
    with ChatLedger.open(database_url) as fresh:
        assert fresh.verify().ok  # the shortened log is consistent in itself
        report = fresh.verify(anchor=anchor)
    assert [(b.kind, b.position) for b in report.breaks] == [("truncated log", int(anchor.split("@")[1]))]
    runner = CliRunner()
    result = runner.invoke(app, ["audit", "verify", "-d", database_url, "--anchor", anchor])
    assert result.exit_code == 1 and "truncated log" in result.output


def test_a_forged_reseal_after_dropping_a_session_is_caught_by_the_anchor(database_url: str) -> None:
    with ChatLedger.open(database_url, seal_every_events=0) as ledger:
        _, ben, _ = _story(ledger)
        ledger.seal()
        anchor = ledger.anchor()
        assert anchor is not None
    raw = RawDB(database_url)
    raw.delete_aggregate(ben, with_hashes=True)
    with ChatLedger.open(database_url) as fresh:
        first = fresh.verify().first_break
        assert first is not None and first.kind == "broken seal"
    raw.execute("DELETE FROM chatledger_seals")  # ... so the attacker seals the log anew
    with ChatLedger.open(database_url, seal_every_events=0) as fresh:
        fresh.seal()
        assert fresh.verify().ok  # without an anchor, a rewritten log with fresh seals passes
        report = fresh.verify(anchor=anchor)
    assert [b.kind for b in report.breaks] == ["anchor mismatch"]


def test_an_event_forged_with_its_hash_row_after_the_seal_sits_in_the_tail(database_url: str) -> None:
    """The limit of the design, shown: the unsealed tail is only per-session chained, so a
    writer with database access can append a well-hashed event there; it is reported
    as tail (and --strict flags a tail past its bound), and once sealed it is part of the log."""
    with ChatLedger.open(database_url, seal_every_events=0) as ledger:
        ann = _story(ledger)[0]
        ledger.seal()
        sealed = ledger.verify().sealed_through
    raw = RawDB(database_url)
    top, topic, state, prev = raw.execute(
        "SELECT e.originator_version, e.topic, e.state, h.event_hash FROM "
        f"{raw.events} e JOIN chatledger_event_hashes h ON h.originator_id=e.originator_id "
        "AND h.originator_version=e.originator_version WHERE e.originator_id=? "
        "ORDER BY e.originator_version DESC LIMIT 1",
        (raw.id_param(ann),),
    )[0]
    raw.execute(
        f"INSERT INTO {raw.events} (originator_id, originator_version, topic, state) VALUES (?,?,?,?)",
        (raw.id_param(ann), top + 1, topic, bytes(state)),
    )
    pos = raw.execute(f"SELECT MAX({raw.position}) FROM {raw.events}")[0][0]
    forged = event_hash(bytes(prev), ann, top + 1, topic, bytes(state))
    raw.execute("INSERT INTO chatledger_event_hashes VALUES (?,?,?,?,?)", (pos, raw.id_param(ann), top + 1, forged, b""))
    with ChatLedger.open(database_url) as fresh:
        report = fresh.verify()
    assert report.ok and (report.sealed_through, report.tail_count) == (sealed, 1)


def test_strict_verify_fails_on_a_long_or_old_tail(database_url: str, clock: ManualClock) -> None:
    runner = CliRunner()
    with ChatLedger.open(database_url, clock=clock, seal_every_events=0) as ledger:
        _story(ledger)
        report = ledger.verify()
        assert report.tail_count == report.checked > 0 and report.sealed_through == 0
    env = {"CHATLEDGER_AUDIT_TAIL_MAX_EVENTS": "3"}
    result = runner.invoke(app, ["audit", "verify", "-d", database_url, "--strict", "--json"], env=env)
    assert result.exit_code == 1, result.output
    assert json.loads(result.output)["tail_within_bound"] is False
    assert runner.invoke(app, ["audit", "verify", "-d", database_url], env=env).exit_code == 0  # not strict
    anchor = runner.invoke(app, ["audit", "anchor", "-d", database_url])  # seals first
    assert anchor.exit_code == 0 and "@" in anchor.output
    result = runner.invoke(app, ["audit", "verify", "-d", database_url, "--strict", "--anchor", anchor.output.strip()], env=env)
    assert result.exit_code == 0, result.output
    assert "unsealed tail: 0 events" in " ".join(result.output.split())
    with ChatLedger.open(database_url, clock=clock, seal_every_events=0) as ledger:
        ledger.receive("v-late", "one more")
        clock.advance(seconds=60)
        report = ledger.verify()
    assert report.tail_count == 4 and report.tail_age_s == pytest.approx(60, abs=1)  # visitor + session events
    assert not report.tail_within(5000, 10.0) and report.tail_within(5000, 120.0)


def test_the_in_process_sealer_keeps_the_tail_under_the_bound_under_concurrent_writers(database_url: str) -> None:
    """Benchmark-like load: writers in threads, each its own conversation, default settings."""
    with ChatLedger.open(database_url) as ledger:
        bound = ledger.settings.audit_tail_max_events
        worst: list[int] = []
        stop = threading.Event()

        def writer(n: int) -> None:
            sid = ledger.receive(f"v-load-{n}", "hello " * 13).session_id
            for i in range(150):
                ledger.reply(sid, f"reply {i} " + "x" * 320)
                ledger.receive(f"v-load-{n}", f"message {i} " + "y" * 70)

        def watch() -> None:
            while not stop.is_set():
                worst.append(ledger.verify().tail_count)
                stop.wait(0.2)

        errors: list[BaseException] = []

        def rival_sealer() -> None:  # another process's sealer racing for the same ranges
            try:
                with ChatLedger.open(database_url) as other:
                    while not stop.is_set():
                        other.seal()
                        stop.wait(0.05)
            except Exception as e:  # noqa: BLE001 - asserted below
                errors.append(e)

        watcher = threading.Thread(target=watch)
        rival = threading.Thread(target=rival_sealer)
        watcher.start()
        rival.start()
        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        watcher.join()
        rival.join()
        final = ledger.verify()
    assert errors == []
    # every seal recomputes from the rows: an event sealed past (committed below a seal) would break one
    assert final.ok and final.sealed_through > 0, final.breaks
    assert final.tail_count < ledger.recorder.seal_every + 8 * 4  # at most one batch per writer over the mark
    assert max(worst) <= bound, worst
