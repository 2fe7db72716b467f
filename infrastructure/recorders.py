"""eventsourcing application recorders that keep the audit tables in step with the log.

Selected through eventsourcing's ``APPLICATION_RECORDER_TOPIC`` (see
:func:`chatledger.infrastructure.persistence.eventsourcing_env`). Inside the very
transaction that inserts events they

- append one row per event to ``chatledger_event_hashes`` (the two hash chains
  of :mod:`chatledger.infrastructure.hashchain`); on PostgreSQL this runs after
  eventsourcing's ``LOCK TABLE … IN EXCLUSIVE MODE``, on SQLite under its single
  writer lock, so the log-wide chain is extended by one writer at a time;
- destroy the content keys named by a ``Visitor.DataErased`` event, so the
  erasure fact and the key destruction commit together or not at all.

Verification reads the events, the hash rows and (for ``shredding.KeyAudit``)
the key tables in one read transaction.

They also own the SQL of the key tables (``chatledger_keys``: one AES key per
visitor; ``chatledger_key_subjects``: which visitor a session's personal data
belongs to) and of verification, so all backend-specific SQL lives here.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from itertools import islice
from operator import itemgetter, lt
from typing import Any, Protocol
from uuid import UUID

import psycopg
from chatledger.domain.errors import ConfigurationError
from chatledger.domain.visitor import Visitor
from eventsourcing.persistence import (
    InterfaceError,
    OperationalError,
    RecordConflictError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteDatastore
from eventsourcing.utils import get_topic, retry
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier

from .hashchain import (
    GENESIS,
    EventRow,
    HashRow,
    VerificationReport,
    _field,
    verify_rows,
)

HASHES = "chatledger_event_hashes"
KEYS = "chatledger_keys"
DESTROYED = "chatledger_destroyed_keys"
"""Ids (never keys) of the keys erasures destroyed: a key id is random and used
once, so a new key under a destroyed id can only be a writer resurrecting a key
it made before the erasure; the write is refused and re-encoded."""
SUBJECTS = "chatledger_key_subjects"
ERASURE_TOPIC = get_topic(Visitor.DataErased)
_EVENT_TAG = b"chatledger/event/v1"  # as in hashchain.event_hash
_LOG_TAG = b"chatledger/log/v1"  # as in hashchain.log_hash
SQLITE_MAX_PARAMS = 999
"""Bound parameters per statement that every SQLite build accepts (builds
before 3.32, still shipped by some LTS distributions, stop at 999)."""
_PAIRS_PER_QUERY = SQLITE_MAX_PARAMS // 2  # (id, version) pairs per look-up


def sqlite_select_in(c: SQLiteCursor, sql: str, values: Sequence[Any]) -> list[Any]:
    """Rows of ``sql`` (one ``{}`` where the ``IN`` list goes) for all ``values``,
    in as many statements as the parameter limit needs."""
    rows: list[Any] = []
    for start in range(0, len(values), SQLITE_MAX_PARAMS):
        chunk = list(values[start : start + SQLITE_MAX_PARAMS])
        c.execute(sql.format(",".join("?" * len(chunk))), chunk)
        rows.extend(c.fetchall())
    return rows


def chain_rows(
    stored_events: Sequence[StoredEvent],
    notification_ids: Sequence[int],
    prev_event_hashes: dict[UUID, bytes],
    prev_log: bytes,
) -> list[tuple[int, UUID, int, bytes, bytes]]:
    """The hash rows of a batch: ``(notification_id, originator_id, version, event_hash, log_hash)``."""
    oids = [_uuid(s.originator_id) for s in stored_events]
    rows = _chain(
        stored_events,
        oids,
        [oid.hex for oid in oids],
        notification_ids,
        {oid.hex: h for oid, h in prev_event_hashes.items()},
        prev_log,
    )
    return [(nid, oid, v, ev, lh) for nid, oid, _, v, ev, lh in rows]


def _chain(
    stored_events: Sequence[StoredEvent],
    oids: Sequence[UUID],
    hexes: Sequence[str],
    notification_ids: Sequence[int],
    prev_by_hex: dict[str, bytes],
    prev_log: bytes,
) -> list[tuple[int, UUID, str, int, bytes, bytes]]:
    """:func:`chain_rows` with the ids given as UUIDs and hex (``prev_by_hex`` is updated).

    The same digests as :func:`~chatledger.infrastructure.hashchain.event_hash`
    and :func:`~chatledger.infrastructure.hashchain.log_hash` (which verification
    uses, and a test compares), computed with each field encoded once per event
    and one ``sha256`` call per digest: a sweep hashes thousands of events per
    transaction.
    """
    rows = []
    last = prev_by_hex
    topic_fields: dict[str, bytes] = {}
    items: Iterable[tuple[StoredEvent, UUID, str, int]] = zip(
        stored_events, oids, hexes, notification_ids, strict=True
    )
    if not all(map(lt, notification_ids, islice(notification_ids, 1, None))):
        items = sorted(items, key=itemgetter(3))  # chained in notification order
    for stored, oid, hex_id, nid in items:
        id_field = _field(str(oid).encode())
        version = stored.originator_version
        version_field = _field(str(version).encode())
        topic_field = topic_fields.get(stored.topic)
        if topic_field is None:
            topic_field = topic_fields[stored.topic] = _field(stored.topic.encode())
        ev = sha256(
            b"".join(
                (_EVENT_TAG, _field(last.get(hex_id, GENESIS)), id_field, version_field, topic_field, _field(stored.state))
            )
        ).digest()
        prev_log = sha256(
            b"".join((_LOG_TAG, _field(prev_log), _field(str(nid).encode()), id_field, version_field, _field(ev)))
        ).digest()
        last[hex_id] = ev
        rows.append((nid, oid, hex_id, version, ev, prev_log))
    return rows


def _uuid(originator_id: UUID | str) -> UUID:
    return originator_id if isinstance(originator_id, UUID) else UUID(str(originator_id))


def erased_visitor_ids(stored_events: Sequence[StoredEvent]) -> list[str]:
    ids: list[str] = []
    for stored in stored_events:
        if stored.topic == ERASURE_TOPIC:
            ids.extend(json.loads(stored.state)["receipt"]["visitor_ids"])
    return ids


class KeyRow(tuple[str, str, bytes]):
    """``(kid, visitor_id, key)``; never printed with its key."""

    def __repr__(self) -> str:
        return f"KeyRow(kid={self[0]!r}, visitor_id={self[1]!r}, key=<redacted>)"


@dataclass(frozen=True)
class KeyedStoredEvent(StoredEvent):
    """A stored event whose personal fields are encrypted (see the shredding mapper).

    ``visitor_id``/``kid``: the visitor and the key its envelopes were made with
    (``kid`` None if no field needed one). ``new_key``: a key the mapper made in
    memory and the store may not hold yet; the recorder inserts it in the event's
    transaction. ``subject``: the event opens a session, so the recorder records
    ``session -> visitor`` in that transaction.
    """

    visitor_id: str = ""
    kid: str | None = None
    new_key: KeyRow | None = field(default=None, repr=False, compare=False)
    subject: bool = False


class StaleKeyError(RecordConflictError):
    """Envelopes of a batch were made with a key the store does not hold for their
    visitor: an erasure destroyed it, or another writer created the visitor's key
    first. Nothing of the batch was written; the command is re-run (it is a
    conflict) and re-encodes with the visitor's current key."""

    def __init__(self, kids: Sequence[str]) -> None:
        super().__init__(f"stale content keys {sorted(kids)}: re-encode and retry")
        self.kids = list(kids)


