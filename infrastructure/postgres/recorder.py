"""eventsourcing's ``PostgresApplicationRecorder`` plus the hash chain and the key tables
(:mod:`chatledger.infrastructure.recording`), on the library's public surface only: ``insert_events``
replaced as a whole with its public statements; tables appended to ``sql_create_statements``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError, ProgrammingError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import retry
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier, Literal

from ...domain.errors import ConfigurationError
from .. import recording
from ..hashchain import chain_rows
from ...domain.table_prefix import DEFAULT_PREFIX
from ..recording import KeyRow, LedgerRecorderMixin, key_work
from ..sealing import Seal, next_seal
from . import insert_function
from .array_params import bytea_array, int8_array, text_array, uuid_array
from .key_rows import PostgresKeyRows
from .removal import PostgresRemoval
from .verification import PostgresVerification


class PostgresLedgerRecorder(
    PostgresVerification, PostgresKeyRows, PostgresRemoval, LedgerRecorderMixin, PostgresApplicationRecorder
):
    """eventsourcing's PostgreSQL recorder plus the hash chain and the key tables."""

    datastore: PostgresDatastore

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events", table_prefix: str = DEFAULT_PREFIX) -> None:
        self.name_tables(table_prefix)
        if datastore.enable_db_functions:
            raise ConfigurationError(
                "POSTGRES_ENABLE_DB_FUNCTIONS inserts events in a database function that "
                "bypasses the hash chain; turn it off for chatledger."
            )
        super().__init__(datastore, events_table_name=events_table_name)
        if table_prefix != DEFAULT_PREFIX:  # not the library's fixed-name (shared) insert function: unused, refused above
            del self.sql_create_statements[self.create_insert_function_statement_index]
        s = Identifier(datastore.schema)
        self.sql_create_statements += [
            SQL(
                "CREATE TABLE IF NOT EXISTS {}.{} (notification_id bigint PRIMARY KEY, "
                "originator_id uuid NOT NULL, originator_version bigint NOT NULL, "
                "event_hash bytea NOT NULL, log_hash bytea NOT NULL, "
                "UNIQUE (originator_id, originator_version))"
            ).format(s, Identifier(self.HASHES)),
            SQL(
                "CREATE TABLE IF NOT EXISTS {}.{} (kid text PRIMARY KEY, visitor_id text NOT NULL UNIQUE, "
                "key bytea NOT NULL, created_at timestamptz NOT NULL)"
            ).format(s, Identifier(self.KEYS)),
            SQL(
                "CREATE TABLE IF NOT EXISTS {}.{} (aggregate_id uuid PRIMARY KEY, visitor_id text NOT NULL)"
            ).format(s, Identifier(self.KEY_OWNERS)),
            SQL("CREATE TABLE IF NOT EXISTS {}.{} (kid text PRIMARY KEY)").format(s, Identifier(self.DESTROYED)),
            SQL(
                "CREATE TABLE IF NOT EXISTS {}.{} (seq bigint PRIMARY KEY, first_id bigint NOT NULL, "
                "last_id bigint NOT NULL UNIQUE, event_count bigint NOT NULL, root bytea NOT NULL, "
                "sealed_at timestamptz NOT NULL)"
            ).format(s, Identifier(self.SEALS)),
        ]
        if not self.lock_table_statements:  # the sealer's no-gap reasoning needs it (see sealing)
            raise ConfigurationError("chatledger needs eventsourcing's table lock on inserts")
        self.insert_with_hashes_statement = SQL(
            "WITH ev AS ({}), n AS (SELECT notification_id, row_number() OVER (ORDER BY notification_id) AS i FROM ev), "
            "h AS (INSERT INTO {} SELECT n.notification_id, x.oid, x.ver, x.eh, ''::bytea FROM n "
            "JOIN unnest(%s::uuid[], %s::bigint[], %s::bytea[]) WITH ORDINALITY AS x(oid, ver, eh, i) USING (i)) "
            "SELECT notification_id FROM n CROSS JOIN (SELECT pg_notify({}, '')) AS notified ORDER BY notification_id"
        ).format(self.insert_events_statement, self.qualified(self.HASHES), Literal(self.channel_name))
        """The library's ``insert_events_statement`` (``… RETURNING notification_id``)
        and the batch's hash rows in one statement: sequence values are taken in
        the order the rows are inserted, so the i-th smallest id is the i-th event
        (as the library reads its ids); it also notifies the library's channel
        (``pg_notify``, what the library's ``NOTIFY`` statement does)."""
        q = self.qualified
        self.insert_keys_statement = SQL(
            "INSERT INTO {} SELECT k, v, b, now() FROM unnest(%s::text[], %s::text[], %s::bytea[]) "
            "AS x(k, v, b) ON CONFLICT DO NOTHING"
        ).format(q(self.KEYS))
        self.insert_key_owners_statement = SQL(
            "INSERT INTO {} SELECT a, v FROM unnest(%s::uuid[], %s::text[]) AS x(a, v) ON CONFLICT (aggregate_id) DO NOTHING"
        ).format(q(self.KEY_OWNERS))
        self.used_keys_statement = SQL("SELECT kid, visitor_id FROM {} WHERE kid = ANY(%s)").format(q(self.KEYS))
        self.destroyed_keys_statement = SQL("SELECT kid FROM {} WHERE kid = ANY(%s)").format(q(self.DESTROYED))
        self.sql_create_statements.append(
            insert_function.create_statement(datastore.schema, self.events_table_name, self.channel_name, self)
        )
        self.insert_call_statement = insert_function.call_statement(datastore.schema, self.table_prefix)
        self.insert_call_bytes: bytes | None = None
        self.lock_timeout_setting = f"{int(datastore.lock_timeout)}s"
        self.insert_function_ready = True
        """False once a call found no insert function (a store whose tables this version did not create)."""
        self.last_hashes: dict[UUID, tuple[int, bytes]] = {}
        self.last_hashes_size = 100_000

    def prev_event_hashes(self, c: Cursor[DictRow], stored_events: Sequence[StoredEvent]) -> dict[UUID, bytes]:
        """The event hash of the event before each aggregate's first event in
        the batch: from this recorder's memory of what it committed last
        (a committed hash row never changes), else read (no lock needed)."""
        firsts: dict[UUID, int] = {}
        for stored in stored_events:
            oid = UUID(str(stored.originator_id))
            if stored.originator_version > 1 and oid not in firsts:
                firsts[oid] = stored.originator_version - 1
        prev: dict[UUID, bytes] = {}
        missing: dict[UUID, int] = {}
        last = self.last_hashes
        for oid, version in firsts.items():
            hit = last.get(oid)
            if hit is not None and hit[0] == version:
                prev[oid] = hit[1]
            else:
                missing[oid] = version
        if missing:
            c.execute(
                SQL(
                    "SELECT h.originator_id, h.event_hash FROM {} h "
                    "JOIN unnest(%s::uuid[], %s::bigint[]) AS q(oid, ver) "
                    "ON h.originator_id = q.oid AND h.originator_version = q.ver"
                ).format(self.qualified(self.HASHES)),
                (list(missing), list(missing.values())),
            )
            prev.update((r["originator_id"], bytes(r["event_hash"])) for r in c.fetchall())
        return prev

    def remember_hashes(self, rows: Sequence[tuple[int, UUID, int, bytes, bytes]]) -> None:
        """After a commit: each aggregate's newest event hash, for its next insert."""
        last = self.last_hashes
        if len(last) > self.last_hashes_size:
            last.clear()
        for _, oid, version, event_hash, _ in rows:
            last[oid] = (version, event_hash)

    def send_keys(self, conn: Any, stored_events: Sequence[StoredEvent]) -> Callable[[], None] | None:
        """Queue the batch's key and key-owner inserts and the queries of its key
        check (as the SQLite recorder's ``_write_keys``) in the pipeline; the
        check itself, to run once the pipeline has synced (None: nothing to
        check). This runs after the events table's ``LOCK TABLE … IN EXCLUSIVE
        MODE``, so an erasure (which deletes keys under the same lock) has
        committed entirely before, or starts after."""
        new_keys, owners, used = key_work(stored_events)
        with conn.cursor() as c:
            if new_keys:
                c.execute(
                    self.insert_keys_statement,
                    ([r[0] for r in new_keys], [r[1] for r in new_keys], [r.stored for r in new_keys]),
                )
            if owners:
                c.execute(
                    self.insert_key_owners_statement,
                    ([oid for oid, _ in owners], [v for _, v in owners]),
                )
        if not used:
            return None
        # Cursors of their own: in pipeline mode, each fetch meets its own statement's result.
        q = conn.cursor()
        q.execute(self.used_keys_statement, (list(used),), prepare=True)
        d = conn.cursor() if new_keys else None
        if d is not None:
            d.execute(self.destroyed_keys_statement, ([row[0] for row in new_keys],))

        def check() -> None:
            try:
                found = {r["kid"]: r["visitor_id"] for r in q.fetchall()}
                destroyed = {r["kid"] for r in d.fetchall()} if d is not None else set()

                def current_keys(visitors: list[str]) -> list[KeyRow]:
                    q.execute(
                        SQL("SELECT kid, visitor_id, key FROM {} WHERE visitor_id = ANY(%s)").format(self.qualified(self.KEYS)),
                        (visitors,),
                    )
                    rows = [self.open_key_row(r["kid"], r["visitor_id"], bytes(r["key"])) for r in q.fetchall()]
                    return [r for r in rows if r is not None]

                self.check_used_keys(used, found, destroyed, current_keys)
            finally:
                q.close()
                if d is not None:
                    d.close()

        return check

    def write_erasures(self, conn: Any, stored_events: Sequence[StoredEvent]) -> None:
        """The key destructions of the batch's ``Visitor.DataErased`` events."""
        erased = recording.erased_visitor_ids(stored_events)
        if not erased:
            return
        with conn.cursor() as c:
            c.execute(
                SQL("INSERT INTO {} SELECT kid FROM {} WHERE visitor_id = ANY(%s) ON CONFLICT DO NOTHING").format(
                    self.qualified(self.DESTROYED), self.qualified(self.KEYS)
                ),
                (erased,),
            )
            c.execute(SQL("DELETE FROM {} WHERE visitor_id = ANY(%s)").format(self.qualified(self.KEYS)), (erased,))

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)  # as the library's
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """The library's ``insert_events`` plus the hash and key rows, in one
        round trip: one call of the store's insert function (see
        :mod:`.insert_function`) in an autocommit transaction. Batches with an
        erasure or recorder keyword arguments, a batch whose key check failed in
        the function, and every batch of a store without the function are
        written by :meth:`insert_events_in_pipeline`."""
        if not stored_events:
            return None
        if kwargs or not self.insert_function_ready or recording.erased_visitor_ids(stored_events):
            return self.insert_events_in_pipeline(stored_events, **kwargs)
        new_keys, owners, used = key_work(stored_events)
        ids: list[int] | None = None
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            prev = self.prev_event_hashes(curs, stored_events)
            hashes = chain_rows(stored_events, range(len(stored_events)), prev, None)
            if self.insert_call_bytes is None:  # rendered once (psycopg renders a Composed at every call)
                self.insert_call_bytes = self.insert_call_statement.as_bytes(conn)
            try:
                curs.execute(
                    self.insert_call_bytes,
                    (
                        self.lock_timeout_setting,
                        uuid_array([h[1] for h in hashes]),
                        int8_array([h[2] for h in hashes]),
                        text_array([s.topic for s in stored_events]),
                        bytea_array([s.state for s in stored_events]),
                        bytea_array([h[3] for h in hashes]),
                        text_array([r[0] for r in new_keys]),
                        text_array([r[1] for r in new_keys]),
                        bytea_array([r.stored for r in new_keys]),
                        uuid_array([oid for oid, _ in owners]),
                        text_array([v for _, v in owners]),
                        text_array(list(used)),
                        text_array(list(used.values())),
                    ),
                    prepare=True,
                )
                ids = [r["id"] for r in curs.fetchall()]
            except psycopg.Error as err:
                if err.sqlstate == insert_function.UNDEFINED_FUNCTION_SQLSTATE:
                    self.insert_function_ready = False  # an older store, tables not created by this version
                elif err.sqlstate != insert_function.STALE_KEYS_SQLSTATE:
                    raise
        if ids is None:  # rolled back: the pipelined write tells the key ring what is stale, or lands
            return self.insert_events_in_pipeline(stored_events, **kwargs)
        if len(ids) != len(stored_events):
            msg = f"Couldn't get all notification IDs (got {len(ids)}, expected {len(stored_events)})"
            raise ProgrammingError(msg)
        self.remember_hashes(hashes)
        self.confirm_keys(stored_events)
        self.seal_if_due(len(stored_events))
        return ids

    def insert_events_in_pipeline(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """The library's ``insert_events`` (``enable_db_functions`` is refused in
        ``__init__``), written with its public statements (``lock_table_statements``,
        ``channel_name``, ``insert_events_statement``) plus the hash and key rows.

        One round trip under the lock: the event hashes are computed before it
        (each aggregate's previous hash is remembered from this recorder's last
        commit or read before the lock: committed hash rows never change), and
        the lock, the events with their hash rows and the notification (one
        statement: :attr:`insert_with_hashes_statement`), the key and key-owner
        rows and the key check's queries go in one pipeline sync; then COMMIT.

        An exception that is not the database's rolls the transaction back: the
        library catches every exception inside the transaction block and
        re-raises it after the block has exited normally, which commits whatever
        was written unless the database had aborted the transaction itself (as
        it has after a server-side error, but not after a client-side one such
        as psycopg refusing to encode a NUL in a text parameter, nor a
        :class:`StaleKeyError`, raised after statements that succeeded). So any
        exception rolls the transaction back explicitly (``psycopg.Rollback``)
        and is re-raised after the pipeline has exited."""
        if not stored_events:
            return None
        rows = [
            self.construct_pg_stored_event(s.originator_id, s.originator_version, s.topic, s.state)
            for s in stored_events
        ]
        exc: Exception | None = None
        ids: Sequence[int] | None = None
        hashes: list[tuple[int, UUID, int, bytes, bytes]] = []
        with self.datastore.get_connection() as conn:
            with conn.pipeline() as pipeline, conn.transaction():
                with conn.cursor() as curs:
                    try:
                        prev = self.prev_event_hashes(curs, stored_events)
                        # per aggregate only: no log-wide head (see sealing); placeholder ids keep the order
                        hashes = chain_rows(stored_events, range(len(stored_events)), prev, None)
                        for statement in self.lock_table_statements:
                            curs.execute(statement, prepare=True)
                        curs.execute(
                            self.insert_with_hashes_statement,
                            (rows, [h[1] for h in hashes], [h[2] for h in hashes], [h[3] for h in hashes]),
                            prepare=True,
                        )
                        check = self.send_keys(conn, stored_events)
                        pipeline.sync()  # a uniqueness violation raises here (as in the library)
                        ids = [r["notification_id"] for r in curs.fetchall()]
                        if len(ids) != len(stored_events):
                            msg = f"Couldn't get all notification IDs (got {len(ids)}, expected {len(stored_events)})"
                            raise ProgrammingError(msg)
                        if check is not None:
                            check()
                        self.write_erasures(conn, stored_events)
                    except Exception as e:  # noqa: BLE001 - re-raised below, after the rollback
                        exc = e
                if exc is not None:
                    raise psycopg.Rollback  # leaves the transaction block by rolling it back
            if exc is not None:
                raise exc
        self.remember_hashes(hashes)
        self.confirm_keys(stored_events)
        self.seal_if_due(len(stored_events))
        return ids

    def seal_once(self, limit: int) -> int:
        """Seal up to ``limit`` committed hash rows after the last seal. No lock:
        ids are assigned under the events table's lock held through COMMIT, so
        below a visible id nothing is still in flight; a concurrent sealer's
        seal of the same range is refused by the ``seq`` key and this one yields."""
        try:
            with self.datastore.transaction(commit=True) as c:
                c.execute(SQL("SELECT seq, first_id, last_id, event_count, root FROM {} ORDER BY seq DESC LIMIT 1").format(self.qualified(self.SEALS)))
                r = c.fetchone()
                last = Seal(r["seq"], r["first_id"], r["last_id"], r["event_count"], bytes(r["root"])) if r else None
                c.execute(
                    SQL(
                        "SELECT notification_id, originator_id, originator_version, event_hash FROM {} "
                        "WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
                    ).format(self.qualified(self.HASHES)),
                    (last.last_id if last else 0, limit),
                )
                rows = [(x["notification_id"], x["originator_id"], x["originator_version"], bytes(x["event_hash"])) for x in c.fetchall()]
                seal = next_seal(last, rows)
                if seal is None:
                    return 0
                c.execute(SQL("INSERT INTO {} VALUES (%s,%s,%s,%s,%s,now())").format(self.qualified(self.SEALS)), tuple(seal))
                return seal.event_count
        except IntegrityError:
            return 0  # another sealer sealed this range first

    # ---- keys -------------------------------------------------------------

    def key_by_id(self, kid: str) -> bytes | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(SQL("SELECT key FROM {} WHERE kid=%s").format(self.qualified(self.KEYS)), (kid,))
            row = c.fetchone()
        return self.open_keys({kid: bytes(row["key"])}).get(kid) if row else None

    def active_key(self, visitor_id: str) -> KeyRow | None:
        """The visitor's key, if any (read only, as on SQLite)."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(SQL("SELECT kid, visitor_id, key FROM {} WHERE visitor_id=%s").format(self.qualified(self.KEYS)), (visitor_id,))
            row = c.fetchone()
        return self.active_key_row(row["kid"], row["visitor_id"], bytes(row["key"])) if row else None

    def key_ids_of(self, visitor_ids: Sequence[str]) -> list[str]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(SQL("SELECT kid FROM {} WHERE visitor_id = ANY(%s)").format(self.qualified(self.KEYS)), (list(visitor_ids),))
            return sorted(r["kid"] for r in c.fetchall())

    def key_owner_of(self, aggregate_id: UUID) -> str | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(SQL("SELECT visitor_id FROM {} WHERE aggregate_id=%s").format(self.qualified(self.KEY_OWNERS)), (aggregate_id,))
            row = c.fetchone()
        return row["visitor_id"] if row else None

    def keys_by_id(self, kids: Sequence[str]) -> dict[str, bytes]:
        """``kid -> key`` of those of ``kids`` that exist."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(SQL("SELECT kid, key FROM {} WHERE kid = ANY(%s)").format(self.qualified(self.KEYS)), (list(kids),))
            stored = {row["kid"]: bytes(row["key"]) for row in c.fetchall()}
        return self.open_keys(stored)

    # ---- after an erasure -------------------------------------------------

    def delete_snapshots(self, table: str, aggregate_ids: Sequence[UUID]) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(SQL("DELETE FROM {} WHERE originator_id = ANY(%s)").format(self.qualified(table)), (list(aggregate_ids),))

    def purge_free_space(self) -> bool:
        """VACUUM the key and snapshot tables so dead rows holding erased keys are
        reclaimed (PostgreSQL's WAL and backups still hold them until recycled)."""
        with self.datastore.get_connection() as conn:
            assert conn.autocommit
            conn.execute(SQL("VACUUM {}").format(self.qualified(self.KEYS)))
        return True
