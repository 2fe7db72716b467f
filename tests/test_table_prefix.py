"""Table prefixes (issue 17): two ledgers with different prefixes in one PostgreSQL schema
(or one SQLite file) never see each other's data; the default prefix keeps today's names."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from chatledger import ChatLedger, ConfigurationError, ManualClock
from chatledger.application.log_retention import remove_archived_sessions
from chatledger.domain.table_prefix import MAX_PREFIX_CHARS, table_name

from .conftest import POSTGRES_CONNINFO
from .helpers import event_names

OTHER = "bot2_"


@pytest.fixture
def pair(database_url: str, clock: ManualClock) -> Iterator[tuple[ChatLedger, ChatLedger]]:
    a = ChatLedger.open(database_url, clock=clock)
    b = ChatLedger.open(database_url, clock=clock, table_prefix=OTHER)
    yield a, b
    b.close()
    a.close()


def _write(ledger: ChatLedger, name: str) -> list[object]:
    sessions = []
    for visitor in (f"v-{name}", "v-shared"):
        turn = ledger.receive(visitor_id=visitor, text=f"hello from {name}")
        ledger.reply(turn.session_id, f"hi {name}")
        ledger.set_slot(turn.session_id, "name", name)
        sessions.append(turn.session_id)
    ledger.link_identity(visitor_id=f"v-{name}", user_id=f"u-{name}")
    ledger.seal()
    ledger.catch_up()
    return sessions


def _texts(ledger: ChatLedger, **query: str) -> list[str]:
    return [m.text for m in ledger.transcript(**query).messages]


def test_two_prefixes_do_not_see_each_other(pair: tuple[ChatLedger, ChatLedger], clock: ManualClock) -> None:
    a, b = pair
    a_sessions, b_sessions = _write(a, "a"), _write(b, "b")
    a.api_keys.create("a's key", ["bot"])

    assert _texts(a, visitor_id="v-shared") == ["hello from a", "hi a"]
    assert _texts(b, visitor_id="v-shared") == ["hello from b", "hi b"]
    assert _texts(a, user_id="u-a") == ["hello from a", "hi a"]
    assert _texts(b, user_id="u-a") == []
    assert a.analytics().sessions == 2 and b.analytics().sessions == 2
    assert a.memory(user_id="u-a").known and not b.memory(user_id="u-a").known
    assert b.memory(user_id="u-b").known
    assert [k.name for k in a.api_keys.list()] == ["a's key"] and b.api_keys.list() == []
    with pytest.raises(Exception):
        b.session(a_sessions[0])
    for ledger in (a, b):
        report = ledger.verify()
        assert report.break_count == 0 and report.seals == 1
        assert report.checked == a.verify().checked  # the same writes, each counted in its own log

    # Erasing in one does not touch the other.
    a.erase(user_id="u-a")
    a.catch_up()
    assert _texts(a, user_id="u-a") != ["hello from a", "hi a"]
    assert _texts(b, user_id="u-b") == ["hello from b", "hi b"]
    assert b.session(b_sessions[0]).messages[0].text == "hello from b"
    assert a.verify().break_count == 0 and b.verify().break_count == 0

    # The sweep of one does not time out the other's sessions.
    clock.advance(timedelta(hours=2))
    assert a.sweep() == 2
    assert not any("TimedOut" in event_names(b, s) for s in b_sessions)
    assert b.sweep() == 2
    assert all("TimedOut" in event_names(b, s) for s in b_sessions)
    b.receive(visitor_id="v-b-only", text="only in b")  # b's figures now differ from a's
    b.catch_up()
    assert a.analytics().sessions == 2 and b.analytics().sessions == 3
    a_curve, b_curve = (x.timeout_curve([timedelta(minutes=30)]) for x in (a, b))
    assert (a_curve.messages, b_curve.messages) == (4, 5)


@pytest.mark.postgres
def test_every_postgres_object_of_a_prefix_is_named_after_it(postgres_url: str) -> None:
    schema = postgres_url.split("schema=")[1]
    for prefix in (None, OTHER):
        settings = {} if prefix is None else {"table_prefix": prefix}
        with ChatLedger.open(postgres_url, **settings) as ledger:
            _write(ledger, "x")
    with psycopg.connect(POSTGRES_CONNINFO) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
            "UNION ALL SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s",
            (schema, schema),
        )]
    ours = [n for n in names if OTHER in n]
    assert "bot2_events" in ours and "bot2_insert_events_v1" in ours and "bot2_analytics_sessions" in ours
    assert "chatledger_events" in names and "chatledger_insert_events_v1" in names and "analytics_sessions" in names
    # eventsourcing's composite type (fixed name, one definition) is shared; its fixed-name insert
    # function (unused: chatledger refuses POSTGRES_ENABLE_DB_FUNCTIONS) only the default prefix creates.
    shared = {"stored_event_uuid", "es_insert_events_uuid"}
    default = sorted(set(names) - set(ours) - shared)
    assert len(ours) == len(default), (sorted(ours), default)  # each object once per prefix


def test_a_prefixed_sqlite_ledger_leaves_the_default_names_alone(sqlite_url: str) -> None:
    with ChatLedger.open(sqlite_url, table_prefix=OTHER) as ledger:
        _write(ledger, "x")
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")]
    assert names and all(n.startswith((OTHER, f"ix_{OTHER}")) for n in names), sorted(names)


@pytest.mark.parametrize(
    "prefix", ["", "bot2", "Bot2_", "2bot_", "bot-2_", "bot 2_", 'b"_', "b" * MAX_PREFIX_CHARS + "_"]
)
def test_a_prefix_that_cannot_name_tables_is_refused(sqlite_url: str, prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="table_prefix"):
        ChatLedger.open(sqlite_url, table_prefix=prefix)
    assert not os.path.exists(sqlite_url.removeprefix("sqlite:///"))


def test_every_name_of_the_longest_prefix_fits_postgres() -> None:
    from chatledger.application.event_feed import WEBHOOKS
    from chatledger.infrastructure.api_keys import metadata as api_key_metadata
    from chatledger.infrastructure.recording import LedgerTableNames
    from chatledger.projections import DEFAULT_READ_MODELS
    from chatledger.projections.tracking import TRACKING

    prefix = "p" * (MAX_PREFIX_CHARS - 1) + "_"
    names = ["events_notification_id_idx", "snapshots_pkey", "insert_events_v1"]
    names += [getattr(LedgerTableNames, n) for n in ("HASHES", "KEYS", "DESTROYED", "KEY_OWNERS", "SEALS")]
    for metadata in [m.metadata for m in DEFAULT_READ_MODELS] + [TRACKING, WEBHOOKS, api_key_metadata]:
        for table in metadata.tables.values():
            names += [table.name + "_pkey"] + [str(i.name) for i in table.indexes]
    longest = max((table_name(prefix, n) for n in names), key=len)
    assert len(longest.encode()) + len("__g9999") <= 63, longest


@pytest.mark.slow
def test_a_worker_with_a_prefix_sweeps_only_its_ledger(database_url: str, clock: ManualClock) -> None:
    with ChatLedger.open(database_url, clock=clock) as a, ChatLedger.open(database_url, clock=clock, table_prefix=OTHER) as b:
        a_sessions, b_sessions = _write(a, "a"), _write(b, "b")  # idle since the clock's start, long ago
    script = os.path.join(os.path.dirname(sys.executable), "chatledger")
    done = subprocess.run(
        [script, "--prefix", OTHER, "worker", "--once", "--database", database_url],
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "2"
    with ChatLedger.open(database_url) as a, ChatLedger.open(database_url, table_prefix=OTHER) as b:
        assert all("TimedOut" in event_names(b, s) for s in b_sessions)
        assert not any("TimedOut" in event_names(a, s) for s in a_sessions)


def test_a_console_script_reads_the_prefix_from_the_environment(sqlite_url: str) -> None:
    with ChatLedger.open(sqlite_url, table_prefix=OTHER) as ledger:
        ledger.receive(visitor_id="v-1", text="hello")
    with ChatLedger.open(sqlite_url) as ledger:
        ledger.receive(visitor_id="v-2", text="hi")
    script = os.path.join(os.path.dirname(sys.executable), "chatledger")
    env = {**os.environ, "CHATLEDGER_TABLE_PREFIX": OTHER}
    done = subprocess.run(
        [script, "projections", "catch-up", "--database", sqlite_url], env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        assert conn.execute(f"SELECT count(*) FROM {OTHER}conversation_messages").fetchone() == (1,)
        assert conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'conversation_messages'"
        ).fetchone() == (0,)


def test_a_prefixed_ledgers_backup_restores_and_verifies(database_url: str, tmp_path: Path) -> None:
    from chatledger import InvalidCommandError
    from chatledger.application.backups import create_backup, restore_backup

    from .conftest import drop_schema
    from .test_backups import other_store

    with ChatLedger.open(database_url) as ledger:  # the default ledger next to it: not in the backup's head
        _write(ledger, "a")
        _write(ledger, "a2")
    with ChatLedger.open(database_url, table_prefix=OTHER) as ledger:
        sessions = _write(ledger, "b")
        manifest = create_backup(ledger, tmp_path / "b")
        head = ledger.verify().head_position
    assert manifest.table_prefix == OTHER and manifest.head == head == manifest.events
    target = other_store(database_url, tmp_path)
    try:
        with pytest.raises(InvalidCommandError, match="table prefix"):
            restore_backup(tmp_path / "b", target, table_prefix="bot3_")
        check = restore_backup(tmp_path / "b", target)
        assert check.ok, check.problems
        with ChatLedger.open(target, table_prefix=OTHER) as copy:
            assert copy.verify(anchor=manifest.anchor).ok
            assert _texts(copy, session_id=str(sessions[0])) == ["hello from b", "hi b"]
    finally:
        if not target.startswith("sqlite"):
            drop_schema(make_url(target).query["schema"])  # type: ignore[arg-type]


def test_rebuilds_of_a_prefixed_ledger_leave_the_other_alone(pair: tuple[ChatLedger, ChatLedger]) -> None:
    a, b = pair
    _write(a, "a")
    _write(b, "b")
    b.projector.rebuild_shadow(["conversation_log", "analytics", "memory"], batch_size=3)  # new tables, swapped in
    b.projector.rebuild_shadow(["conversation_log"])  # a second generation: its indexes __g2
    b.projector.rebuild("active_sessions")  # in place
    assert _texts(b, visitor_id="v-shared") == ["hello from b", "hi b"]
    assert _texts(a, visitor_id="v-shared") == ["hello from a", "hi a"]
    assert a.analytics().sessions == 2 and b.analytics().sessions == 2
    assert b.memory(user_id="u-b").known and not b.memory(user_id="u-a").known
    assert {s.name: s.position for s in a.projection_status()} == {s.name: s.position for s in b.projection_status()}


def test_retention_of_one_prefix_archives_only_its_sessions(
    pair: tuple[ChatLedger, ChatLedger], clock: ManualClock, tmp_path: Path
) -> None:
    a, b = pair
    for ledger, name in ((a, "a"), (b, "b")):
        turn = ledger.receive(visitor_id="v", text=f"hi {name}")
        ledger.end_session(turn.session_id)
    clock.advance(timedelta(days=40))
    b.catch_up()
    assert b.archive_closed_sessions(timedelta(days=30), tmp_path / "archive").archived == 1
    a.catch_up()
    b.catch_up()
    assert _texts(a, visitor_id="v") == ["hi a"] and _texts(b, visitor_id="v") == []
    assert a.verify().break_count == 0 and b.verify().break_count == 0


def test_log_retention_removal_of_one_prefix_leaves_the_others_events(
    pair: tuple[ChatLedger, ChatLedger], clock: ManualClock, tmp_path: Path
) -> None:
    a, b = pair
    sessions = {}
    for ledger, name in ((a, "a"), (b, "b")):
        turn = ledger.receive(visitor_id="v", text=f"hi {name}")
        ledger.end_session(turn.session_id)
        sessions[name] = turn.session_id
    clock.advance(timedelta(days=40))
    for ledger in (a, b):
        ledger.catch_up()
    assert b.archive_closed_sessions(timedelta(days=30), tmp_path).archived == 1
    assert remove_archived_sessions(b, timedelta(days=30), tmp_path).removed_sessions == 1
    assert list(b.recorder.select_events(sessions["b"])) == []  # type: ignore[attr-defined]
    kept = list(a.recorder.select_events(sessions["a"]))  # type: ignore[attr-defined]
    assert len(kept) >= 2 and a.session(sessions["a"]).session_id == sessions["a"]
    assert _texts(a, visitor_id="v") == ["hi a"]
    report_a, report_b = a.verify(), b.verify()
    assert report_a.ok and report_a.removed == 0, report_a.breaks
    assert report_b.ok and report_b.removed > 0, report_b.breaks
