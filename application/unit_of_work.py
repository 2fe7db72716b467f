"""The unit of work every use case shares: load aggregates, save them atomically.

:class:`UnitOfWork` is the eventsourcing ``Application`` (store, mapper,
repository, snapshots) plus what a command needs around it: the ledger clock
(:meth:`~UnitOfWork.now`), aggregate loading (:meth:`~UnitOfWork.get_session`,
:meth:`~UnitOfWork.get_visitor`), one atomic :meth:`~UnitOfWork.save` per
command, and the optimistic-concurrency loop (:meth:`~UnitOfWork.retrying`).
Every command that touches several aggregates saves them in one ``save(...)``
call; a command that lost a race is re-run on fresh state (commands re-check
everything) or, after ``conflict_retries`` attempts, fails with
:class:`ConcurrencyConflictError`.

The use-case modules (:mod:`.receive`, :mod:`.session_commands`, :mod:`.reads`,
:mod:`.audit`, :mod:`.erasure`, :mod:`.sweeper`, :mod:`.retention`,
:mod:`.subscribers`) take a ``UnitOfWork``; :class:`~chatledger.ChatLedger`
is one, with the public commands and queries on top.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from copy import deepcopy
from datetime import datetime
from functools import cached_property
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, project_aggregate
from eventsourcing.persistence import DataError, PersistenceError, RecordConflictError

from ..domain import validation as v
from ..domain.errors import (
    ConcurrencyConflictError,
    UnknownSessionError,
    ValueRefusedError,
)
from ..domain.model import Aggregate, utc
from ..domain.policy import SessionPolicy
from ..domain.session import Session
from ..domain.visitor import Visitor, visitor_aggregate_id
from ..infrastructure.envelopes import ErasedSnapshotError
from ..infrastructure.settings import Settings
from ..infrastructure.snapshots import SnapshotStore
from ..projections.read_model import ReadModel
from ..projections.runner import ProjectionRunner
from ..projections.projection_reads import ProjectionReads
from . import bootstrap
from .clock import Clock

T = TypeVar("T")


def replay_events(aggregate: Any, events: Any) -> Any:
    """``eventsourcing.application.project_aggregate`` without its per-event
    ``assert isinstance(event, CanMutateProtocol)``: a runtime-checkable
    Protocol check costs tens of microseconds on Python 3.11, a third of the
    time of replaying a long session without a snapshot. Every event the
    mapper returns is a chatledger ``DomainEvent`` with ``mutate``.
    """
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


def as_uuid(value: UUID | str) -> UUID:
    """A session id as a UUID; one that does not parse names no session."""
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError as err:
        raise UnknownSessionError(value) from err


class UnitOfWork(Application[UUID]):
    """The event store of one ledger and the loading, saving and retrying of
    its aggregates (see the module docstring)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        policy: SessionPolicy | None = None,
        clock: Clock | None = None,
        read_models: Sequence[type[ReadModel]] | None = None,
    ) -> None:
        settings, policy, clock, models = bootstrap.components(settings, policy, clock, read_models)
        self.settings = settings
        self.limits: v.Limits = settings.limits
        self.read_models = models
        self.policy = policy
        self.clock: Clock = clock
        self.snapshotting_intervals = {  # type: ignore[misc]
            Session: settings.snapshot_interval,
            Visitor: settings.snapshot_interval,
        }
        self._saving = threading.local()  # the aggregates this thread is saving
        try:
            env = bootstrap.store_env(settings)
            with bootstrap.store_lock(settings):
                super().__init__(env=env)
        except (OSError, PersistenceError, sqlite3.Error) as err:
            if settings.backend != "sqlite":
                raise
            raise bootstrap.unopenable_sqlite_store(settings, err) from err
        bootstrap.install_key_ring(self.mapper, self.recorder)
        bootstrap.configure_sealer(self.recorder, settings)

    @cached_property
    def projector(self) -> ProjectionRunner:
        """The read models of this ledger (tables in the same database), kept
        current by ``ledger.projector.catch_up()`` or a background runner."""
        return bootstrap.build_projector(
            self.name, self.recorder, self.mapper, self.settings, self.read_models
        )

    @cached_property
    def projection_reads(self) -> ProjectionReads:
        """The queries answered by the read models (transcripts, analytics, memory)."""
        return ProjectionReads(self.projector, self.clock)

    def close(self) -> None:
        if "projector" in self.__dict__:
            self.projector.stop()
            self.projector.engine.dispose()
        super().close()

    # ------------------------------------------------------------------ loading

    def now(self, at: datetime | None) -> datetime:
        """``at`` in UTC, or the ledger clock's time."""
        return utc(at) if at is not None else utc(self.clock())

    def retrying(self, what: str, command: Callable[[], T]) -> T:
        """Run ``command`` until it is not beaten by a concurrent writer."""
        attempts = self.settings.conflict_retries
        for attempt in range(attempts):
            try:
                return command()
            except RecordConflictError:
                time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))  # full jitter
        raise ConcurrencyConflictError(what, attempts)

    def get_session(self, session_id: UUID | str) -> Session:
        """The session, current (:class:`UnknownSessionError` if there is none)."""
        sid = as_uuid(session_id)
        try:
            try:
                session = self.repository.get(sid, projector_func=replay_events)
            except ErasedSnapshotError:
                # Left by an erasure that stopped before deleting its snapshots (or
                # read just before it did): derived data; drop it and replay the log.
                table = getattr(getattr(self.snapshots, "recorder", None), "events_table_name", None)
                if not table:
                    raise
                self.recorder.delete_snapshots(table, [sid])  # type: ignore[attr-defined]
                session = self.repository.get(sid, projector_func=replay_events)
        except AggregateNotFoundError as err:
            raise UnknownSessionError(session_id) from err
        if not isinstance(session, Session):
            raise UnknownSessionError(session_id)
        return session

    def get_visitor(self, visitor_id: str) -> Visitor | None:
        """The visitor, current, or None if never seen."""
        try:
            visitor = self.repository.get(
                visitor_aggregate_id(visitor_id), projector_func=replay_events
            )
        except AggregateNotFoundError:
            return None
        assert isinstance(visitor, Visitor)
        return visitor

    def open_session(
        self, session_id: UUID | str, at: datetime | None
    ) -> tuple[Session, datetime]:
        """Load a session for a command; a clock time never runs behind its log."""
        session = self.get_session(session_id)
        now = self.now(at)
        if at is None and session.status == "active":
            now = max(now, session.latest_event_at)
        return session, now

    # ------------------------------------------------------------------ saving

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        """Record the pending events of ``objs`` in one transaction (the
        library's ``save``), then keep the cache and the snapshots cheap:

        - a snapshot due at the version an aggregate was just saved at is taken
          from that aggregate (see :meth:`take_snapshot`), not rebuilt from the
          store;
        - a copy of each saved aggregate goes into the aggregate cache, so the
          next command does not re-read and re-validate the events it has just
          written. The cache is still fast-forwarded from the store on every
          read, so a copy that another writer has overtaken is caught up as
          before, and only committed state is ever cached.
        """
        aggregates = {obj.id: obj for obj in objs if isinstance(obj, Aggregate)}
        self._saving.aggregates = aggregates
        try:
            recordings = super().save(*objs, **kwargs)
        except DataError as err:  # validation let through what the database refuses
            raise ValueRefusedError(str(err)) from err
        finally:
            self._saving.aggregates = None
        repository = self.repository
        if repository.cache is not None and repository.fastforward:
            for aggregate_id, aggregate in aggregates.items():
                repository.cache.put(aggregate_id, deepcopy(aggregate))
        return recordings

    def construct_snapshot_store(self) -> SnapshotStore:
        """Snapshots at another version than their class's are passed over
        (see :class:`~chatledger.infrastructure.snapshots.SnapshotStore`)."""
        return bootstrap.build_snapshot_store(self.mapper, self.factory)

    def take_snapshot(
        self,
        aggregate_id: UUID,
        version: int | None = None,
        projector_func: Any = project_aggregate,
    ) -> None:
        """Snapshot an aggregate at ``version``.

        While :meth:`save` runs, the aggregate being saved is at exactly that
        version, with every event applied and recorded: its snapshot is taken
        from it directly. The library would rebuild the same state from the
        previous snapshot and the events since (a read and a validation of up
        to ``snapshot_interval`` events inside every hundredth command).
        """
        saving = getattr(self._saving, "aggregates", None)
        aggregate = saving.get(aggregate_id) if saving else None
        snapshot_class = getattr(type(aggregate), "Snapshot", None)
        if (
            aggregate is not None
            and snapshot_class is not None
            and version is not None
            and aggregate.version == version
            and not aggregate.pending_events
            and projector_func is project_aggregate
            and self.snapshots is not None
        ):
            self.snapshots.put([snapshot_class.take(aggregate)])
            return
        super().take_snapshot(aggregate_id, version, projector_func)


__all__ = ["UnitOfWork", "as_uuid", "replay_events"]