StaleKeyHook = Callable[[Sequence[str], Sequence[str], Sequence[KeyRow]], None]
"""``(kids not in the store, visitors whose key was stale, those visitors' current
key rows)``: tells the key ring to drop what it cached, from inside the failing
transaction, before it raises."""
ConfirmedKeysHook = Callable[[Sequence[KeyRow]], None]
"""New key rows that were just committed."""


def _key_work(
    stored_events: Sequence[StoredEvent],
) -> tuple[list[KeyRow], list[tuple[UUID, str]], dict[str, str]]:
    """A batch's new key rows, ``(session, visitor)`` subject rows and ``kid -> visitor`` to check."""
    new_keys: dict[str, KeyRow] = {}
    subjects: list[tuple[UUID, str]] = []
    used: dict[str, str] = {}
    for s in stored_events:
        if not isinstance(s, KeyedStoredEvent):
            continue
        if s.subject:
            subjects.append((_uuid(s.originator_id), s.visitor_id))
        if s.kid is not None:
            used[s.kid] = s.visitor_id
        if s.new_key is not None:
            new_keys[s.new_key[0]] = s.new_key
    return list(new_keys.values()), subjects, used


class _KeyHooks:
    """Hooks through which the key ring learns the outcome of its new and cached keys."""

    on_stale_keys: StaleKeyHook | None = None
    on_keys_confirmed: ConfirmedKeysHook | None = None

    def _stale(self, used: dict[str, str], found: dict[str, str], current: Sequence[KeyRow]) -> None:
        bad = [kid for kid, visitor in used.items() if found.get(kid) != visitor]
        if self.on_stale_keys is not None:
            self.on_stale_keys([k for k in bad if k not in found], sorted({used[k] for k in bad}), current)
        raise StaleKeyError(bad)

    def _confirmed(self, stored_events: Sequence[StoredEvent]) -> None:
        if self.on_keys_confirmed is not None:
            rows = [s.new_key for s in stored_events if isinstance(s, KeyedStoredEvent) and s.new_key is not None]
            if rows:
                self.on_keys_confirmed(rows)


