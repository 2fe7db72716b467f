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

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import singledispatchmethod
from typing import Any, ClassVar

from eventsourcing.persistence import ApplicationRecorder, Mapper, Tracking, TrackingRecorder
from eventsourcing.projection import Projection
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

TRACKING = MetaData()
tracking_table = Table(
    "chatledger_projection_tracking",
    TRACKING,
    Column("projection", String(100), primary_key=True),
    Column("application", String(100), primary_key=True),
    Column("notification_id", Integer, nullable=False),
)

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called after each batch by long jobs."""


class TrackingConflict(Exception):
    """Another runner advanced this projection first; the batch was rolled back."""

    def __init__(self, name: str) -> None:
        super().__init__(f"projection {name!r} was advanced by another runner")
        self.name = name


class SQLView(TrackingRecorder):
    """SQLAlchemy tables of one projection, with its tracking record.

    Writes happen inside :meth:`transaction`; ``insert_tracking`` joins the
    same transaction, so data and position commit (or roll back) together.
    """

    def __init__(self, engine: Engine, name: str, metadata: MetaData) -> None:
        self.engine = engine
        self.name = name
        self.metadata = metadata
        self._local = threading.local()
        TRACKING.create_all(engine)
        metadata.create_all(engine)

    @property
    def conn(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            msg = "SQLView writes must happen inside view.transaction()"
            raise RuntimeError(msg)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                # A 64 MiB page cache: rebuilds insert into large random-key indexes.
                conn.exec_driver_sql("PRAGMA cache_size=-65536")
                # Take the write lock up front: a second runner waits here, then
                # sees the first one's position (instead of failing mid-batch).
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            self._local.conn = conn
            try:
                yield conn
            finally:
                self._local.conn = None

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

    def max_tracking_id(self, application_name: str) -> int | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(tracking_table.c.notification_id).where(
                    tracking_table.c.projection == self.name,
                    tracking_table.c.application == application_name,
                )
            ).scalar()

    def reset(self) -> None:
        """Drop the read model's tables and its position: the next catch-up rebuilds."""
        with self.engine.begin() as conn:
            self.metadata.drop_all(conn)
            conn.execute(tracking_table.delete().where(tracking_table.c.projection == self.name))
        self.metadata.create_all(self.engine)


class ReadModel(Projection[SQLView]):
    """Base of chatledger's projections.

    Subclasses set ``name`` and ``metadata`` (their SQLAlchemy tables) and
    register handlers on :meth:`process_event` with ``@process_event.register``.
    Handlers write through ``self.view.conn`` and may buffer rows, flushing them
    in :meth:`flush`, which the projector calls once per batch, before the
    tracking record.
    """

    metadata: ClassVar[MetaData]

    @singledispatchmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """Events a read model does not handle are skipped (but still tracked)."""

    def prepare(self, events: Sequence[Any]) -> None:
        """Called with a batch's events before they are processed, inside its
        transaction: prefetch the rows the batch needs in a few queries."""

    def flush(self) -> None:
        """Write buffered rows; called inside the batch's transaction."""

    def discard(self) -> None:
        """Forget per-batch state (caches, buffered rows). The projector calls it
        before every batch and after a batch failed, so a handler never sees
        state from a rolled-back transaction."""


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    position: int
    head: int

    @property
    def lag(self) -> int:
        return max(self.head - self.position, 0)


class Projector:
    """Keeps read models up to date with an application's notification log."""

    def __init__(
        self,
        application_name: str,
        recorder: ApplicationRecorder,
        mapper: Mapper[Any],
        engine: Engine,
        projections: Sequence[type[ReadModel]],
    ) -> None:
        self.application_name = application_name
        self.recorder = recorder
        self.mapper = mapper
        self.engine = engine
        self.projections: dict[str, ReadModel] = {
            cls.name: cls(SQLView(engine, cls.name, cls.metadata)) for cls in projections
        }
        self._lock = threading.Lock()
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
        return [ProjectionStatus(n, self.position(n), head) for n in self.projections]

    def catch_up(
        self,
        names: Sequence[str] | None = None,
        *,
        batch_size: int = 2000,
        progress: Progress | None = None,
    ) -> int:
        """Apply every event not yet applied; return how many were applied."""
        applied = 0
        with self._lock:
            for name in names or list(self.projections):
                applied += self._catch_up_one(self.projections[name], batch_size, progress)
        return applied

    def _catch_up_one(self, projection: ReadModel, batch_size: int, progress: Progress | None) -> int:
        view = projection.view
        position = view.max_tracking_id(self.application_name) or 0
        head = self.head()
        start_position = position
        applied = 0
        while position < head:
            notifications = self.recorder.select_notifications(
                start=position, limit=batch_size, stop=head, inclusive_of_start=False
            )
            if not notifications:
                break
            projection.discard()
            try:
                with view.transaction():
                    # Claim the batch first: a racing runner blocks here, then fails
                    # the compare-and-set and skips to the winner's position.
                    view.advance_tracking(
                        self.application_name, position, notifications[-1].id
                    )
                    # Events of topics the read model does not handle are read and
                    # tracked, but not decoded (``Projection.topics``; empty = all).
                    wanted = projection.topics
                    handled = [n for n in notifications if not wanted or n.topic in wanted]
                    events = [self.mapper.to_domain_event(n) for n in handled]
                    projection.prepare(events)
                    for notification, event in zip(handled, events):
                        projection.process_event(
                            event, Tracking(self.application_name, notification.id)
                        )
                    projection.flush()
            except TrackingConflict:
                # Another runner applied these events; continue from its position.
                projection.discard()
                position = view.max_tracking_id(self.application_name) or 0
                continue
            except BaseException:
                projection.discard()
                raise
            projection.discard()
            applied += len(notifications)
            position = notifications[-1].id
            if progress is not None:
                progress(position - start_position, head - start_position)
        return applied

    def rebuild(self, name: str, *, batch_size: int = 2000, progress: Progress | None = None) -> int:
        """Drop one read model and replay it from the first event."""
        with self._lock:
            projection = self.projections[name]
            projection.view.reset()
            return self._catch_up_one(projection, batch_size, progress)

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
        if deletes:
            conn.execute(self._delete, deletes)
        if updates:
            conn.execute(self._update, updates)
        if inserts:
            conn.execute(self.table.insert(), inserts)

    def clear(self) -> None:
        self._rows.clear()
        self._in_db.clear()
        self._dirty.clear()


def batch_ids(events: Sequence[Any], started: type, registered: type) -> tuple[list[str], list[str]]:
    """Session and visitor aggregate ids a batch touches but did not create."""
    new = {e.originator_id for e in events if isinstance(e, (started, registered))}
    sessions: list[str] = []
    visitors: list[str] = []
    for e in events:
        oid = e.originator_id
        if oid in new:
            continue
        (visitors if type(e).__qualname__.startswith("Visitor.") else sessions).append(str(oid))
    return sessions, visitors
