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
from sqlalchemy import Column, Connection, Engine, Integer, MetaData, String, Table, select
from sqlalchemy.dialects import postgresql, sqlite

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

    def flush(self) -> None:
        """Write buffered rows; called inside the batch's transaction."""


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
        while position < head:
            notifications = self.recorder.select_notifications(
                start=position, limit=batch_size, stop=head, inclusive_of_start=False
            )
            if not notifications:
                break
            with view.transaction():
                for notification in notifications:
                    event = self.mapper.to_domain_event(notification)
                    projection.process_event(
                        event, Tracking(self.application_name, notification.id)
                    )
                projection.flush()
                position = notifications[-1].id
                view.insert_tracking(Tracking(self.application_name, position))
            if progress is not None:
                progress(position - start_position, head - start_position)
        return position - start_position

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