class KeyAuditor(Protocol):
    """Checks the key table during ``verify`` (see ``shredding.KeyAudit``)."""

    def watch(self, events: Iterable[EventRow], tables: Any) -> Iterator[EventRow]: ...

    def finish(self, tables: Any) -> None: ...


class _SQLiteKeyTables:
    """The key tables as ``KeyAudit`` reads them, on the verification's connection."""

    def __init__(self, conn: sqlite3.Connection, events_table: str) -> None:
        self.conn = conn
        self.events_table = events_table

    def _select_in(self, sql: str, values: Sequence[Any]) -> list[Any]:
        rows: list[Any] = []
        for start in range(0, len(values), SQLITE_MAX_PARAMS):
            chunk = list(values[start : start + SQLITE_MAX_PARAMS])
            rows.extend(self.conn.execute(sql.format(",".join("?" * len(chunk))), chunk).fetchall())
        return rows

    def keys(self, kids: Sequence[str]) -> dict[str, tuple[str, bytes]]:
        rows = self._select_in(f"SELECT kid, visitor_id, key FROM {KEYS} WHERE kid IN ({{}})", kids)
        return {r[0]: (r[1], bytes(r[2])) for r in rows}

    def destroyed(self, kids: Sequence[str]) -> set[str]:
        return {r[0] for r in self._select_in(f"SELECT kid FROM {DESTROYED} WHERE kid IN ({{}})", kids)}

    def subjects(self, aggregate_ids: Sequence[UUID]) -> dict[UUID, str]:
        rows = self._select_in(
            f"SELECT aggregate_id, visitor_id FROM {SUBJECTS} WHERE aggregate_id IN ({{}})",
            [a.hex for a in aggregate_ids],
        )
        return {UUID(r[0]): r[1] for r in rows}

    def erasure_states(self) -> Iterable[tuple[int, bytes]]:
        rows = self.conn.execute(f"SELECT rowid, state FROM {self.events_table} WHERE topic=?", (ERASURE_TOPIC,))
        return [(int(r[0]), bytes(r[1])) for r in rows]


# --------------------------------------------------------------------------- SQLite


