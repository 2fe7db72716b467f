"""The SQLite ledger recorder: eventsourcing's ``SQLiteApplicationRecorder``
plus the hash chain and the key tables (see :mod:`chatledger.infrastructure.recording`).

Only eventsourcing's public surface is used: ``insert_events`` is replaced as
a whole (one write transaction from ``datastore.transaction``), the events are
written with the library's ``insert_events_statement`` and the tables are
declared through ``construct_create_table_statements``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteDatastore

from ...domain.batching import batched
from .. import recording
from ..hashchain import as_uuid, chain_rows_by_hex
from ...domain.table_prefix import DEFAULT_PREFIX
from ..recording import KeyRow, LedgerRecorderMixin, key_work
from ..sealing import Seal, next_seal
from .queries import PAIRS_PER_QUERY, sqlite_select_in
from .removal import SQLiteRemoval
from .verification import SQLiteVerification


@contextmanager
def secure_delete(c: SQLiteCursor) -> Iterator[None]:
    """``PRAGMA secure_delete`` around the statements inside: what they delete
    is overwritten with zeros (in the page and in freed pages) as it is
    deleted. Only where erased data could otherwise survive (destroyed keys,
    erased sessions' snapshots): on the plain write path it would zero every
    freed page for nothing (see :func:`plain_delete`). The pragma is the
    connection's, so it is turned off again for the next transaction."""
    c.execute("PRAGMA secure_delete=ON")
    try:
        yield
    finally:
        c.execute("PRAGMA secure_delete=OFF")


def plain_delete(c: SQLiteCursor) -> None:
    """``PRAGMA secure_delete=OFF`` for a write transaction that erases nothing.

    The pragma is per connection, and its default is the library's build
    option: Debian's SQLite (and so Python's on it) is built with
    ``SQLITE_SECURE_DELETE``, i.e. on. Replacing a snapshot frees pages of
    ciphertext under a live key; zeroing them protects nothing."""
    c.execute("PRAGMA secure_delete=OFF")


class SQLiteLedgerRecorder(SQLiteVerification, SQLiteRemoval, LedgerRecorderMixin, SQLiteApplicationRecorder):
    """eventsourcing's SQLite recorder plus the hash chain and the key tables."""

    datastore: SQLiteDatastore

    def __init__(
        self, datastore: SQLiteDatastore, events_table_name: str = "stored_events", *, table_prefix: str = DEFAULT_PREFIX
    ) -> None:
        self.name_tables(table_prefix)  # before the library builds the create statements
        super().__init__(datastore, events_table_name)

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            (f"CREATE TABLE IF NOT EXISTS {self.HASHES} ("
            "notification_id INTEGER PRIMARY KEY, originator_id TEXT NOT NULL, "
            "originator_version INTEGER NOT NULL, event_hash BLOB NOT NULL, log_hash BLOB NOT NULL, "
            "UNIQUE (originator_id, originator_version))"),
            (f"CREATE TABLE IF NOT EXISTS {self.KEYS} ("
            "kid TEXT PRIMARY KEY, visitor_id TEXT NOT NULL UNIQUE, key BLOB NOT NULL, "
            "created_at TEXT NOT NULL)"),
            (f"CREATE TABLE IF NOT EXISTS {self.KEY_OWNERS} ("
            "aggregate_id TEXT PRIMARY KEY, visitor_id TEXT NOT NULL)"),
            f"CREATE TABLE IF NOT EXISTS {self.DESTROYED} (kid TEXT PRIMARY KEY)",
            (f"CREATE TABLE IF NOT EXISTS {self.SEALS} (seq INTEGER PRIMARY KEY, first_id INTEGER NOT NULL, "
             "last_id INTEGER NOT NULL UNIQUE, event_count INTEGER NOT NULL, root BLOB NOT NULL, sealed_at TEXT NOT NULL)"),
        ]

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """The events, their hash rows, key rows and key destructions in one
        write transaction (eventsourcing's public ``insert_events``, replaced)."""
        with self.datastore.transaction(commit=True) as c:
            ids = self.write_batch(c, stored_events)
        self.confirm_keys(stored_events)
        self.seal_if_due(len(ids))
        return ids

    def seal_once(self, limit: int) -> int:
        """Seal up to ``limit`` committed hash rows after the last seal, in one
        write transaction (SQLite's one writer: nothing commits below them later)."""
        with self.datastore.transaction(commit=True) as c:
            # A write first, so this transaction holds the write lock before it reads (another
            # process's sealer or writer cannot commit between the read and the insert).
            c.execute(f"DELETE FROM {self.SEALS} WHERE seq < 0")
            c.execute(f"SELECT seq, first_id, last_id, event_count, root FROM {self.SEALS} ORDER BY seq DESC LIMIT 1")
            r = c.fetchone()
            last = Seal(r[0], r[1], r[2], r[3], bytes(r[4])) if r else None
            c.execute(
                f"SELECT notification_id, originator_id, originator_version, event_hash FROM {self.HASHES} "
                "WHERE notification_id > ? ORDER BY notification_id LIMIT ?",
                (last.last_id if last else 0, limit),
            )
            seal = next_seal(last, [(x[0], UUID(x[1]), x[2], bytes(x[3])) for x in c.fetchall()])
            if seal is None:
                return 0
            c.execute(f"INSERT INTO {self.SEALS} VALUES (?,?,?,?,?,?)", (*seal, datetime.now(UTC).isoformat()))
            return seal.event_count

    def write_batch(self, c: SQLiteCursor, stored_events: Sequence[StoredEvent]) -> list[int]:
        """Everything :meth:`insert_events` writes, on its transaction's cursor."""
        plain_delete(c)
        oids = [as_uuid(s.originator_id) for s in stored_events]
        hexes = [oid.hex for oid in oids]
        ids = self.insert_event_rows(c, stored_events, hexes)
        prev = self._prev_event_hashes(c, stored_events, hexes)
        rows = chain_rows_by_hex(stored_events, oids, hexes, ids, prev, None)  # per aggregate only: see sealing
        c.executemany(
            f"INSERT INTO {self.HASHES} VALUES (?,?,?,?,?)",
            [(nid, hex_id, v, ev, lh) for nid, _, hex_id, v, ev, lh in rows],
        )
        self._write_keys(c, stored_events)
        erased = recording.erased_visitor_ids(stored_events)
        if erased:
            params = [(v,) for v in erased]
            c.executemany(f"INSERT OR IGNORE INTO {self.DESTROYED} SELECT kid FROM {self.KEYS} WHERE visitor_id=?", params)
            with secure_delete(c):  # the key bytes are zeroed, not left in a free page
                c.executemany(f"DELETE FROM {self.KEYS} WHERE visitor_id=?", params)
        return ids

    def _write_keys(self, c: SQLiteCursor, stored_events: Sequence[StoredEvent]) -> None:
        """Insert the batch's new keys and owners, then check that every key its
        envelopes use is in the store and is its visitor's (else :class:`StaleKeyError`,
        which rolls the whole batch back)."""
        new_keys, owners, used = key_work(stored_events)
        if new_keys:
            now = datetime.now(UTC).isoformat()
            c.executemany(
                f"INSERT INTO {self.KEYS} VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
                [(r[0], r[1], r.stored, now) for r in new_keys],
            )
        if owners:
            c.executemany(
                f"INSERT INTO {self.KEY_OWNERS} VALUES (?,?) ON CONFLICT (aggregate_id) DO NOTHING",
                [(oid.hex, visitor) for oid, visitor in owners],
            )
        if not used:
            return
        found = {r[0]: r[1] for r in sqlite_select_in(c, f"SELECT kid, visitor_id FROM {self.KEYS} WHERE kid IN ({{}})", list(used))}
        destroyed: set[str] = set()
        if new_keys:
            destroyed = {
                r[0] for r in sqlite_select_in(c, f"SELECT kid FROM {self.DESTROYED} WHERE kid IN ({{}})", [k[0] for k in new_keys])
            }

        def current_keys(visitors: list[str]) -> list[KeyRow]:
            rows = sqlite_select_in(c, f"SELECT kid, visitor_id, key FROM {self.KEYS} WHERE visitor_id IN ({{}})", visitors)
            return [k for r in rows if (k := self.open_key_row(r[0], r[1], bytes(r[2]))) is not None]

        self.check_used_keys(used, found, destroyed, current_keys)

    def insert_event_rows(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], hexes: Sequence[str]
    ) -> list[int]:
        """Insert the events with one ``executemany`` and return their notification ids.

        eventsourcing's recorder runs one ``execute`` per event to read each
        ``lastrowid``; the rows and ids here are the same. The events table has
        no ``AUTOINCREMENT``, so SQLite gives each row the table's largest rowid
        + 1, and inside this write transaction (SQLite has one writer) nobody
        else inserts: the ``n`` rows get ``last - n + 1 … last``, where ``last``
        is ``last_insert_rowid()``. That is checked on the first row; should it
        ever not hold (a rowid at 2**63 - 1 makes SQLite pick random ones), the
        ids are read back row by row instead.
        """
        if len(stored_events) < 2:
            ids = []
            for s, h in zip(stored_events, hexes, strict=True):  # as eventsourcing inserts one event
                c.execute(
                    self.insert_events_statement,
                    (h if isinstance(s.originator_id, UUID) else s.originator_id, s.originator_version, s.topic, s.state),
                )
                ids.append(c.lastrowid)
            return ids
        c.executemany(
            self.insert_events_statement,
            [
                # the id as eventsourcing stores it: a UUID as hex, text as it is
                (h if isinstance(s.originator_id, UUID) else s.originator_id, s.originator_version, s.topic, s.state)
                for s, h in zip(stored_events, hexes, strict=True)
            ],
        )
        c.execute("SELECT last_insert_rowid()")
        last = c.fetchone()[0]
        first = last - len(stored_events) + 1
        c.execute(
            f"SELECT originator_id, originator_version FROM {self.events_table_name} WHERE rowid=?",
            (first,),
        )
        row = c.fetchone()
        s0 = stored_events[0]
        if row is not None and (as_uuid(row[0]), row[1]) == (as_uuid(s0.originator_id), s0.originator_version):
            return list(range(first, last + 1))
        ids = []
        for s, h in zip(stored_events, hexes, strict=True):
            c.execute(
                f"SELECT rowid FROM {self.events_table_name} WHERE originator_id=? AND originator_version=?",
                (h if isinstance(s.originator_id, UUID) else s.originator_id, s.originator_version),
            )
            ids.append(c.fetchone()[0])
        return ids

    def _prev_event_hashes(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], hexes: Sequence[str]
    ) -> dict[str, bytes]:
        """By hex id: the event hash of the event before each aggregate's first event in the batch."""
        firsts: dict[str, int] = {}
        for stored, hex_id in zip(stored_events, hexes, strict=True):
            if stored.originator_version > 1 and hex_id not in firsts:
                firsts[hex_id] = stored.originator_version - 1
        prev: dict[str, bytes] = {}
        wanted = list(firsts.items())
        for chunk in batched(wanted, PAIRS_PER_QUERY):
            c.execute(
                # VALUES first (CROSS JOIN keeps that order): one index probe per pair.
                f"SELECT h.originator_id, h.event_hash FROM (VALUES {','.join(['(?,?)'] * len(chunk))}) AS q "
                f"CROSS JOIN {self.HASHES} h ON h.originator_id = q.column1 AND h.originator_version = q.column2",
                [x for pair in chunk for x in pair],
            )
            prev.update(c.fetchall())
        return prev

    # ---- keys -------------------------------------------------------------

    def key_by_id(self, kid: str) -> bytes | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT key FROM {self.KEYS} WHERE kid=?", (kid,))
            row = c.fetchone()
        return self.open_keys({kid: bytes(row[0])}).get(kid) if row else None

    def active_key(self, visitor_id: str) -> KeyRow | None:
        """The visitor's key, if any (read only: new keys are inserted, and
        checked against the destroyed ones, only in the event transaction)."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT kid, visitor_id, key FROM {self.KEYS} WHERE visitor_id=?", (visitor_id,))
            row = c.fetchone()
        return self.active_key_row(row[0], row[1], bytes(row[2])) if row else None

    def key_ids_of(self, visitor_ids: Sequence[str]) -> list[str]:
        with self.datastore.transaction(commit=False) as c:
            rows = sqlite_select_in(c, f"SELECT kid FROM {self.KEYS} WHERE visitor_id IN ({{}})", visitor_ids)
            return sorted(r[0] for r in rows)

    def key_owner_of(self, aggregate_id: UUID) -> str | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT visitor_id FROM {self.KEY_OWNERS} WHERE aggregate_id=?", (aggregate_id.hex,))
            row = c.fetchone()
        return row[0] if row else None

    def keys_by_id(self, kids: Sequence[str]) -> dict[str, bytes]:
        """``kid -> key`` of those of ``kids`` that exist."""
        with self.datastore.transaction(commit=False) as c:
            rows = sqlite_select_in(c, f"SELECT kid, key FROM {self.KEYS} WHERE kid IN ({{}})", kids)
        return self.open_keys({row[0]: bytes(row[1]) for row in rows})

    def stored_keys(self) -> list[tuple[str, bytes]]:
        """Every ``(kid, stored bytes)`` of ``chatledger_keys`` (for ``keys rotate``)."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT kid, key FROM {self.KEYS}")
            return [(r[0], bytes(r[1])) for r in c.fetchall()]

    def any_wrapped_key(self) -> bool:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT 1 FROM {self.KEYS} WHERE length(key) > 32 LIMIT 1")
            return c.fetchone() is not None

    def wrapped_key_count(self) -> tuple[int, int]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT sum(length(key) > 32), sum(length(key) = 32) FROM {self.KEYS}")
            wrapped, raw = c.fetchone()
            return int(wrapped or 0), int(raw or 0)

    def destroyed_key_ids(self) -> list[str]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT kid FROM {self.DESTROYED}")
            return [r[0] for r in c.fetchall()]

    def replace_stored_keys(self, rows: Sequence[tuple[str, bytes, bytes]]) -> int:
        """``(kid, old, new)``: store ``new`` where the row still holds ``old`` (one
        transaction; a row an erasure deleted meanwhile stays deleted)."""
        with self.datastore.transaction(commit=True) as c, secure_delete(c):
            c.executemany(f"UPDATE {self.KEYS} SET key=? WHERE kid=? AND key=?", [(n, k, o) for k, o, n in rows])
        return len(rows)

    # ---- snapshots --------------------------------------------------------

    def select_events_of_topics(self, originator_id: UUID, lte: int, topics: Sequence[str]) -> list[tuple[int, str, bytes]]:
        """``(version, topic, state)`` of the aggregate's events up to version
        ``lte`` whose topic is one of ``topics``, in order: what a snapshot's
        stored messages are read from (``select_events`` builds a UUID and a
        ``StoredEvent`` per row, more than the read itself)."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT originator_version, topic, state FROM {self.events_table_name} "
                f"WHERE originator_id=? AND originator_version<=? AND topic IN ({','.join('?' * len(topics))}) "
                "ORDER BY originator_version",
                (originator_id.hex, lte, *topics),
            )
            rows: list[tuple[int, str, bytes]] = c.fetchall()
            return rows

    # ---- after an erasure -------------------------------------------------

    def delete_snapshots(self, table: str, aggregate_ids: Sequence[UUID]) -> None:
        with self.datastore.transaction(commit=True) as c, secure_delete(c):
            c.executemany(f"DELETE FROM {table} WHERE originator_id=?", [(a.hex,) for a in aggregate_ids])

    def purge_free_space(self) -> bool:
        """Checkpoint the WAL into the file and truncate it, so erased key bytes
        survive neither in the ``-wal`` file nor (``secure_delete``) in free pages.
        Returns False if a reader kept the checkpoint from completing."""
        if self.datastore.pool.is_sqlite_memory_mode:
            return True
        with self.datastore.get_connection(commit=True) as conn:
            c = conn.cursor()
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            busy, _, _ = c.fetchone()
        return bool(busy == 0)
