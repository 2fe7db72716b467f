"""The SQLite recorder's batch insert (one ``executemany``) stores exactly what
eventsourcing's row-by-row insert stores: the same rows at the same notification
ids, the same hash chain; and a rejected batch leaves nothing behind."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from chatledger.infrastructure.hashchain import (
    GENESIS,
    VerificationReport,
    chain_rows,
    event_hash,
    log_hash,
)
from chatledger.infrastructure.recording import HASHES
from chatledger.infrastructure.sqlite import SQLiteLedgerRecorder
from eventsourcing.persistence import IntegrityError, OperationalError, StoredEvent
from eventsourcing.sqlite import SQLiteCursor, SQLiteDatastore
from hypothesis import given
from hypothesis import strategies as st


class RowByRowRecorder(SQLiteLedgerRecorder):
    """The same recorder, inserting events the library's way: its insert statement, one execute
    per event, each id its ``lastrowid``."""

    def insert_event_rows(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], hexes: Sequence[str]
    ) -> list[int]:
        ids = []
        for s, hex_id in zip(stored_events, hexes, strict=True):
            c.execute(self.insert_events_statement, (hex_id, s.originator_version, s.topic, s.state))
            assert c.lastrowid is not None
            ids.append(c.lastrowid)
        return ids


def recorder(cls: type[SQLiteLedgerRecorder], path: Path) -> SQLiteLedgerRecorder:
    r = cls(SQLiteDatastore(str(path)))
    r.create_table()
    return r


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[SQLiteLedgerRecorder, SQLiteLedgerRecorder]]:
    a, b = recorder(SQLiteLedgerRecorder, tmp_path / "batch.db"), recorder(RowByRowRecorder, tmp_path / "rows.db")
    yield a, b
    a.datastore.close()
    b.datastore.close()


def ev(oid: UUID, version: int, text: str = "x") -> StoredEvent:
    return StoredEvent(originator_id=oid, originator_version=version, topic="t:E", state=f'{{"v":"{text}"}}'.encode())


def dump(path: Path) -> tuple[list[Any], list[Any]]:
    conn = sqlite3.connect(path)
    try:
        events = conn.execute("SELECT rowid, * FROM stored_events ORDER BY rowid").fetchall()
        hashes = conn.execute(f"SELECT * FROM {HASHES} ORDER BY notification_id").fetchall()
    finally:
        conn.close()
    return events, hashes


def test_batches_store_the_same_rows_ids_and_chain_as_row_by_row(
    pair: tuple[SQLiteLedgerRecorder, SQLiteLedgerRecorder], tmp_path: Path
) -> None:
    batch, rows = pair
    a, b, c = uuid4(), uuid4(), uuid4()
    batches = [
        [ev(a, 1), ev(a, 2), ev(b, 1)],  # several aggregates in one batch
        [ev(c, 1)],  # a batch of one
        [ev(b, 2), ev(a, 3), ev(b, 3), ev(c, 2)],  # continues chains from earlier batches
        [ev(uuid4(), 1, str(i)) for i in range(1200)] + [ev(a, 4)],  # more pairs than one look-up holds
        [ev(a, 5), ev(b, 4), ev(c, 3), ev(a, 6), ev(b, 5), ev(c, 4)],
    ]
    for events in batches:
        assert batch.insert_events(events) == rows.insert_events(events)
    assert dump(tmp_path / "batch.db") == dump(tmp_path / "rows.db")
    assert batch.verify(VerificationReport(scope="log")).ok


def test_a_rejected_batch_stores_neither_events_nor_hashes(
    pair: tuple[SQLiteLedgerRecorder, SQLiteLedgerRecorder], tmp_path: Path
) -> None:
    batch, _ = pair
    a, b = uuid4(), uuid4()
    assert batch.insert_events([ev(a, 1), ev(b, 1)]) == [1, 2]
    before = dump(tmp_path / "batch.db")
    with pytest.raises(IntegrityError):
        batch.insert_events([ev(uuid4(), 1), ev(b, 2), ev(a, 1), ev(uuid4(), 1)])  # a@1 is taken
    assert dump(tmp_path / "batch.db") == before
    assert batch.insert_events([ev(b, 2), ev(a, 2)]) == [3, 4]  # ids continue without a gap
    assert batch.verify(VerificationReport(scope="log")).ok


def test_ids_are_read_back_when_sqlite_does_not_count_up(
    pair: tuple[SQLiteLedgerRecorder, SQLiteLedgerRecorder], tmp_path: Path
) -> None:
    """With a rowid at 2**63 - 1 SQLite picks random rowids; the ids must still be right."""
    batch, _ = pair
    conn = sqlite3.connect(tmp_path / "batch.db")
    conn.execute("INSERT INTO stored_events (rowid, originator_id, originator_version, topic, state) "
                 "VALUES (?, ?, 1, 't:E', x'7b7d')", (2**63 - 1, uuid4().hex))
    conn.commit()
    conn.close()
    events = [ev(uuid4(), 1, str(i)) for i in range(20)]
    ids = batch.insert_events(events)
    assert ids is not None
    stored, hashes = dump(tmp_path / "batch.db")
    by_key = {(UUID(r[1]), r[2]): r[0] for r in stored}
    assert list(ids) == [by_key[(e.originator_id, e.originator_version)] for e in events]
    assert sorted(h[0] for h in hashes) == sorted(ids)


def reference_chain_rows(
    stored_events: Sequence[StoredEvent], ids: Sequence[int], prev: dict[UUID, bytes], prev_log: bytes
) -> list[tuple[int, UUID, int, bytes, bytes]]:
    """The chain as hashchain.py defines it (and verification recomputes it)."""
    rows, last = [], dict(prev)
    for s, nid in sorted(zip(stored_events, ids, strict=True), key=lambda p: p[1]):
        oid = UUID(str(s.originator_id))
        ev = event_hash(last.get(oid, GENESIS), oid, s.originator_version, s.topic, s.state)
        prev_log = log_hash(prev_log, nid, oid, s.originator_version, ev)
        last[oid] = ev
        rows.append((nid, oid, s.originator_version, ev, prev_log))
    return rows


@given(
    versions=st.lists(st.tuples(st.integers(0, 4), st.integers(1, 10**12)), min_size=1, max_size=30),
    states=st.lists(st.binary(max_size=300), min_size=30, max_size=30),
    shuffle=st.randoms(use_true_random=False),
    known=st.booleans(),
)
def test_chain_rows_computes_the_digests_hashchain_defines(
    versions: list[tuple[int, int]], states: list[bytes], shuffle: Any, known: bool
) -> None:
    oids = [uuid4() for _ in range(5)]
    events = [
        StoredEvent(
            originator_id=oids[k] if i % 2 else str(oids[k]),  # UUIDs, or ids as text
            originator_version=v,
            topic=f"chatledger.domain.session:Session.E{k}",
            state=states[i],
        )
        for i, (k, v) in enumerate(versions)
    ]
    ids = list(range(100, 100 + len(events)))
    shuffle.shuffle(ids)  # rows are chained in notification order, whatever the input order
    prev = {oids[0]: bytes(range(32))} if known else {}
    head = bytes(32) if known else bytes(range(1, 33))
    assert chain_rows(events, ids, prev, head) == reference_chain_rows(events, ids, prev, head)


def test_big_batches_fit_the_parameter_limit_of_every_sqlite_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite before 3.32 (still in some LTS distributions) binds at most 999
    parameters per statement; a sweep of thousands of sessions, and a save of
    over a thousand new visitors, must still work there."""
    from datetime import UTC, datetime, timedelta

    from chatledger import ChatLedger
    from chatledger.domain.ids import uuid7
    from chatledger.domain.policy import AppliedPolicy
    from chatledger.domain.session import Session

    connect = sqlite3.connect

    def old_sqlite(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        return conn

    monkeypatch.setattr(sqlite3, "connect", old_sqlite)
    t0 = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
    with (
        ChatLedger.open(f"sqlite:///{tmp_path}/chat.db") as probe,
        pytest.raises(OperationalError, match="too many SQL variables"),
        probe.recorder.datastore.transaction(commit=False) as c,  # type: ignore[attr-defined]
    ):
        c.execute(f"SELECT 1 WHERE 1 IN ({','.join('?' * 1000)})", list(range(1000)))
    with ChatLedger.open(f"sqlite:///{tmp_path}/chat.db") as ledger:
        policy = AppliedPolicy.of(ledger.policy)
        sessions = []
        for i in range(1200):  # one save: 1,200 new visitors' keys checked in one transaction
            at = t0 + timedelta(milliseconds=i)
            session = Session.start(session_id=uuid7(at), visitor_id=f"v-{i}", at=at, policy=policy)
            session.receive(f"secret {i}", at=at)
            sessions.append(session)
        ledger.save(*sessions)
        assert ledger.sweep(now=t0 + timedelta(days=1)) == 1200  # batches of 5,000 rows
        assert ledger.verify().ok
        assert ledger.session(sessions[1100].id).messages[0].text == "secret 1100"
