"""The view a read model writes: its SQLAlchemy tables and its tracking record,
in one transaction, with the SQLite pragmas of a bulk catch-up."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking, TrackingRecorder
from sqlalchemy import Connection, Engine, MetaData, Table, and_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from ..domain.table_prefix import table_name
from .columns import add_missing_columns, widen_columns
from .failures import clean_text, error_summary, error_type_name, failures_table
from .prefixes import prefix_of, prefixed, prefixed_metadata
from .generations import generation_metadata, generation_suffix, generations_table
from .tracking import TRACKING, TrackingConflict, tracking_table

log = logging.getLogger("chatledger.projections")

BULK_WAL_PAGES = 32768
"""WAL pages (of 4 KiB) a bulk catch-up lets accumulate before checkpointing."""


class SQLView(TrackingRecorder):
    """SQLAlchemy tables of one projection, with its tracking record.

    Writes happen inside :meth:`transaction`; ``insert_tracking`` joins the
    same transaction, so data and position commit (or roll back) together.
    """

    def __init__(
        self,
        engine: Engine,
        name: str,
        metadata: MetaData,
        *,
        tables: dict[str, Table] | None = None,
        generation: int | None = None,
    ) -> None:
        self.engine = engine
        self.name = name
        self.metadata = metadata
        self.tables = tables
        """``None``: the live view (handlers write the canonical tables); a
        shadow: canonical table name -> the shadow's table (:meth:`table`)."""
        self.shadow_generation = generation
        self._local = threading.local()
        self.prefix = prefix_of(engine)
        if tables is None:  # the live view: the tables under the ledger's prefix (a shadow's are already)
            self.metadata = metadata = prefixed_metadata(metadata, self.prefix)[0]
        self.tracking_table = prefixed(tracking_table, self.prefix)
        self.failures_table = prefixed(failures_table, self.prefix)
        self.generations_table = prefixed(generations_table, self.prefix)
        prefixed_metadata(TRACKING, self.prefix)[0].create_all(engine)
        metadata.create_all(engine)
        if tables is None:
            add_missing_columns(engine, metadata)  # e.g. 0.5's tenant, on an older store's tables
            widen_columns(engine, metadata)  # e.g. 0.5's memory keys
            self.create_indexes()  # a rebuild that died may have left some out

    def table(self, table: Table) -> Table:
        """The table this view writes for the read model's (canonical) ``table``:
        itself, or in a shadow view, the shadow's copy (``<name>__g<N>``).
        Handlers must write through this to be rebuilt in a shadow
        (:attr:`ReadModel.supports_shadow_rebuild`)."""
        live = prefixed(table, self.prefix)
        return live if self.tables is None else self.tables[live.name]

    def generation(self) -> int:
        """The generation of the tables this view writes (a live view reads it
        from ``chatledger_projection_generations``: another process may swap)."""
        if self.shadow_generation is not None:
            return self.shadow_generation
        conn = getattr(self._local, "conn", None)
        query = select(self.generations_table.c.generation).where(
            self.generations_table.c.projection == self.name
        )
        if conn is not None:
            return conn.execute(query).scalar() or 0
        with self.engine.connect() as c:
            return c.execute(query).scalar() or 0

    def _index_metadata(self) -> tuple[MetaData, str]:
        """The metadata whose indexes are this view's, and their name suffix."""
        if self.tables is not None:
            return self.metadata, generation_suffix(self.generation())
        generation = self.generation()
        if generation == 0:
            return self.metadata, ""
        return generation_metadata(self.metadata, generation, rename_tables=False)[0], (
            generation_suffix(generation)
        )

    @contextmanager
    def join(self, conn: Connection) -> Iterator[None]:
        """Make :meth:`transaction` a savepoint of ``conn``'s transaction (the
        final catch-up of a shadow, inside its swap)."""
        self._local.conn = conn
        self._local.joined = True
        try:
            yield
        finally:
            self._local.conn = None
            self._local.joined = False

    @property
    def conn(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            msg = "SQLView writes must happen inside view.transaction()"
            raise RuntimeError(msg)
        return conn

    @contextmanager
    def transaction(self, *, bulk: bool = False) -> Iterator[Connection]:
        """A write transaction. ``bulk`` (a long catch-up, e.g. a rebuild) lets
        SQLite's WAL grow to 128 MiB before the commit checkpoints it, instead
        of 4 MiB: a rebuild batch dirties thousands of random index pages, and
        checkpointing after every batch rewrote (and fsynced) them each time.
        Durability is unchanged (see docs/projections.md, "Rebuild speed").
        Inside :meth:`join`: a savepoint of the joined transaction."""
        if getattr(self._local, "joined", False):
            conn = self._local.conn
            self._local.failures = []
            with conn.begin_nested():
                yield conn
            self._log_failures()
            return
        with self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                # A 64 MiB page cache: rebuilds insert into large random-key indexes.
                conn.exec_driver_sql("PRAGMA cache_size=-65536")
                # Set on every write: pooled connections must not keep the bulk value.
                conn.exec_driver_sql(
                    f"PRAGMA wal_autocheckpoint={BULK_WAL_PAGES if bulk else 1000}"
                )
                # Take the write lock up front: a second runner waits here, then
                # sees the first one's position (instead of failing mid-batch).
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            self._local.conn = conn
            self._local.failures = []
            try:
                yield conn
            finally:
                self._local.conn = None
        self._log_failures()

    def _log_failures(self) -> None:
        for values in self._local.__dict__.pop("failures", ()):
            log.error(
                "read model %r could not apply the event at log position %d (%s, aggregate %s "
                "version %d): %s: %s; it was skipped and recorded (projection_failures())",
                self.name, values["notification_id"], values["topic"], values["originator_id"],
                values["originator_version"], values["error_type"], values["error_message"],
            )  # fmt: skip

    def insert_tracking(self, tracking: Tracking) -> None:
        values = {
            "projection": self.name,
            "application": tracking.application_name,
            "notification_id": tracking.notification_id,
        }
        dialect = self.conn.dialect.name
        insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(self.tracking_table)
        self.conn.execute(
            insert.values(values).on_conflict_do_update(
                index_elements=["projection", "application"],
                set_={"notification_id": tracking.notification_id},
            )
        )

    def advance_tracking(self, application_name: str, expected: int, position: int) -> None:
        """Move this view's position from ``expected`` to ``position`` in the
        current transaction, or raise :class:`TrackingConflict` if another
        runner moved it first (so a batch is never applied twice, even when an
        in-process runner and ``chatledger worker`` race)."""
        where = and_(
            self.tracking_table.c.projection == self.name,
            self.tracking_table.c.application == application_name,
        )
        if expected == 0 and self.conn.execute(
            select(self.tracking_table.c.notification_id).where(where)
        ).first() is None:
            try:
                with self.conn.begin_nested():
                    self.conn.execute(
                        self.tracking_table.insert().values(
                            projection=self.name,
                            application=application_name,
                            notification_id=position,
                        )
                    )
            except IntegrityError as err:
                raise TrackingConflict(self.name) from err
            return
        result = self.conn.execute(
            self.tracking_table.update()
            .where(where, self.tracking_table.c.notification_id == expected)
            .values(notification_id=position)
        )
        if result.rowcount != 1:
            raise TrackingConflict(self.name)

    def record_failure(self, application_name: str, record: Any, error: BaseException) -> None:
        """Record, in the current transaction, that ``record`` (a notification)
        could not be applied: its position, aggregate, version and topic, and
        the error's type and message (:func:`error_summary`), never the event's
        content. A rebuild (:meth:`reset`) forgets it and applies it again."""
        raw = getattr(record, "raw_originator_id", None)  # SQLite: hex, as stored
        originator = UUID(raw) if raw is not None else record.originator_id
        values = {
            "projection": self.name,
            "application": application_name,
            "notification_id": record.id,
            "originator_id": str(originator),
            "originator_version": record.originator_version,
            "topic": record.topic,
            "error_type": clean_text(error_type_name(error), 200),
            "error_message": error_summary(error),
            "failed_at": datetime.now(UTC),
        }
        self.conn.execute(self.failures_table.insert().values(values))
        self._local.failures.append(values)  # logged once committed

    def max_tracking_id(self, application_name: str) -> int | None:
        query = select(self.tracking_table.c.notification_id).where(
            self.tracking_table.c.projection == self.name,
            self.tracking_table.c.application == application_name,
        )
        found: int | None
        if getattr(self._local, "joined", False):
            found = self._local.conn.execute(query).scalar()
        else:
            with self.engine.connect() as conn:
                found = conn.execute(query).scalar()
        return found

    def drop_indexes(self, names: Sequence[str]) -> None:
        """Drop these secondary indexes (a rebuild defers them; see
        :attr:`ReadModel.deferred_indexes`; canonical names, resolved to the
        view's generation)."""
        metadata, suffix = self._index_metadata()
        wanted = {table_name(self.prefix, name) + suffix for name in names}
        with self.engine.begin() as conn:
            for table in metadata.sorted_tables:
                for index in table.indexes:
                    if index.name in wanted:
                        index.drop(conn, checkfirst=True)

    def create_indexes(self, skip: Sequence[str] = ()) -> None:
        """Create every index of the metadata that does not exist (under the
        names of the view's generation), but those named in ``skip``."""
        metadata, suffix = self._index_metadata()
        skipped = {table_name(self.prefix, name) + suffix for name in skip}
        with self.engine.begin() as conn:
            for table in metadata.sorted_tables:
                for index in table.indexes:
                    if index.name not in skipped:
                        index.create(conn, checkfirst=True)

    def checkpoint(self) -> None:
        """Fold the WAL back into the database file after a bulk catch-up
        (SQLite; ``PASSIVE``: never waits for readers or writers)."""
        if self.engine.dialect.name != "sqlite" or getattr(self._local, "joined", False):
            return
        with self.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def analyze(self) -> None:
        """Refresh the planner statistics of this view's tables (PostgreSQL only).

        Tables created by :meth:`reset` have no statistics until autovacuum gets
        to them, and a rebuild fills them far faster than that. Without
        statistics PostgreSQL assumes ``user_id IS NULL`` is rare and plans the
        conversation log's link UPDATE as a BitmapAnd over the ``user_id``
        index, which reads every NULL entry of the table per linked visitor
        (O(table) per link). With statistics it uses the visitor index.
        """
        if self.engine.dialect.name != "postgresql" or getattr(self._local, "joined", False):
            return
        quote = self.engine.dialect.identifier_preparer.quote
        with self.engine.begin() as conn:
            for table in self.metadata.sorted_tables:
                conn.exec_driver_sql(f"ANALYZE {quote(table.name)}")

    def reset(self) -> None:
        """Drop the read model's tables and its position: the next catch-up
        rebuilds (in place, generation 0: canonical index names)."""
        with self.engine.begin() as conn:
            self.metadata.drop_all(conn)
            conn.execute(self.tracking_table.delete().where(self.tracking_table.c.projection == self.name))
            conn.execute(self.failures_table.delete().where(self.failures_table.c.projection == self.name))
            conn.execute(
                self.generations_table.update()
                .where(self.generations_table.c.projection == self.name)
                .values(generation=0)
            )
        self.metadata.create_all(self.engine)