class SQLiteLedgerRecorder(_KeyHooks, SQLiteApplicationRecorder):
    """eventsourcing's SQLite recorder plus the hash chain and the key tables."""

    datastore: SQLiteDatastore

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            (f"CREATE TABLE IF NOT EXISTS {HASHES} ("
            "notification_id INTEGER PRIMARY KEY, originator_id TEXT NOT NULL, "
            "originator_version INTEGER NOT NULL, event_hash BLOB NOT NULL, log_hash BLOB NOT NULL, "
            "UNIQUE (originator_id, originator_version))"),
            (f"CREATE TABLE IF NOT EXISTS {KEYS} ("
            "kid TEXT PRIMARY KEY, visitor_id TEXT NOT NULL UNIQUE, key BLOB NOT NULL, "
            "created_at TEXT NOT NULL)"),
            (f"CREATE TABLE IF NOT EXISTS {SUBJECTS} ("
            "aggregate_id TEXT PRIMARY KEY, visitor_id TEXT NOT NULL)"),
            f"CREATE TABLE IF NOT EXISTS {DESTROYED} (kid TEXT PRIMARY KEY)",
        ]

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        c.execute("PRAGMA secure_delete=ON")  # freed space is zeroed: no stale key bytes
        oids = [_uuid(s.originator_id) for s in stored_events]
        hexes = [oid.hex for oid in oids]
        ids = self._insert_event_rows(c, stored_events, hexes)
        prev = self._prev_event_hashes(c, stored_events, hexes)
        c.execute(f"SELECT log_hash FROM {HASHES} ORDER BY notification_id DESC LIMIT 1")
        head = c.fetchone()
        rows = _chain(stored_events, oids, hexes, ids, prev, head[0] if head else GENESIS)
        c.executemany(
            f"INSERT INTO {HASHES} VALUES (?,?,?,?,?)",
            [(nid, hex_id, v, ev, lh) for nid, _, hex_id, v, ev, lh in rows],
        )
        self._write_keys(c, stored_events)
        erased = erased_visitor_ids(stored_events)
        if erased:
            params = [(v,) for v in erased]
            c.executemany(f"INSERT OR IGNORE INTO {DESTROYED} SELECT kid FROM {KEYS} WHERE visitor_id=?", params)
            c.executemany(f"DELETE FROM {KEYS} WHERE visitor_id=?", params)
        return ids

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        ids = super().insert_events(stored_events, **kwargs)
        self._confirmed(stored_events)
        return ids

    def _write_keys(self, c: SQLiteCursor, stored_events: Sequence[StoredEvent]) -> None:
        """Insert the batch's new keys and subjects, then check that every key its
        envelopes use is in the store and is its visitor's (else :class:`StaleKeyError`,
        which rolls the whole batch back)."""
        new_keys, subjects, used = _key_work(stored_events)
        if new_keys:
            now = datetime.now(UTC).isoformat()
            c.executemany(
                f"INSERT INTO {KEYS} VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
                [(kid, visitor, key, now) for kid, visitor, key in new_keys],
            )
        if subjects:
            c.executemany(
                f"INSERT INTO {SUBJECTS} VALUES (?,?) ON CONFLICT (aggregate_id) DO NOTHING",
                [(oid.hex, visitor) for oid, visitor in subjects],
            )
        if not used:
            return
        found = _sqlite_key_visitors(c, list(used))
        destroyed: set[str] = set()
        if new_keys:
            destroyed = {
                r[0] for r in sqlite_select_in(c, f"SELECT kid FROM {DESTROYED} WHERE kid IN ({{}})", [k[0] for k in new_keys])
            }
            for kid in destroyed:
                found.pop(kid, None)
        if all(found.get(kid) == visitor for kid, visitor in used.items()):
            return
        visitors = sorted({v for k, v in used.items() if found.get(k) != v})
        rows = sqlite_select_in(c, f"SELECT kid, visitor_id, key FROM {KEYS} WHERE visitor_id IN ({{}})", visitors)
        self._stale(used, found, [KeyRow((r[0], r[1], bytes(r[2]))) for r in rows if r[0] not in destroyed])

    def _insert_event_rows(
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
            return list(super()._insert_events(c, stored_events) or ())
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
        if row is not None and (_uuid(row[0]), row[1]) == (_uuid(s0.originator_id), s0.originator_version):
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
        for start in range(0, len(wanted), _PAIRS_PER_QUERY):
            chunk = wanted[start : start + _PAIRS_PER_QUERY]
            c.execute(
                # VALUES first (CROSS JOIN keeps that order): one index probe per pair.
                f"SELECT h.originator_id, h.event_hash FROM (VALUES {','.join(['(?,?)'] * len(chunk))}) AS q "
                f"CROSS JOIN {HASHES} h ON h.originator_id = q.column1 AND h.originator_version = q.column2",
                [x for pair in chunk for x in pair],
            )
            prev.update(c.fetchall())
        return prev

    # ---- keys -------------------------------------------------------------

    def key_by_id(self, kid: str) -> bytes | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT key FROM {KEYS} WHERE kid=?", (kid,))
            row = c.fetchone()
        return bytes(row[0]) if row else None

    def active_key(self, visitor_id: str) -> KeyRow | None:
        """The visitor's key, if any (read only: new keys are inserted, and
        checked against the destroyed ones, only in the event transaction)."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT kid, visitor_id, key FROM {KEYS} WHERE visitor_id=?", (visitor_id,))
            row = c.fetchone()
        return KeyRow((row[0], row[1], bytes(row[2]))) if row else None

    def key_ids_of(self, visitor_ids: Sequence[str]) -> list[str]:
        with self.datastore.transaction(commit=False) as c:
            rows = sqlite_select_in(c, f"SELECT kid FROM {KEYS} WHERE visitor_id IN ({{}})", visitor_ids)
            return sorted(r[0] for r in rows)

    def subject_of(self, aggregate_id: UUID) -> str | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT visitor_id FROM {SUBJECTS} WHERE aggregate_id=?", (aggregate_id.hex,))
            row = c.fetchone()
        return row[0] if row else None

    # ---- after an erasure -------------------------------------------------

    def delete_snapshots(self, table: str, aggregate_ids: Sequence[UUID]) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute("PRAGMA secure_delete=ON")
            c.executemany(f"DELETE FROM {table} WHERE originator_id=?", [(a.hex,) for a in aggregate_ids])

    def purge_free_space(self) -> bool:
        """Checkpoint the WAL into the file and truncate it, so erased key bytes
        survive neither in the ``-wal`` file nor (``secure_delete``) in free pages.
        Returns False if a reader kept the checkpoint from completing."""
        if self.datastore.pool.is_sqlite_memory_mode:
            return True
        with self.datastore.get_connection(commit=True) as conn:
            raw: sqlite3.Connection = conn._sqlite_conn
            busy, _, _ = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return busy == 0

    # ---- verification -----------------------------------------------------

    def verify(
        self, report: VerificationReport, originator_id: UUID | None = None, key_audit: KeyAuditor | None = None
    ) -> VerificationReport:
        """Check the hash chains (of the log, or of one aggregate) and, with
        ``key_audit``, the key table against the log, in one read transaction."""
        with self.datastore.transaction(commit=False) as c:
            conn = c.sqlite_cursor.connection
            where, params = ("WHERE originator_id=? ", (originator_id.hex,)) if originator_id else ("", ())
            events: Iterable[EventRow] = (
                EventRow(r[0], UUID(r[1]), r[2], r[3], bytes(r[4]))
                for r in conn.execute(
                    "SELECT rowid, originator_id, originator_version, topic, state "
                    f"FROM {self.events_table_name} {where}ORDER BY rowid",
                    params,
                )
            )
            tables = _SQLiteKeyTables(conn, self.events_table_name)
            if key_audit is not None:
                events = key_audit.watch(events, tables)
            report = self._verify_sqlite(conn, events, report, originator_id, params)
            if key_audit is not None:
                key_audit.finish(tables)
            return report

    def _verify_sqlite(
        self,
        conn: sqlite3.Connection,
        events: Iterable[EventRow],
        report: VerificationReport,
        originator_id: UUID | None,
        params: tuple[Any, ...],
    ) -> VerificationReport:
        where = "WHERE originator_id=? " if originator_id else ""
        hashes = (
            HashRow(r[0], UUID(r[1]), r[2], bytes(r[3]), bytes(r[4]))
            for r in conn.execute(
                "SELECT notification_id, originator_id, originator_version, event_hash, log_hash "
                f"FROM {HASHES} {where}ORDER BY notification_id",
                params,
            )
        )
        if originator_id is None:
            return verify_rows(events, hashes, report)
        prev_logs = {
            r[0]: bytes(r[1])
            for r in conn.execute(
                f"SELECT h.notification_id, (SELECT p.log_hash FROM {HASHES} p "
                "WHERE p.notification_id < h.notification_id ORDER BY p.notification_id DESC LIMIT 1) "
                f"FROM {HASHES} h WHERE h.originator_id=?",
                params,
            )
            if r[1] is not None
        }
        return verify_rows(events, hashes, report, check_log_chain=False, prev_log_hash=prev_logs)

    def hash_rows(self, originator_id: UUID) -> dict[int, tuple[bytes, bytes]]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT notification_id, event_hash, log_hash FROM {HASHES} WHERE originator_id=?",
                (originator_id.hex,),
            )
            return {r[0]: (bytes(r[1]), bytes(r[2])) for r in c.fetchall()}

    def notification_ids(self, originator_id: UUID) -> dict[int, int]:
        """``version -> notification id`` of one aggregate's events."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT originator_version, rowid FROM {self.events_table_name} WHERE originator_id=?",
                (originator_id.hex,),
            )
            return {r[0]: r[1] for r in c.fetchall()}


