"""The projection machinery every read model shares.

A read model is an ``eventsourcing.projection.Projection`` whose view is a
:class:`SQLView`: SQLAlchemy tables plus a tracking table, written in the same
transaction. The :class:`Projector` pulls the application's notification log
(``select_notifications``) in batches, applies each batch inside one
transaction, and records the position of the last event of the batch with it.
So a projection resumes exactly where it stopped after a crash, applies no
event twice, and works the same on SQLite and PostgreSQL (no LISTEN/NOTIFY
needed).
"""

from __future__ import annotations

import gc
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import singledispatchmethod
from typing import Any, ClassVar
from uuid import UUID

import psycopg
from chatledger.domain.errors import ConfigurationError, EventVersionError
from chatledger.domain.validation import check_count
from eventsourcing.persistence import ApplicationRecorder, Mapper, Tracking, TrackingRecorder
from eventsourcing.projection import Projection
from eventsourcing.sqlite import SQLiteApplicationRecorder
from eventsourcing.utils import get_topic
from pydantic import ValidationError
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    func,
    inspect,
    select,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import conv

from .sqltypes import UTCDateTime

log = logging.getLogger("chatledger.projections")

TRACKING = MetaData()
tracking_table = Table(
    "chatledger_projection_tracking",
    TRACKING,
    Column("projection", String(100), primary_key=True),
    Column("application", String(100), primary_key=True),
    Column("notification_id", Integer, nullable=False),
)
failures_table = Table(
    "chatledger_projection_failures",
    TRACKING,
    Column("projection", String(100), primary_key=True),
    Column("application", String(100), primary_key=True),
    Column("notification_id", Integer, primary_key=True),
    Column("originator_id", String(100), nullable=False),
    Column("originator_version", Integer, nullable=False),
    Column("topic", Text, nullable=False),
    Column("error_type", String(200), nullable=False),
    Column("error_message", Text, nullable=False),
    Column("failed_at", UTCDateTime, nullable=False),
)
"""Events a read model could not apply (see :class:`ProjectionFailure`)."""
generations_table = Table(
    "chatledger_projection_generations",
    TRACKING,
    Column("projection", String(100), primary_key=True),
    # The generation of the live tables (0: as first created, canonical index names).
    Column("generation", Integer, nullable=False),
    # The generation a shadow rebuild is building (tables ``<table>__g<N>``), or NULL.
    Column("shadow", Integer, nullable=True),
)
"""Which generation of each read model's tables is live, and which one a
shadow rebuild is building (see :meth:`Projector.rebuild_shadow`)."""

