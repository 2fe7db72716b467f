"""The rebuild fast paths store exactly what the plain SQLAlchemy paths store,
and shared reads keep per-read-model positions right."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from chatledger import ChatLedger
from chatledger.projections.sqltypes import UTCDateTime
from chatledger.projections.writers import executemany, insert_rows
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
    select,
    text,
)
from sqlalchemy.dialects import sqlite

from .test_projections import at, dump, write_history

TIMES = [
    datetime(2026, 1, 5, 8, 0, tzinfo=UTC),
    datetime(2026, 1, 5, 8, 0, 0, 1, tzinfo=UTC),
    datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5))),
    datetime(1999, 2, 3, 4, 5, 6, 789, tzinfo=timezone(timedelta(hours=2, minutes=30))),
]


def test_fast_sqlite_datetime_binding_matches_sqlalchemys() -> None:
    dialect = sqlite.dialect()
    fast = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    generic = UTCDateTime().impl.dialect_impl(dialect).bind_processor(dialect)
    assert fast is not None and generic is not None
    for value in TIMES:
        expected = generic(UTCDateTime().process_bind_param(value, dialect))
        assert fast(value) == expected
    assert fast(None) is None


def _table(metadata: MetaData, name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("k", String(36), primary_key=True),
        Column("at", UTCDateTime),
        Column("n", Integer),
        Column("x", Float),
        Column("flag", Boolean),
        Column("doc", JSON),
        Column("note", String(50)),
    )


def test_bulk_writes_store_what_conn_execute_stores(database_url: str) -> None:
    from chatledger.infrastructure.database import make_engine
    from chatledger.infrastructure.persistence import schema_lock
    from chatledger.infrastructure.settings import Settings

    settings = Settings(database_url=database_url)
    with schema_lock(settings):  # creates the PostgreSQL schema
        engine = make_engine(settings)
    metadata = MetaData()
    plain, fast = _table(metadata, "bulk_plain"), _table(metadata, "bulk_fast")
    metadata.create_all(engine)
    rows: list[dict[str, Any]] = [
        {
            "k": f"row-{i}",
            "at": TIMES[i % len(TIMES)] if i % 5 else None,
            "n": i,
            "x": i / 3,
            "flag": bool(i % 2),
            "doc": {"slots": {"name": ["Ana", "user"]}, "i": i} if i % 3 else [],
            "note": None if i % 4 else "note",
        }
        for i in range(40)
    ]
    try:
        with engine.begin() as conn:
            conn.execute(plain.insert(), rows)
            insert_rows(conn, fast, rows)
            updates = [{"k_": f"row-{i}", "v_n": -i, "v_at": TIMES[0]} for i in range(0, 40, 3)]
            for table in (plain, fast):
                statement = (
                    table.update()
                    .where(table.c.k == bindparam("k_"))
                    .values(n=bindparam("v_n"), at=bindparam("v_at"))
                )
                if table is plain:
                    conn.execute(statement, updates)
                else:
                    executemany(conn, statement, updates)
        with engine.connect() as conn:
            # Compare what the database holds, below SQLAlchemy's result processing.
            raw = [
                conn.execute(text(f"SELECT * FROM {t.name} ORDER BY k")).all()
                for t in (plain, fast)
            ]
            typed = [conn.execute(select(t).order_by(t.c.k)).all() for t in (plain, fast)]
        assert raw[0] == raw[1]
        assert typed[0] == typed[1]
        assert len(raw[0]) == 40
    finally:
        metadata.drop_all(engine)
        engine.dispose()


def test_read_models_at_different_positions_share_reads_and_end_equal(ledger: ChatLedger) -> None:
    write_history(ledger, visitors=6)
    projector = ledger.projector
    head = projector.head()
    # One read model ahead of the others: the shared loop must serve both groups.
    projector.catch_up(["conversation_log"], batch_size=7)
    assert projector.position("conversation_log") == head
    assert projector.position("analytics") == 0
    late = ledger.receive("late", "hello again", at=at(10_000))
    ledger.reply(late.session_id, "welcome", at=at(10_001))
    ledger.link_identity("late", "ana", at=at(10_002))
    ledger.receive("visitor-1", "back", at=at(20_000))
    applied = projector.catch_up(batch_size=4)
    head2 = projector.head()
    others = len(projector.projections) - 1  # every read model but conversation_log starts at 0
    assert applied == (head2 - head) + others * head2
    assert {s.position for s in ledger.projection_status()} == {head2}
    live = dump(ledger)
    assert projector.rebuild_many(batch_size=5) == len(projector.projections) * head2
    assert dump(ledger) == live
    for name in projector.projections:
        projector.rebuild(name, batch_size=1000)
    assert dump(ledger) == live


def test_plain_engine_executemany_falls_back_outside_sqlite() -> None:
    # The helper is dialect-neutral: on SQLite it must also accept statements it
    # has compiled before (cached) and rows whose values need no processing.
    engine = create_engine("sqlite://")
    metadata = MetaData()
    table = Table("t", metadata, Column("k", Integer, primary_key=True), Column("v", String(5)))
    metadata.create_all(engine)
    with engine.begin() as conn:
        for start in (0, 10):
            executemany(conn, table.insert(), [{"k": start + i, "v": str(i)} for i in range(10)])
        executemany(conn, table.insert(), [])
        assert conn.execute(select(table.c.v).order_by(table.c.k)).scalars().all()[-1] == "9"


def _index_names(ledger: ChatLedger) -> set[str]:
    from sqlalchemy import inspect

    inspector = inspect(ledger.projector.engine)
    return {
        i["name"]
        for table in ("conversation_messages", "conversation_sessions")
        for i in inspector.get_indexes(table)
    }


def test_a_rebuild_defers_read_only_indexes_and_always_restores_them(ledger: ChatLedger) -> None:
    from chatledger.projections.conversation_log import ConversationLog
    from chatledger.projections.view import SQLView

    write_history(ledger, visitors=4)
    expected = _index_names(ledger)
    assert set(ConversationLog.deferred_indexes) <= expected
    ledger.catch_up()
    live = dump(ledger)
    ledger.projector.rebuild("conversation_log", batch_size=3)
    assert _index_names(ledger) == expected
    assert dump(ledger) == live

    class Boom(Exception):
        pass

    def fail(done: int, total: int) -> None:
        assert not set(ConversationLog.deferred_indexes) & _index_names(ledger)
        raise Boom

    with pytest.raises(Boom):
        ledger.projector.rebuild("conversation_log", batch_size=3, progress=fail)
    assert _index_names(ledger) == expected  # restored after a failure
    # A process killed mid-rebuild: the next SQLView creates them again.
    view = ledger.projector["conversation_log"].view
    view.drop_indexes(ConversationLog.deferred_indexes)
    SQLView(view.engine, view.name, view.metadata)
    assert _index_names(ledger) == expected
    ledger.catch_up()
    assert dump(ledger) == live