def _sqlite_key_visitors(c: SQLiteCursor, kids: list[str]) -> dict[str, str]:
    """``kid -> visitor_id`` of those of ``kids`` that are in the store."""
    return {r[0]: r[1] for r in sqlite_select_in(c, f"SELECT kid, visitor_id FROM {KEYS} WHERE kid IN ({{}})", kids)}


def _pg_key_visitors(c: Cursor[DictRow], keys: Composed, kids: list[str]) -> dict[str, str]:
    c.execute(SQL("SELECT kid, visitor_id FROM {} WHERE kid = ANY(%s)").format(keys), (kids,))
    return {r["kid"]: r["visitor_id"] for r in c.fetchall()}


# --------------------------------------------------------------------------- PostgreSQL


class PostgresLedgerRecorder(_KeyHooks, PostgresApplicationRecorder):
    """eventsourcing's PostgreSQL recorder plus the hash chain and the key tables."""

    datastore: PostgresDatastore

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events") -> None:
        if datastore.enable_db_functions:
            raise ConfigurationError(
                "POSTGRES_ENABLE_DB_FUNCTIONS inserts events in a database function that "
                "bypasses the hash chain; turn it off for chatledger."
            )
        super().__init__(datastore, events_table_name=events_table_name)
        s = Identifier(datastore.schema)
        self.sql_create_statements += [
            SQL(
                "CREATE TABLE IF NOT EXISTS {}.{} (notification_id bigint PRIMARY KEY, "
                "originator_id uuid NOT NULL, originator_version bigint NOT NULL, "
                "event_hash bytea NOT NULL, log_hash bytea NOT NULL, "
                "UNIQUE (originator_id, originator_version))"
            ).format(s, Identifier(HASHES)),
            SQL(
                "CREATE TABLE IF NOT EXISTS {}.{} (kid text PRIMARY KEY, visitor_id text NOT NULL UNIQUE, "
                "key bytea NOT NULL, created_at timestamptz NOT NULL)"
            ).format(s, Identifier(KEYS)),
            SQL(
                "CREATE TABLE IF NOT EXISTS {}.{} (aggregate_id uuid PRIMARY KEY, visitor_id text NOT NULL)"
            ).format(s, Identifier(SUBJECTS)),
            SQL("CREATE TABLE IF NOT EXISTS {}.{} (kid text PRIMARY KEY)").format(s, Identifier(DESTROYED)),
        ]

    def _t(self, table: str) -> Composed:
        return SQL("{}.{}").format(Identifier(self.datastore.schema), Identifier(table))

    def _fetch_ids_after_insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        assert ids is not None
        with curs.connection.cursor() as c:
            firsts = {}
            for stored in stored_events:
                oid = UUID(str(stored.originator_id))
                if stored.originator_version > 1 and oid not in firsts:
                    firsts[oid] = stored.originator_version - 1
            prev: dict[UUID, bytes] = {}
            if firsts:
                c.execute(
                    SQL(
                        "SELECT h.originator_id, h.event_hash FROM {} h "
                        "JOIN unnest(%s::uuid[], %s::bigint[]) AS q(oid, ver) "
                        "ON h.originator_id = q.oid AND h.originator_version = q.ver"
                    ).format(self._t(HASHES)),
                    (list(firsts), list(firsts.values())),
                )
                prev = {r["originator_id"]: bytes(r["event_hash"]) for r in c.fetchall()}
            c.execute(SQL("SELECT log_hash FROM {} ORDER BY notification_id DESC LIMIT 1").format(self._t(HASHES)))
            head = c.fetchone()
            rows = chain_rows(stored_events, ids, prev, bytes(head["log_hash"]) if head else GENESIS)
            c.executemany(SQL("INSERT INTO {} VALUES (%s,%s,%s,%s,%s)").format(self._t(HASHES)), rows)
            self._write_keys(c, stored_events)
            erased = erased_visitor_ids(stored_events)
            if erased:
                c.execute(
                    SQL("INSERT INTO {} SELECT kid FROM {} WHERE visitor_id = ANY(%s) ON CONFLICT DO NOTHING").format(
                        self._t(DESTROYED), self._t(KEYS)
                    ),
                    (erased,),
                )
                c.execute(SQL("DELETE FROM {} WHERE visitor_id = ANY(%s)").format(self._t(KEYS)), (erased,))
        return ids

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)  # as the library's
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """The library's ``insert_events`` (``enable_db_functions`` is refused in
        ``__init__``), except that an exception that is not the database's rolls
        the transaction back: the library catches every exception inside the
        transaction block and re-raises it after the block has exited normally,
        which commits whatever was written unless the database had aborted the
        transaction itself (as it has after a server-side error, but not after
        a client-side one such as psycopg refusing to encode a NUL in a text
        parameter, nor a :class:`StaleKeyError`, raised after statements that
        succeeded). So any exception rolls the transaction back explicitly
        (``psycopg.Rollback``) and is re-raised after the pipeline has exited."""
        if not stored_events:
            return super().insert_events(stored_events, **kwargs)
        exc: Exception | None = None
        ids: Sequence[int] | None = None
        with self.datastore.get_connection() as conn:
            with conn.pipeline() as pipeline, conn.transaction():
                with conn.cursor() as curs:
                    self._insert_events(curs, stored_events, **kwargs)
                with conn.cursor() as curs:
                    try:
                        self._insert_stored_events(curs, stored_events, **kwargs)
                        # Sync now, so a uniqueness violation raises here (as in the library).
                        pipeline.sync()
                        ids = self._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
                    except Exception as e:  # noqa: BLE001 - re-raised below, after the rollback
                        exc = e
                if exc is not None:
                    raise psycopg.Rollback  # leaves the transaction block by rolling it back
            if exc is not None:
                raise exc
        self._confirmed(stored_events)
        return ids

    def _write_keys(self, c: Cursor[DictRow], stored_events: Sequence[StoredEvent]) -> None:
        """As :meth:`SQLiteLedgerRecorder._write_keys`. This runs after the events
        table's ``LOCK TABLE … IN EXCLUSIVE MODE``, so an erasure (which deletes
        keys under the same lock) has committed entirely before, or starts after."""
        new_keys, subjects, used = _key_work(stored_events)
        if new_keys:
            c.executemany(
                SQL("INSERT INTO {} VALUES (%s,%s,%s,now()) ON CONFLICT DO NOTHING").format(self._t(KEYS)),
                [tuple(row) for row in new_keys],
            )
        if subjects:
            c.executemany(
                SQL("INSERT INTO {} VALUES (%s,%s) ON CONFLICT (aggregate_id) DO NOTHING").format(self._t(SUBJECTS)),
                subjects,
            )
        if not used:
            return
        # A cursor of its own: in pipeline mode, a fetch on the cursor of an
        # executemany can meet that statement's result instead of the query's.
        with c.connection.cursor() as q:
            found = _pg_key_visitors(q, self._t(KEYS), list(used))
            destroyed: set[str] = set()
            if new_keys:
                q.execute(
                    SQL("SELECT kid FROM {} WHERE kid = ANY(%s)").format(self._t(DESTROYED)),
                    ([row[0] for row in new_keys],),
                )
                destroyed = {r["kid"] for r in q.fetchall()}
                for kid in destroyed:
                    found.pop(kid, None)
            if all(found.get(kid) == visitor for kid, visitor in used.items()):
                return
            visitors = sorted({v for k, v in used.items() if found.get(k) != v})
            q.execute(
                SQL("SELECT kid, visitor_id, key FROM {} WHERE visitor_id = ANY(%s)").format(self._t(KEYS)),
                (visitors,),
            )
            current = [
                KeyRow((r["kid"], r["visitor_id"], bytes(r["key"]))) for r in q.fetchall() if r["kid"] not in destroyed
            ]
        self._stale(used, found, current)

    # ---- keys -------------------------------------------------------------

    def key_by_id(self, kid: str) -> bytes | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(SQL("SELECT key FROM {} WHERE kid=%s").format(self._t(KEYS)), (kid,))
            row = c.fetchone()
        return bytes(row["key"]) if row else None

    def active_key(self, visitor_id: str) -> KeyRow | None:
        """As :meth:`SQLiteLedgerRecorder.active_key`."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(SQL("SELECT kid, visitor_id, key FROM {} WHERE visitor_id=%s").format(self._t(KEYS)), (visitor_id,))
            row = c.fetchone()
        return KeyRow((row["kid"], row["visitor_id"], bytes(row["key"]))) if row else None

    def key_ids_of(self, visitor_ids: Sequence[str]) -> list[str]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(SQL("SELECT kid FROM {} WHERE visitor_id = ANY(%s)").format(self._t(KEYS)), (list(visitor_ids),))
            return sorted(r["kid"] for r in c.fetchall())

    def subject_of(self, aggregate_id: UUID) -> str | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(SQL("SELECT visitor_id FROM {} WHERE aggregate_id=%s").format(self._t(SUBJECTS)), (aggregate_id,))
            row = c.fetchone()
        return row["visitor_id"] if row else None

    # ---- after an erasure -------------------------------------------------

    def delete_snapshots(self, table: str, aggregate_ids: Sequence[UUID]) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(SQL("DELETE FROM {} WHERE originator_id = ANY(%s)").format(self._t(table)), (list(aggregate_ids),))

    def purge_free_space(self) -> bool:
        """VACUUM the key and snapshot tables so dead rows holding erased keys are
        reclaimed (PostgreSQL's WAL and backups still hold them until recycled)."""
        with self.datastore.get_connection() as conn:
            assert conn.autocommit
            conn.execute(SQL("VACUUM {}").format(self._t(KEYS)))
        return True

    # ---- verification -----------------------------------------------------

    @contextmanager
    def _snapshot(self) -> Iterator[Any]:
        with self.datastore.get_connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield conn

    def verify(
        self, report: VerificationReport, originator_id: UUID | None = None, key_audit: KeyAuditor | None = None
    ) -> VerificationReport:
        """As :meth:`SQLiteLedgerRecorder.verify` (in one repeatable-read snapshot)."""
        with self._snapshot() as conn:
            tables = _PostgresKeyTables(conn, self)
            report = self._verify_pg(conn, report, originator_id, key_audit, tables)
            if key_audit is not None:
                key_audit.finish(tables)
            return report

    def _verify_pg(
        self,
        conn: Any,
        report: VerificationReport,
        originator_id: UUID | None,
        key_audit: KeyAuditor | None,
        tables: _PostgresKeyTables,
    ) -> VerificationReport:
        where, params = (SQL("WHERE originator_id = %s "), (originator_id,)) if originator_id else (SQL(""), ())
        ev_cur = conn.cursor(name="chatledger_verify_events")
        ev_cur.itersize = 5000
        ev_cur.execute(
            SQL(
                "SELECT notification_id, originator_id, originator_version, topic, state FROM {} {}"
                "ORDER BY notification_id"
            ).format(self._t(self.events_table_name), where),
            params,
        )
        h_cur = conn.cursor(name="chatledger_verify_hashes")
        h_cur.itersize = 5000
        h_cur.execute(
            SQL(
                "SELECT notification_id, originator_id, originator_version, event_hash, log_hash "
                "FROM {} {}ORDER BY notification_id"
            ).format(self._t(HASHES), where),
            params,
        )
        events: Iterable[EventRow] = (
            EventRow(r["notification_id"], r["originator_id"], r["originator_version"], r["topic"], bytes(r["state"]))
            for r in ev_cur
        )
        if key_audit is not None:
            events = key_audit.watch(events, tables)
        hashes = (
            HashRow(r["notification_id"], r["originator_id"], r["originator_version"], bytes(r["event_hash"]), bytes(r["log_hash"]))
            for r in h_cur
        )
        if originator_id is None:
            return verify_rows(events, hashes, report)
        with conn.cursor() as c:
            c.execute(
                SQL(
                    "SELECT h.notification_id, (SELECT p.log_hash FROM {0} p "
                    "WHERE p.notification_id < h.notification_id ORDER BY p.notification_id DESC LIMIT 1) AS prev "
                    "FROM {0} h WHERE h.originator_id = %s"
                ).format(self._t(HASHES)),
                params,
            )
            prev_logs = {r["notification_id"]: bytes(r["prev"]) for r in c.fetchall() if r["prev"] is not None}
        return verify_rows(events, hashes, report, check_log_chain=False, prev_log_hash=prev_logs)

    def hash_rows(self, originator_id: UUID) -> dict[int, tuple[bytes, bytes]]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                SQL("SELECT notification_id, event_hash, log_hash FROM {} WHERE originator_id=%s").format(self._t(HASHES)),
                (originator_id,),
            )
            return {r["notification_id"]: (bytes(r["event_hash"]), bytes(r["log_hash"])) for r in c.fetchall()}

    def notification_ids(self, originator_id: UUID) -> dict[int, int]:
        """``version -> notification id`` of one aggregate's events."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                SQL("SELECT originator_version, notification_id FROM {} WHERE originator_id=%s").format(
                    self._t(self.events_table_name)
                ),
                (originator_id,),
            )
            return {r["originator_version"]: r["notification_id"] for r in c.fetchall()}


class _PostgresKeyTables:
    """As :class:`_SQLiteKeyTables`, in the verification's snapshot."""

    def __init__(self, conn: Any, recorder: PostgresLedgerRecorder) -> None:
        self.conn = conn
        self.recorder = recorder

    def _rows(self, query: Composed, params: tuple[Any, ...]) -> list[Any]:
        with self.conn.cursor() as c:
            c.execute(query, params)
            return list(c.fetchall())

    def keys(self, kids: Sequence[str]) -> dict[str, tuple[str, bytes]]:
        t = self.recorder._t
        rows = self._rows(SQL("SELECT kid, visitor_id, key FROM {} WHERE kid = ANY(%s)").format(t(KEYS)), (list(kids),))
        return {r["kid"]: (r["visitor_id"], bytes(r["key"])) for r in rows}

    def destroyed(self, kids: Sequence[str]) -> set[str]:
        t = self.recorder._t
        rows = self._rows(SQL("SELECT kid FROM {} WHERE kid = ANY(%s)").format(t(DESTROYED)), (list(kids),))
        return {r["kid"] for r in rows}

    def subjects(self, aggregate_ids: Sequence[UUID]) -> dict[UUID, str]:
        t = self.recorder._t
        rows = self._rows(
            SQL("SELECT aggregate_id, visitor_id FROM {} WHERE aggregate_id = ANY(%s)").format(t(SUBJECTS)),
            (list(aggregate_ids),),
        )
        return {r["aggregate_id"]: r["visitor_id"] for r in rows}

    def erasure_states(self) -> Iterable[tuple[int, bytes]]:
        t = self.recorder._t
        rows = self._rows(
            SQL("SELECT notification_id, state FROM {} WHERE topic = %s").format(t(self.recorder.events_table_name)),
            (ERASURE_TOPIC,),
        )
        return [(int(r["notification_id"]), bytes(r["state"])) for r in rows]


LedgerRecorder = SQLiteLedgerRecorder | PostgresLedgerRecorder