SHADOW_SUFFIX = "__shadow"
"""Added to a read model's name for its shadow's tracking and failure records."""

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called after each batch by long jobs."""


class TrackingConflict(Exception):
    """Another runner advanced this projection first; the batch was rolled back."""

    def __init__(self, name: str) -> None:
        super().__init__(f"projection {name!r} was advanced by another runner")
        self.name = name


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
        TRACKING.create_all(engine)
        metadata.create_all(engine)
        if tables is None:
            self.create_indexes()  # a rebuild that died may have left some out

    def table(self, table: Table) -> Table:
        """The table this view writes for the read model's (canonical) ``table``:
        itself, or in a shadow view, the shadow's copy (``<name>__g<N>``).
        Handlers must write through this to be rebuilt in a shadow
        (:attr:`ReadModel.supports_shadow_rebuild`)."""
        return table if self.tables is None else self.tables[table.name]

    def generation(self) -> int:
        """The generation of the tables this view writes (a live view reads it
        from ``chatledger_projection_generations``: another process may swap)."""
        if self.shadow_generation is not None:
            return self.shadow_generation
        conn = getattr(self._local, "conn", None)
        query = select(generations_table.c.generation).where(
            generations_table.c.projection == self.name
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
        insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(tracking_table)
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
            tracking_table.c.projection == self.name,
            tracking_table.c.application == application_name,
        )
        if expected == 0 and self.conn.execute(
            select(tracking_table.c.notification_id).where(where)
        ).first() is None:
            try:
                with self.conn.begin_nested():
                    self.conn.execute(
                        tracking_table.insert().values(
                            projection=self.name,
                            application=application_name,
                            notification_id=position,
                        )
                    )
            except IntegrityError as err:
                raise TrackingConflict(self.name) from err
            return
        result = self.conn.execute(
            tracking_table.update()
            .where(where, tracking_table.c.notification_id == expected)
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
            "error_type": _clean(_error_type(error), 200),
            "error_message": error_summary(error),
            "failed_at": datetime.now(UTC),
        }
        self.conn.execute(failures_table.insert().values(values))
        self._local.failures.append(values)  # logged once committed

    def max_tracking_id(self, application_name: str) -> int | None:
        query = select(tracking_table.c.notification_id).where(
            tracking_table.c.projection == self.name,
            tracking_table.c.application == application_name,
        )
        if getattr(self._local, "joined", False):
            return self._local.conn.execute(query).scalar()
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    def drop_indexes(self, names: Sequence[str]) -> None:
        """Drop these secondary indexes (a rebuild defers them; see
        :attr:`ReadModel.deferred_indexes`; canonical names, resolved to the
        view's generation)."""
        metadata, suffix = self._index_metadata()
        wanted = {name + suffix for name in names}
        with self.engine.begin() as conn:
            for table in metadata.sorted_tables:
                for index in table.indexes:
                    if index.name in wanted:
                        index.drop(conn, checkfirst=True)

    def create_indexes(self, skip: Sequence[str] = ()) -> None:
        """Create every index of the metadata that does not exist (under the
        names of the view's generation), but those named in ``skip``."""
        metadata, suffix = self._index_metadata()
        skipped = {name + suffix for name in skip}
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
            conn.execute(tracking_table.delete().where(tracking_table.c.projection == self.name))
            conn.execute(failures_table.delete().where(failures_table.c.projection == self.name))
            conn.execute(
                generations_table.update()
                .where(generations_table.c.projection == self.name)
                .values(generation=0)
            )
        self.metadata.create_all(self.engine)


def generation_suffix(generation: int) -> str:
    """What the tables (while a shadow) and indexes of ``generation`` add to their names."""
    return "" if generation == 0 else f"__g{generation}"


_GENERATIONS: dict[tuple[int, int, bool], tuple[MetaData, dict[str, Table]]] = {}


def _retired_suffix(generation: int) -> str:
    """The name suffix a swap gives the live tables it retires (dropped next)."""
    return f"__g{generation}"


def generation_metadata(
    metadata: MetaData, generation: int, *, rename_tables: bool
) -> tuple[MetaData, dict[str, Table]]:
    """A copy of ``metadata`` for ``generation``: every index named
    ``<canonical name>__g<N>`` and, with ``rename_tables`` (a shadow being
    built), every table ``<table>__g<N>``. Returns the copy and its tables by
    canonical name. (SQLite's index names are global to the database and it
    cannot rename an index, so each generation keeps its own.)"""
    key = (id(metadata), generation, rename_tables)
    cached = _GENERATIONS.get(key)
    if cached is not None:
        return cached
    suffix = generation_suffix(generation)
    copy = MetaData()
    tables: dict[str, Table] = {}
    for table in metadata.sorted_tables:
        new = table.to_metadata(copy, name=table.name + suffix if rename_tables else table.name)
        for index in list(new.indexes):
            new.indexes.discard(index)
        for index in table.indexes:
            columns = [new.c[c.name] for c in index.columns]
            if len(columns) != len(index.expressions):  # pragma: no cover - none today
                raise ConfigurationError(f"index {index.name} is not on plain columns")
            Index(conv(f"{index.name}{suffix}"), *columns, unique=index.unique)
        tables[table.name] = new
    _GENERATIONS[key] = (copy, tables)
    return copy, tables


class ReadModel(Projection[SQLView]):
    """Base of chatledger's projections.

    Subclasses set ``name`` and ``metadata`` (their SQLAlchemy tables) and
    register handlers on :meth:`process_event` with ``@process_event.register``.
    Handlers write through ``self.view.conn`` and may buffer rows, flushing them
    in :meth:`flush`, which the projector calls once per batch, before the
    tracking record.
    """

    metadata: ClassVar[MetaData]
    deferred_indexes: ClassVar[tuple[str, ...]] = ()
    """Secondary indexes only reads use (never the handlers' own lookups or
    updates): a rebuild drops them and builds them once at the end, instead
    of inserting a million random keys into them one batch at a time."""

    personal_fields: ClassVar[tuple[type, ...] | None] = None
    """Event classes whose personal (encrypted) fields this read model reads;
    ``None``: any. Events of other classes may reach it *sealed*: decoded
    without opening their envelopes, each personal field replaced by a
    placeholder (``ShreddingMapper.to_sealed_event``), which skips the
    decryption a message costs. Declare ``()`` only if no handler reads a
    personal field (see ``infrastructure/shredding.py``, ``PERSONAL_FIELDS``).
    Not inherited: a subclass must declare it again, or it gets everything opened."""

    supports_shadow_rebuild: ClassVar[bool] = False
    """Whether every handler writes through ``self.view.table(...)`` (never a
    module-level table directly), so the read model can be rebuilt into new
    tables while the live ones serve (:meth:`Projector.rebuild_shadow`).
    Not inherited, like :attr:`personal_fields`: a subclass that adds
    handlers declares it again."""

    @singledispatchmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """Events a read model does not handle are skipped (but still tracked)."""

    def process_batch(self, application_name: str, items: Sequence[tuple[int, Any]]) -> None:
        """Apply ``(notification id, event)`` pairs in log order. The default
        calls :meth:`process_event` with a ``Tracking`` per event; read models
        that do not need one override this."""
        for notification_id, event in items:
            self.process_event(event, Tracking(application_name, notification_id))

    def prepare(self, events: Sequence[Any]) -> None:
        """Called with a batch's events before they are processed, inside its
        transaction: prefetch the rows the batch needs in a few queries."""

    def flush(self) -> None:
        """Write buffered rows; called inside the batch's transaction."""

    def discard(self) -> None:
        """Forget per-batch state (caches, buffered rows). The projector calls it
        before every batch and after a batch failed, so a handler never sees
        state from a rolled-back transaction."""


class HandlerTableReadModel(ReadModel):
    """A read model whose handlers are a table ``{event class: function}``.

    Subclasses set :attr:`handlers` (and usually ``topics`` from its keys); a
    handler is called as ``handler(self, event)``, or ``handler(self, event,
    notification_id)`` if :attr:`handlers_take_position` is set. A batch is
    dispatched with one dict look-up per event and no ``Tracking`` objects,
    unless a subclass overrides :meth:`process_event` itself, which is then
    called for every event as usual."""

    handlers: ClassVar[dict[type, Any]] = {}
    handlers_take_position: ClassVar[bool] = False

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:  # type: ignore[override]
        handler = self.handlers.get(type(domain_event))
        if handler is None:
            return
        if self.handlers_take_position:
            handler(self, domain_event, tracking.notification_id)
        else:
            handler(self, domain_event)

    def process_batch(self, application_name: str, items: Sequence[tuple[int, Any]]) -> None:
        if type(self).process_event is not HandlerTableReadModel.process_event:  # a subclass's own
            return super().process_batch(application_name, items)
        handlers = self.handlers
        if self.handlers_take_position:
            for notification_id, event in items:
                handler = handlers.get(type(event))
                if handler is not None:
                    handler(self, event, notification_id)
            return
        for _, event in items:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(self, event)


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    position: int
    head: int
    failed: int = 0
    """Events up to ``position`` this read model could not apply (each
    recorded: :meth:`Projector.failures`, ``ledger.projection_failures()``)."""

    @property
    def lag(self) -> int:
        return max(self.head - self.position, 0)


@dataclass(frozen=True)
class ProjectionFailure:
    """An event one read model could not apply; it was skipped by that read
    model only, and stays recorded until a rebuild applies it.

    Names the event (log position, aggregate id and version, topic) and the
    error (type and message), never the event's content."""

    projection: str
    notification_id: int
    originator_id: UUID
    originator_version: int
    topic: str
    error_type: str
    error_message: str
    failed_at: datetime


class Projector:
    """Keeps read models up to date with an application's notification log.

    An event a read model cannot apply does not stop it: the batch is
    applied again in parts inside savepoints (:meth:`_apply_parts`), the
    event is recorded as failed (``chatledger_projection_failures``) and
    skipped by that read model only; the others, and the later events, go on.
    Errors of the database or the process (a lost connection, a lock
    timeout: :func:`is_event_error`) still stop the catch-up, to be retried.
    """

    def __init__(
        self,
        application_name: str,
        recorder: ApplicationRecorder,
        mapper: Mapper[Any],
        engine: Engine,
        projections: Sequence[type[ReadModel]],
        *,
        ddl_lock: Callable[[], AbstractContextManager[Any]] | None = None,
    ) -> None:
        self.application_name = application_name
        self.ddl_lock = ddl_lock or nullcontext
        """Serialises table creation and shadow swaps between processes (the
        ledger passes ``schema_lock``)."""
        self.recorder = recorder
        self.mapper = mapper
        self.engine = engine
        self.projections: dict[str, ReadModel] = {
            cls.name: cls(SQLView(engine, cls.name, cls.metadata)) for cls in projections
        }
        self._lock = threading.Lock()
        self._shadow_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __getitem__(self, name: str) -> ReadModel:
        return self.projections[name]

    def head(self) -> int:
        return self.recorder.max_notification_id() or 0

    def position(self, name: str) -> int:
        return self.projections[name].view.max_tracking_id(self.application_name) or 0

    def status(self) -> list[ProjectionStatus]:
        head = self.head()
        with self.engine.connect() as conn:
            failed = dict(
                conn.execute(
                    select(failures_table.c.projection, func.count())
                    .where(failures_table.c.application == self.application_name)
                    .group_by(failures_table.c.projection)
                ).all()
            )
        return [
            ProjectionStatus(n, self.position(n), head, failed.get(n, 0)) for n in self.projections
        ]

    def failures(self, name: str | None = None) -> list[ProjectionFailure]:
        """The events read models could not apply (of read model ``name``, or
        of all), in log order."""
        table = failures_table
        query = select(table).where(
            table.c.application == self.application_name,
            table.c.projection.in_(list(self.projections)),  # not a shadow's (yet)
        )
        if name is not None:
            if name not in self.projections:
                raise ConfigurationError(
                    f"No read model named {name!r} in this ledger; choose one of: "
                    f"{', '.join(self.projections)}."
                )
            query = query.where(table.c.projection == name)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(table.c.notification_id, table.c.projection)).all()
        return [
            ProjectionFailure(
                projection=r.projection,
                notification_id=r.notification_id,
                originator_id=UUID(r.originator_id),
                originator_version=r.originator_version,
                topic=r.topic,
                error_type=r.error_type,
                error_message=r.error_message,
                failed_at=r.failed_at,
            )
            for r in rows
        ]

    def catch_up(
        self,
        names: Sequence[str] | None = None,
        *,
        batch_size: int = 2000,
        progress: Progress | None = None,
    ) -> int:
        """Apply every event not yet applied; return how many were applied
        (summed over the read models)."""
        check_count("batch_size", batch_size)
        with self._lock:
            return self._run([self.projections[n] for n in names or list(self.projections)], batch_size, progress)

    def rebuild(self, name: str, *, batch_size: int = 2000, progress: Progress | None = None) -> int:
        """Drop one read model and replay it from the first event."""
        return self.rebuild_many([name], batch_size=batch_size, progress=progress)

    def rebuild_many(
        self,
        names: Sequence[str] | None = None,
        *,
        batch_size: int = 2000,
        progress: Progress | None = None,
        shadow: bool = False,
    ) -> int:
        """Drop several read models (default: all) and replay them together:
        each batch of the log is read and decoded once for all of them.
        ``shadow``: build them into new tables while the live ones keep
        serving, then swap (:meth:`rebuild_shadow`)."""
        check_count("batch_size", batch_size)  # before anything is dropped
        if shadow:
            return self.rebuild_shadow(names, batch_size=batch_size, progress=progress)
        with self._lock:
            projections = [self.projections[n] for n in names or list(self.projections)]
            for projection in projections:
                # Old tables a crash left behind keep index names reset() creates.
                self._drop_stale(projection, keep=self._shadow_generation(projection.name))
                projection.view.reset()
                projection.view.drop_indexes(projection.deferred_indexes)
            try:
                return self._run(projections, batch_size, progress)
            finally:
                # Also after a failure; a process killed here gets them back
                # when its next SQLView starts (``create_indexes``).
                for projection in projections:
                    projection.view.create_indexes()

    # ---- shadow rebuilds ---------------------------------------------------

    def rebuild_shadow(
        self,
        names: Sequence[str] | None = None,
        *,
        batch_size: int = 2000,
        progress: Progress | None = None,
    ) -> int:
        """Rebuild read models (default: all) without downtime; return the
        events applied to the shadows (summed over the read models).

        Each is replayed from position 0 into new tables (``<table>__g<N>``,
        tracked as ``<name>__shadow``) while the live tables keep serving reads
        and keep being caught up. Once the shadows are near the head, one
        transaction locks the live models' tracking rows (SQLite: the write
        lock), applies the last events to the shadows, renames the live tables
        away and the shadows' to the canonical names, and moves the tracking
        and failure records: a reader sees the old tables or the new ones.
        The old tables are dropped afterwards. A crash before that commit
        leaves the live tables untouched; a rerun continues the shadow from
        its own position (see docs/projections.md, "Shadow rebuilds").
        """
        projections = [self.projections[n] for n in names or list(self.projections)]
        for projection in projections:
            if not type(projection).__dict__.get("supports_shadow_rebuild", False):
                raise ConfigurationError(
                    f"Read model {projection.name!r} does not declare supports_shadow_rebuild "
                    "(its handlers must write through self.view.table(...)); rebuild it in "
                    "place (without --shadow) instead."
                )
        with self._shadow_lock:
            shadows = [self._open_shadow(p) for p in projections]
            applied = self._run(shadows, batch_size, progress)
            for shadow in shadows:
                shadow.view.create_indexes()  # the deferred ones
                shadow.view.analyze()
            applied += self._run(shadows, batch_size, None)  # what arrived meanwhile
            swapped, retired = self._swap(projections, shadows, batch_size)
            applied += swapped
            # The old tables, now nobody's: dropped outside the swap (SQLite's
            # secure_delete zeroes their pages, which takes a while).
            quote = self.engine.dialect.identifier_preparer.quote
            for live, generation in retired:
                for table in reversed(live.metadata.sorted_tables):
                    with self.engine.begin() as conn:
                        conn.exec_driver_sql(
                            f"DROP TABLE IF EXISTS {quote(table.name + _retired_suffix(generation))}"
                        )
        return applied

    def shadow_status(self) -> list[ProjectionStatus]:
        """Each shadow rebuild under way (or left by a crash, to be continued):
        named ``<read model>__shadow``, with its position."""
        head = self.head()
        g, t = generations_table.c, tracking_table.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(g.projection, t.notification_id)
                .select_from(
                    generations_table.outerjoin(
                        tracking_table,
                        and_(
                            t.projection == g.projection + SHADOW_SUFFIX,
                            t.application == self.application_name,
                        ),
                    )
                )
                .where(g.shadow.is_not(None))
                .order_by(g.projection)
            ).all()
        return [
            ProjectionStatus(name + SHADOW_SUFFIX, position or 0, head)
            for name, position in rows
            if name in self.projections
        ]

    def _open_shadow(self, live: ReadModel) -> ReadModel:
        """The shadow of ``live``: continued if one was left, else a new generation."""
        name = live.name
        with self.ddl_lock(), self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            row = conn.execute(
                select(generations_table).where(generations_table.c.projection == name)
            ).first()
            if row is not None and row.shadow is not None:
                generation = row.shadow
            else:
                found = self._generations_on_disk(conn, live)
                generation = max([row.generation if row is not None else 0, *found]) + 1
                if row is None:
                    conn.execute(
                        generations_table.insert().values(projection=name, generation=0, shadow=generation)
                    )
                else:
                    conn.execute(
                        generations_table.update()
                        .where(generations_table.c.projection == name)
                        .values(shadow=generation)
                    )
                for table in (tracking_table, failures_table):
                    conn.execute(table.delete().where(table.c.projection == name + SHADOW_SUFFIX))
        self._drop_stale(live, keep=generation)
        metadata, tables = generation_metadata(live.metadata, generation, rename_tables=True)
        view = SQLView(self.engine, name + SHADOW_SUFFIX, metadata, tables=tables, generation=generation)
        view.drop_indexes(live.deferred_indexes)  # built once, before the swap
        view.create_indexes(skip=live.deferred_indexes)  # a crash may have left some out
        shadow = type(live)(view)
        return shadow

    def _shadow_generation(self, name: str) -> int | None:
        """The generation a shadow of ``name`` is building, if any."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(generations_table.c.shadow).where(generations_table.c.projection == name)
            ).scalar()

    def _generations_on_disk(self, conn: Connection, live: ReadModel) -> list[int]:
        """Generation numbers of ``<table>__g<N>`` tables of ``live`` that exist."""
        names = set(inspect(conn).get_table_names())
        found = []
        for table in live.metadata.sorted_tables:
            prefix = table.name + "__g"
            found += [int(n[len(prefix):]) for n in names if n.startswith(prefix) and n[len(prefix):].isdigit()]
        return found

    def _drop_stale(self, live: ReadModel, *, keep: int | None) -> None:
        """Drop the tables of ``live``'s generations other than the shadow
        ``keep``: old live tables a swap renamed away, a shadow abandoned."""
        with self.engine.begin() as conn:
            stale = sorted(set(self._generations_on_disk(conn, live)) - {keep})
        if not stale:
            return
        quote = self.engine.dialect.identifier_preparer.quote
        for generation in stale:
            for table in reversed(live.metadata.sorted_tables):
                with self.engine.begin() as conn:
                    conn.exec_driver_sql(
                        f"DROP TABLE IF EXISTS {quote(table.name + _retired_suffix(generation))}"
                    )  # never the live table: ``__g0`` too has its suffix

    def _swap(
        self, lives: Sequence[ReadModel], shadows: Sequence[ReadModel], batch_size: int
    ) -> tuple[int, list[tuple[ReadModel, int]]]:
        """Final catch-up of the shadows and the swap, in one transaction
        (retried while a lock is not granted in time)."""
        delay = 0.05
        for attempt in range(SWAP_ATTEMPTS):
            try:
                with self.ddl_lock(), self._lock:
                    return self._swap_once(lives, shadows, batch_size)
            except sa_exc.OperationalError as err:
                if not _is_lock_error(err) or attempt == SWAP_ATTEMPTS - 1:
                    raise
                log.warning("shadow swap of %s waited too long for a lock; retrying",
                            ", ".join(p.name for p in lives))  # fmt: skip
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _swap_once(
        self, lives: Sequence[ReadModel], shadows: Sequence[ReadModel], batch_size: int
    ) -> tuple[int, list[tuple[ReadModel, int]]]:
        app = self.application_name
        quote = self.engine.dialect.identifier_preparer.quote
        with self.engine.begin() as conn:
            postgres = conn.dialect.name == "postgresql"
            if postgres:
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT_MS}ms'")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # no writer until the swap commits
            names = [p.name for p in lives]
            query = select(generations_table).where(generations_table.c.projection.in_(names))
            rows = {r.projection: r for r in conn.execute(query.with_for_update() if postgres else query)}
            pairs = [
                (live, shadow)
                for live, shadow in zip(lives, shadows)
                if (row := rows.get(live.name)) is not None and row.shadow == shadow.view.generation()
            ]  # another runner may have swapped one already
            if not pairs:
                return 0, []
            # Freeze the live models: their runners wait on these rows.
            for live, _ in pairs:
                where = and_(tracking_table.c.projection == live.name, tracking_table.c.application == app)
                locked = select(tracking_table.c.notification_id).where(where)
                if conn.execute(locked.with_for_update() if postgres else locked).first() is None:
                    insert = (postgresql.insert if postgres else sqlite.insert)(tracking_table)
                    conn.execute(
                        insert.values(projection=live.name, application=app, notification_id=0)
                        .on_conflict_do_nothing()
                    )
                    if postgres:
                        conn.execute(locked.with_for_update())
            live_positions = {
                live.name: conn.execute(
                    select(tracking_table.c.notification_id).where(
                        tracking_table.c.projection == live.name, tracking_table.c.application == app
                    )
                ).scalar() or 0
                for live, _ in pairs
            }
            with ExitStack() as stack:
                for _, shadow in pairs:
                    stack.enter_context(shadow.view.join(conn))
                group = [shadow for _, shadow in pairs]
                positions = {s.name: s.view.max_tracking_id(app) or 0 for s in group}
                applied = self._catch_up(group, batch_size, None, self.head(), positions, bulk=False)
                final = {s.name: s.view.max_tracking_id(app) or 0 for s in group}
            for live, shadow in pairs:
                if final[shadow.name] < live_positions[live.name]:  # pragma: no cover - head only grows
                    raise RuntimeError(f"shadow of {live.name!r} is behind the live model")
                old = rows[live.name].generation
                generation = shadow.view.generation()
                for table in live.metadata.sorted_tables:
                    conn.exec_driver_sql(
                        f"ALTER TABLE {quote(table.name)} RENAME TO "
                        f"{quote(table.name + _retired_suffix(old))}"
                    )
                    conn.exec_driver_sql(
                        f"ALTER TABLE {quote(table.name + generation_suffix(generation))} "
                        f"RENAME TO {quote(table.name)}"
                    )
                shadow_name = live.name + SHADOW_SUFFIX
                for table in (tracking_table, failures_table):
                    conn.execute(table.delete().where(table.c.projection == live.name))
                    conn.execute(
                        table.update().where(table.c.projection == shadow_name).values(projection=live.name)
                    )
                conn.execute(
                    generations_table.update()
                    .where(generations_table.c.projection == live.name)
                    .values(generation=generation, shadow=None)
                )
        return applied, [(live, rows[live.name].generation) for live, _ in pairs]

    def _run(self, projections: Sequence[ReadModel], batch_size: int, progress: Progress | None) -> int:
        """Catch ``projections`` up to the head of the log.

        Read models at the same position share each batch: it is read and
        decoded once, then applied to each of them in its own transaction with
        its own compare-and-set tracking (so a read model that another runner
        moved, or that started elsewhere, simply continues from its position).
        """
        head = self.head()
        positions = {p.name: p.view.max_tracking_id(self.application_name) or 0 for p in projections}
        # A long catch-up (a rebuild, or a runner far behind) writes in bulk mode.
        bulk = head - min(positions.values(), default=head) > 4 * batch_size
        if not bulk:
            return self._catch_up(projections, batch_size, progress, head, positions, bulk=False)
        with _no_cyclic_gc():
            return self._catch_up(projections, batch_size, progress, head, positions, bulk=True)

    def _catch_up(
        self,
        projections: Sequence[ReadModel],
        batch_size: int,
        progress: Progress | None,
        head: int,
        positions: dict[str, int],
        *,
        bulk: bool,
    ) -> int:
        starts = dict(positions)
        applied = 0
        analyze_at = {p.name: max(batch_size, 5000) for p in projections}
        while True:
            behind = [p for p in projections if positions[p.name] < head]
            if not behind:
                break
            low = min(positions[p.name] for p in behind)
            group = [p for p in behind if positions[p.name] == low]
            batch = self._read(low, batch_size, head)
            if not batch:
                break
            last = batch[-1].id
            try:
                events = self._decode(batch, group)
                undecodable: dict[int, Exception] = {}
            except Exception as err:
                if not is_event_error(err):
                    raise
                events, undecodable = self._decode_each(batch, group)
            everything = [(n.id, n.topic, e) for n, e in zip(batch, events)]
            for projection in group:
                view = projection.view
                wanted = _topic_set(projection)
                handled = [
                    (i, e) for i, topic, e in everything if wanted is None or topic in wanted
                ]
                broken = []
                if undecodable:  # recorded for each read model that wanted them
                    broken = [(n, undecodable[n.id]) for n in batch if n.id in undecodable
                              and (wanted is None or n.topic in wanted)]  # fmt: skip
                    handled = [(i, e) for i, e in handled if i not in undecodable]
                projection.discard()
                try:
                    try:
                        with view.transaction(bulk=bulk):
                            # Claim the batch first: a racing runner blocks here, then fails
                            # the compare-and-set and skips to the winner's position.
                            view.advance_tracking(self.application_name, low, last)
                            projection.prepare([e for _, e in handled])
                            projection.process_batch(self.application_name, handled)
                            projection.flush()
                            for record, error in broken:
                                view.record_failure(self.application_name, record, error)
                    except Exception as err:
                        projection.discard()
                        if not is_event_error(err):
                            raise
                        # One event (or more) this read model cannot apply: apply the
                        # batch again in parts, recording and skipping only those.
                        with view.transaction(bulk=bulk):
                            view.advance_tracking(self.application_name, low, last)
                            records = {n.id: n for n in batch}
                            self._apply_parts(projection, handled, records)
                            for record, error in broken:
                                view.record_failure(self.application_name, record, error)
                except TrackingConflict:
                    # Another runner applied these events; continue from its position.
                    projection.discard()
                    positions[projection.name] = view.max_tracking_id(self.application_name) or 0
                    continue
                except BaseException:
                    projection.discard()
                    raise
                projection.discard()
                applied += len(batch)
                positions[projection.name] = last
                # A long catch-up (a rebuild) grows tables faster than autovacuum
                # analyzes them: refresh statistics as they double (PostgreSQL).
                done = last - starts[projection.name]
                if done >= analyze_at[projection.name]:
                    view.analyze()
                    analyze_at[projection.name] = 2 * done
            if progress is not None:
                progress(
                    sum(positions[p.name] - starts[p.name] for p in projections),
                    sum(head - starts[p.name] for p in projections),
                )
        if bulk and projections:
            projections[0].view.checkpoint()
        return applied

    def _apply_parts(
        self, projection: ReadModel, items: Sequence[tuple[int, Any]], records: dict[int, Any]
    ) -> None:
        """Apply ``items`` inside the current transaction, each half in a
        savepoint of its own, halving again a half that fails, down to the
        single events that fail on their own: those are recorded and skipped.
        A batch with one bad event of 5,000 is applied in about 26 parts.
        Each part is a batch of its own to the read model (``discard``,
        ``prepare``, ``process_batch``, ``flush``), so no state of a part
        rolled back reaches the next."""
        conn = projection.view.conn
        pending = [list(items)]
        while pending:
            part = pending.pop()
            if not part:
                continue
            projection.discard()
            try:
                with conn.begin_nested():
                    projection.prepare([e for _, e in part])
                    projection.process_batch(self.application_name, part)
                    projection.flush()
            except Exception as err:
                projection.discard()
                if not is_event_error(err):
                    raise
                if len(part) == 1:
                    projection.view.record_failure(self.application_name, records[part[0][0]], err)
                else:
                    middle = len(part) // 2
                    pending += [part[middle:], part[:middle]]  # first half next: log order
        projection.discard()

    def _decode_each(
        self, batch: Sequence[Any], group: Sequence[ReadModel]
    ) -> tuple[list[Any], dict[int, Exception]]:
        """Decode a batch that failed to decode, one event at a time: the
        events (``None`` for those that fail) and the errors by position."""
        events: list[Any] = []
        errors: dict[int, Exception] = {}
        for record in batch:
            try:
                events.extend(self._decode([record], group))
            except Exception as err:
                if not is_event_error(err):
                    raise
                events.append(None)
                errors[record.id] = err
        return events, errors

    def _read(self, position: int, limit: int, stop: int) -> Sequence[Any]:
        """Notifications after ``position`` up to ``stop`` (at most ``limit``)."""
        if isinstance(self.recorder, SQLiteApplicationRecorder):
            return _read_sqlite(self.recorder, position, limit, stop)
        return self.recorder.select_notifications(
            start=position, limit=limit, stop=stop, inclusive_of_start=False
        )

    def _decode(self, batch: Sequence[Any], group: Sequence[ReadModel]) -> list[Any]:
        """The batch's events, decoded once; ``None`` for topics no read model
        of ``group`` handles (``Projection.topics``; empty = all)."""
        sets = [_topic_set(p) for p in group]
        wanted = None if None in sets else set().union(*sets)  # type: ignore[arg-type]
        decode = self.mapper.to_domain_event
        sealed = getattr(self.mapper, "to_sealed_event", None)
        personal = [_personal_set(p) for p in group]
        if sealed is None or None in personal:
            prefetch = getattr(self.mapper, "prefetch_keys", None)
            if prefetch is not None:
                prefetch(batch)
            return [decode(n) if wanted is None or n.topic in wanted else None for n in batch]
        # Open envelopes only of the events some read model of the group reads
        # personal fields of; every read model gets the same event objects.
        opened = frozenset().union(*personal)  # type: ignore[arg-type]
        prefetch = getattr(self.mapper, "prefetch_keys", None)
        if prefetch is not None and opened:
            prefetch([n for n in batch if n.topic in opened])
        return [
            None
            if wanted is not None and n.topic not in wanted
            else decode(n)
            if n.topic in opened
            else sealed(n)
            for n in batch
        ]

    # ---- in-process background runner --------------------------------------

    def start(self, interval: float = 1.0) -> None:
        """Catch up every ``interval`` seconds in a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                self.catch_up()
                self._stop.wait(interval)

        self._thread = threading.Thread(target=loop, name="chatledger-projector", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def wait_for(self, position: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while any(self.position(n) < position for n in self.projections):
            if time.monotonic() > deadline:
                msg = f"projections did not reach position {position} within {timeout}s"
                raise TimeoutError(msg)
            time.sleep(0.05)


SWAP_ATTEMPTS = 60
SWAP_LOCK_TIMEOUT_MS = 2000
"""PostgreSQL: how long a swap waits for a table lock (readers in flight hold
one) before it rolls back and tries again, so new readers never queue behind
it for longer."""


def _is_lock_error(error: sa_exc.OperationalError) -> bool:
    """A lock not granted in time: PostgreSQL's ``lock_not_available``, SQLite's busy."""
    cause = error.orig
    if isinstance(cause, psycopg.Error):
        return cause.sqlstate in ("55P03", "40P01")
    return "locked" in str(cause)


_STOPPING_ERRORS: tuple[type[BaseException], ...] = (
    # The database or the process failed, not one event: stop and retry later.
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,  # no connection from the pool
    OSError,
    MemoryError,
    TrackingConflict,
    # An event written by a newer release: this process cannot read it, and a
    # read model must not skip it; stop until this process is upgraded.
    EventVersionError,
)
_DATA_ERRORS: tuple[type[BaseException], ...] = (
    # What a database says of the values it was given.
    sa_exc.DataError,
    sa_exc.IntegrityError,
    psycopg.DataError,
    psycopg.IntegrityError,
    sqlite3.DataError,
    sqlite3.IntegrityError,
)


def is_event_error(error: BaseException) -> bool:
    """Whether ``error`` is one an event causes when a read model applies it:
    data the database refuses (``DataError``, ``IntegrityError``: a NUL, a
    NaN in JSON, a value too long), a value the driver cannot send (a lone
    surrogate), or an exception of the read model's own code. Every other
    database error (a lost connection, a lock or statement timeout, a
    deadlock, a missing table, a corrupt file), any other SQLAlchemy error,
    ``OSError``, ``MemoryError`` and any ``BaseException`` is not: a catch-up
    stops on it, as before, and retries later."""
    if not isinstance(error, Exception) or isinstance(error, _STOPPING_ERRORS):
        return False
    if isinstance(error, _DATA_ERRORS):
        return True
    if isinstance(error, sa_exc.StatementError) and not isinstance(error, sa_exc.DBAPIError):
        # A value SQLAlchemy could not bind: judge what it raised.
        cause = error.orig
        return isinstance(cause, Exception) and is_event_error(cause)
    return not isinstance(error, (sa_exc.SQLAlchemyError, psycopg.Error, sqlite3.Error))


def error_summary(error: BaseException, limit: int = 500) -> str:
    """The message of ``error`` as a failure record keeps it: without the
    values the database or pydantic would quote (SQLAlchemy's statement and
    parameters, PostgreSQL's detail and context, pydantic's inputs, the
    character a codec could not take), at most ``limit`` characters, and
    storable (no NUL, no lone surrogate)."""
    cause = getattr(error, "orig", None)
    if isinstance(error, sa_exc.StatementError) and isinstance(cause, BaseException):
        return error_summary(cause, limit)
    if isinstance(error, psycopg.Error) and error.diag.message_primary:
        text = error.diag.message_primary
    elif isinstance(error, (UnicodeEncodeError, UnicodeDecodeError)):
        verb = "encode" if isinstance(error, UnicodeEncodeError) else "decode"
        text = f"{error.encoding!r} codec can't {verb} position {error.start}: {error.reason}"
    elif isinstance(error, ValidationError):
        parts = [
            f"{'.'.join(map(str, e['loc'])) or '(event)'}: {e['msg']}"
            for e in error.errors(include_input=False, include_url=False)
        ]
        text = f"{len(parts)} validation error(s): " + "; ".join(parts)
    else:
        text = str(error)
    return _clean(text, limit)


def _error_type(error: BaseException) -> str:
    cls = type(error)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _clean(text: str, limit: int) -> str:
    """``text`` storable in any database: lone surrogates and NULs escaped."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector during a bulk catch-up.

    Each batch allocates tens of thousands of containers (records, events,
    row dicts) that live until the batch is written, so they survive young
    collections and keep triggering full ones, which walk every object of the
    process: ~15 % of a rebuild. Reference counting still frees everything the
    projector drops (it makes no cycles); collection resumes, with one young
    pass, at the end."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect(1)


def _topic_set(projection: ReadModel) -> frozenset[str] | None:
    """The topics ``projection`` handles, or ``None`` for all of them."""
    topics = projection.topics
    return frozenset(topics) if topics else None


def _personal_set(projection: ReadModel) -> frozenset[str] | None:
    """Topics whose personal fields ``projection`` reads, or ``None`` for all."""
    # Only a class's own declaration counts: a subclass that adds handlers
    # (which may read personal fields) gets everything opened unless it
    # declares again what it reads.
    classes = type(projection).__dict__.get("personal_fields")
    return None if classes is None else frozenset(get_topic(c) for c in classes)


class _Record:
    """A notification as the projector reads it from SQLite.

    ``select_notifications`` turns every originator id into a ``UUID`` (about
    15 % of a rebuild's time); here that happens only if the mapper asks for
    ``originator_id`` (``PydanticMapper`` reads the id from the event's JSON).
    """

    __slots__ = ("_convert", "_originator_id", "id", "originator_version", "state", "topic")

    def __init__(
        self,
        convert: Callable[[str], UUID | str],
        id: int,
        originator_id: str,
        originator_version: int,
        topic: str,
        state: bytes,
    ) -> None:
        self._convert = convert
        self.id = id
        self._originator_id = originator_id
        self.originator_version = originator_version
        self.topic = topic
        self.state = state

    @property
    def originator_id(self) -> UUID | str:
        return self._convert(self._originator_id)

    @property
    def raw_originator_id(self) -> str:
        """The id as stored (hex); the shredding mapper builds its associated data from it."""
        return self._originator_id


def _read_sqlite(recorder: SQLiteApplicationRecorder, position: int, limit: int, stop: int) -> list[_Record]:
    statement = (
        f"SELECT rowid, originator_id, originator_version, topic, state FROM {recorder.events_table_name} "
        "WHERE rowid>? AND rowid<=? ORDER BY rowid LIMIT ?"
    )
    with recorder.datastore.transaction(commit=False) as c:
        c.execute(statement, (position, stop, limit))
        convert = recorder.convert_originator_id
        return [_Record(convert, *row) for row in c.fetchall()]


_COMPILED: dict[tuple[Any, str, tuple[str, ...]], tuple[str, list[tuple[str, Any]]]] = {}


_INSERTS: dict[Table, Any] = {}


def executemany(
    conn: Connection, statement: Any, rows: Sequence[Any], keys: Sequence[str] | None = None
) -> None:
    """``conn.execute(statement, rows)``, minus SQLAlchemy's per-row work on SQLite.

    The statement is compiled once (per dialect and parameter names) and each
    row becomes a tuple through the columns' own bind processors, so the
    values stored are exactly what ``conn.execute`` stores; ``sqlite3`` gets
    one ``executemany``. Rows are dicts with the keys of the first, or, with
    ``keys``, sequences of values in that order (cheaper for a handler to
    build). Other dialects go through ``conn.execute`` (PostgreSQL batches the
    rows itself).
    """
    if not rows:
        return
    dialect = conn.dialect
    if dialect.name != "sqlite":
        if keys is not None:
            rows = [dict(zip(keys, row)) for row in rows]
        conn.execute(statement, list(rows))
        return
    names = tuple(keys) if keys is not None else tuple(rows[0])
    cache_key = (statement, dialect.name, names)
    entry = _COMPILED.get(cache_key)
    if entry is None:
        compiled = statement.compile(dialect=dialect, column_keys=list(names))
        params = []
        for name in compiled.positiontup or ():
            bind_type = compiled.binds[name].type
            params.append((name, bind_type.dialect_impl(dialect).bind_processor(dialect)))
        entry = _COMPILED[cache_key] = (compiled.string, params)
    sql, params = entry
    if keys is not None:
        index = {name: i for i, name in enumerate(names)}
        at = [(index[name], proc) for name, proc in params]
        data = [tuple([row[i] if proc is None else proc(row[i]) for i, proc in at]) for row in rows]
        conn.exec_driver_sql(sql, data)
        return
    plain = [name for name, proc in params if proc is None]
    if len(plain) == len(params):
        data = [tuple([row[name] for name in plain]) for row in rows]
    else:
        data = [
            tuple([row[name] if proc is None else proc(row[name]) for name, proc in params])
            for row in rows
        ]
    conn.exec_driver_sql(sql, data)


def insert_rows(
    conn: Connection, table: Table, rows: Sequence[Any], keys: Sequence[str] | None = None
) -> None:
    """Insert ``rows`` (dicts with the keys of the first, or sequences of
    values in the order of ``keys``) into ``table``.

    PostgreSQL: one ``COPY ... FROM STDIN`` (psycopg would otherwise send one
    pipelined INSERT per row); values go through the columns' bind processors
    as with ``conn.execute``. SQLite: :func:`executemany`.
    """
    if not rows:
        return
    dialect = conn.dialect
    if dialect.name != "postgresql" or dialect.driver != "psycopg":
        # One INSERT object per table: the compiled-statement cache is keyed by it.
        insert = _INSERTS.get(table)
        if insert is None:
            insert = _INSERTS[table] = table.insert()
        executemany(conn, insert, rows, keys)
        return
    from psycopg import sql

    names = list(keys) if keys is not None else list(rows[0])
    procs = [table.c[k].type.dialect_impl(dialect).bind_processor(dialect) for k in names]
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, names))
    )
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(statement) as copy:
            if keys is not None:
                for row in rows:
                    copy.write_row([v if p is None else p(v) for v, p in zip(row, procs)])
            else:
                for row in rows:
                    copy.write_row([row[k] if p is None else p(row[k]) for k, p in zip(names, procs)])
    finally:
        cursor.close()


class RowBuffer:
    """A per-batch write-back cache of one table keyed by a single column.

    Handlers read rows with :meth:`get` (loaded from the database once per
    batch), mutate the returned dicts and call :meth:`changed`; new rows go in
    with :meth:`add`. :meth:`flush` writes everything with one ``executemany``
    per statement kind (delete, update, insert), inside the batch transaction.
    """

    def __init__(self, table: Table, key: str) -> None:
        self.table = table
        self.key = key
        self._rows: dict[Any, dict[str, Any] | None] = {}
        self._in_db: set[Any] = set()
        self._dirty: set[Any] = set()
        self._columns = [c.name for c in table.columns if c.name != key]
        self._update = (
            table.update()
            .where(table.c[key] == bindparam("k_"))
            .values({c: bindparam("v_" + c) for c in self._columns})
        )
        self._delete = table.delete().where(table.c[key] == bindparam("k_"))

    def get(self, conn: Connection, key: Any) -> dict[str, Any] | None:
        if key in self._rows:
            return self._rows[key]
        row = conn.execute(select(self.table).where(self.table.c[self.key] == key)).mappings().first()
        value = dict(row) if row is not None else None
        if value is not None:
            self._in_db.add(key)
        self._rows[key] = value
        return value

    def load(self, conn: Connection, keys: Sequence[Any]) -> None:
        """Prefetch many rows in one query (keys already cached are skipped)."""
        missing = [k for k in dict.fromkeys(keys) if k not in self._rows]
        for start in range(0, len(missing), 500):
            chunk = missing[start : start + 500]
            found = {
                r[self.key]: dict(r)
                for r in conn.execute(
                    select(self.table).where(self.table.c[self.key].in_(chunk))
                ).mappings()
            }
            for k in chunk:
                self._rows[k] = found.get(k)
                if k in found:
                    self._in_db.add(k)

    def cached(self, key: Any) -> dict[str, Any] | None:
        """The row if this batch already has it (no database read)."""
        return self._rows.get(key)

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        key = row[self.key]
        self._rows[key] = row
        self._dirty.add(key)
        return row

    def changed(self, key: Any) -> None:
        self._dirty.add(key)

    def delete(self, key: Any) -> None:
        self._rows[key] = None
        self._dirty.add(key)

    def rows(self) -> Iterator[dict[str, Any]]:
        return (r for r in self._rows.values() if r is not None)

    def flush(self, conn: Connection) -> None:
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        deletes: list[dict[str, Any]] = []
        for key in self._dirty:
            row = self._rows[key]
            if row is None:
                if key in self._in_db:
                    deletes.append({"k_": key})
                    self._in_db.discard(key)
            elif key in self._in_db:
                values = {"v_" + c: row[c] for c in self._columns}
                values["k_"] = key
                updates.append(values)
            else:
                inserts.append(row)
                self._in_db.add(key)
        self._dirty.clear()
        executemany(conn, self._delete, deletes)
        executemany(conn, self._update, updates)
        insert_rows(conn, self.table, inserts)

    def clear(self) -> None:
        self._rows.clear()
        self._in_db.clear()
        self._dirty.clear()


def batch_ids(events: Sequence[Any], started: type, registered: type) -> tuple[list[str], list[str]]:
    """Session and visitor aggregate ids a batch touches but did not create
    (each once: a batch has several events per aggregate)."""
    new = {e.originator_id for e in events if isinstance(e, (started, registered))}
    sessions: dict[Any, None] = {}
    visitors: dict[Any, None] = {}
    kinds: dict[type, dict[Any, None]] = {}
    for e in events:
        oid = e.originator_id
        if oid in new:
            continue
        cls = type(e)
        ids = kinds.get(cls)
        if ids is None:
            ids = kinds[cls] = visitors if cls.__qualname__.startswith("Visitor.") else sessions
        ids[oid] = None
    return [str(oid) for oid in sessions], [str(oid) for oid in visitors]
