"""The projection runner: keeps read models up to date with an application's
notification log.

It pulls the log (``select_notifications``, or on SQLite the events table
itself: ``log_reader.py``) in batches, applies each batch inside one
transaction, and records the position of the last event of the batch with it
(``catch_up.py``). So a projection resumes exactly where it stopped after a
crash, applies no event twice, and works the same on SQLite and PostgreSQL
(no LISTEN/NOTIFY needed). eventsourcing calls this a ``ProjectionRunner``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from eventsourcing.persistence import ApplicationRecorder, Mapper
from sqlalchemy import Engine

from ..domain.validation import check_count
from .catch_up import CatchUp
from .failures import ProjectionFailure, failure_counts, read_failures
from .read_model import ReadModel
from .shadow import ShadowRebuilds
from .status import Progress, ProjectionStatus
from .view import SQLView


class ProjectionRunner:
    """Keeps read models up to date with an application's notification log.

    An event a read model cannot apply does not stop it: the batch is
    applied again in parts inside savepoints (:meth:`CatchUp.apply`), the
    event is recorded as failed (``chatledger_projection_failures``) and
    skipped by that read model only; the others, and the later events, go on.
    Errors of the database or the process (a lost connection, a lock
    timeout: :func:`~chatledger.projections.failures.is_event_error`) still
    stop the catch-up, to be retried.
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
        self._catch_up = CatchUp(application_name, recorder, mapper)
        self._shadows = ShadowRebuilds(
            engine,
            application_name,
            self.projections,
            self._catch_up,
            ddl_lock=self.ddl_lock,
            live_lock=self._lock,
        )
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
        failed = failure_counts(self.engine, self.application_name)
        return [
            ProjectionStatus(n, self.position(n), head, failed.get(n, 0)) for n in self.projections
        ]

    def failures(self, name: str | None = None) -> list[ProjectionFailure]:
        """The events read models could not apply (of read model ``name``, or
        of all), in log order."""
        return read_failures(self.engine, self.application_name, list(self.projections), name)

    def read(self, position: int, limit: int, stop: int) -> Sequence[Any]:
        """Notifications after ``position`` up to ``stop`` (at most ``limit``),
        as a catch-up reads them (to be decoded by the application's mapper)."""
        return self._catch_up.read(position, limit, stop)

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
            projections = [self.projections[n] for n in names or list(self.projections)]
            return self._catch_up.run(projections, batch_size, progress)

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
                self._shadows.drop_stale(projection, keep=self._shadows.generation_of(projection.name))
                projection.view.reset()
                projection.view.drop_indexes(projection.deferred_indexes)
            try:
                return self._catch_up.run(projections, batch_size, progress)
            finally:
                # Also after a failure; a process killed here gets them back
                # when its next SQLView starts (``create_indexes``).
                for projection in projections:
                    projection.view.create_indexes()

    def rebuild_shadow(
        self,
        names: Sequence[str] | None = None,
        *,
        batch_size: int = 2000,
        progress: Progress | None = None,
    ) -> int:
        """Rebuild read models (default: all) without downtime; return the
        events applied to the shadows (summed over the read models).
        See :meth:`ShadowRebuilds.rebuild`."""
        return self._shadows.rebuild(names, batch_size=batch_size, progress=progress)

    def cancel_shadows(self) -> list[str]:
        """Abandon unfinished shadow rebuilds and drop every non-live table
        generation (an erasure calls this). See :meth:`ShadowRebuilds.cancel_all`."""
        return self._shadows.cancel_all()

    def shadow_status(self) -> list[ProjectionStatus]:
        """Each shadow rebuild under way (or left by a crash, to be continued):
        named ``<read model>__shadow``, with its position."""
        return self._shadows.status()

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

