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

import sqlite3
import threading
from collections.abc import Callable, Sequence
from copy import deepcopy
from datetime import datetime
from functools import cached_property
from typing import Any, Self, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, project_aggregate
from eventsourcing.persistence import DataError, PersistenceError

from ..domain import actors
from ..domain import validation as v
from ..domain.errors import (
    InvalidCommandError,
    UnknownSessionError,
    ValueRefusedError,
)
from ..domain.policy import SessionPolicy
from ..domain.pydantic_aggregates import Aggregate, utc
from ..domain.session import Session
from ..domain.tenancy import DEFAULT_TENANT, check_tenant
from ..domain.visitor import Visitor, visitor_aggregate_id
from ..infrastructure.envelopes import ErasedSnapshotError
from ..infrastructure.scheduler import BackgroundJobs
from ..infrastructure.settings import Settings
from ..infrastructure.snapshots import SnapshotStore
from ..projections.projection_reads import ProjectionReads
from ..projections.read_model import ReadModel
from ..projections.runner import ProjectionRunner
from . import bootstrap
from .api_keys import ApiKeys
from .attempts import CommandAttempts, FreshReadNeeded
from .clock import Clock
from .commit_queue import GroupCommitEventStore
from .counters import LedgerCounters
from .read_your_writes import ReadYourWrites
from .repository import LedgerRepository
from .tenancy import tenant_handle

T = TypeVar("T")
U = TypeVar("U", bound="UnitOfWork")


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


class UnitOfWork(ReadYourWrites, Application[UUID]):
    """The event store of one ledger and the loading, saving and retrying of
    its aggregates (see the module docstring)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        policy: SessionPolicy | None = None,
        clock: Clock | None = None,
        read_models: Sequence[type[ReadModel]] | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        settings, policy, clock, models = bootstrap.components(settings, policy, clock, read_models)
        self.tenant_id = check_tenant(tenant)
        self._root: UnitOfWork = self  # the ledger that owns the store (a tenant handle shares it; not public)
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
        self._written = threading.local()  # .position: the last event this thread's last save wrote
        self.counters = LedgerCounters()
        """What this ledger did in this process (commits, events, conflicts, retries, sweeps)."""
        self.attempts = CommandAttempts(settings.conflict_retries, self.counters)
        try:
            env = bootstrap.store_env(settings)
            with bootstrap.store_lock(settings):
                super().__init__(env=env)
        except (OSError, PersistenceError, sqlite3.Error) as err:
            if settings.backend != "sqlite":
                raise
            raise bootstrap.unopenable_sqlite_store(settings, err) from err
        bootstrap.install_key_provider(self.recorder, settings)
        bootstrap.install_key_ring(self.mapper, self.recorder)
        bootstrap.configure_sealer(self.recorder, settings)
        bootstrap.configure_actor(self.mapper, settings)

    @cached_property
    def projector(self) -> ProjectionRunner:
        """The read models of this ledger (tables in the same database), kept
        current by ``ledger.projector.catch_up()`` or a background runner."""
        return bootstrap.build_projector(
            self.name, self.recorder, self.mapper, self.settings, self.read_models
        )

    @property
    def api_keys(self) -> ApiKeys:
        """The HTTP service's API keys, stored hashed in this ledger's database (store-wide:
        keys of every tenant): the operator's; a named tenant's handle refuses it."""
        self.refuse_on_tenant_handle("api_keys")
        return self._api_keys

    @cached_property
    def _api_keys(self) -> ApiKeys:
        return ApiKeys(self.projector.engine, self.clock)

    @cached_property
    def projection_reads(self) -> ProjectionReads:
        """The queries answered by the read models (transcripts, analytics, memory)."""
        return ProjectionReads(self.projector, self.clock, self.tenant_id)

    background: BackgroundJobs | None = None
    """The ledger's background jobs while they run (``ledger.start_background_jobs()``)."""

    def close(self) -> None:
        if self.closing.is_set():
            return
        bootstrap.stop_jobs(self)
        if self._root is not self:
            return  # a tenant handle: the store is its root ledger's
        if "projector" in self.__dict__:
            self.projector.stop()
            self.projector.engine.dispose()
        super().close()
        bootstrap.close_key_provider(self.recorder)

    # ------------------------------------------------------------------ loading

    acting_as = staticmethod(actors.acting_as)
    """``with ledger.acting_as("operator:alice", request_id=None):`` every event appended
    in the block (by any ledger, in this thread or task) records that actor (docs/events.md)."""

    def now(self, at: datetime | None) -> datetime:
        """``at`` in UTC, or the ledger clock's time."""
        return utc(at) if at is not None else utc(self.clock())

    def retrying(self, what: str, command: Callable[[], T]) -> T:
        """Run ``command`` until no concurrent writer beats it (:meth:`CommandAttempts.run`)."""
        return self.attempts.run(what, command)

    def fresh_read(self, cached: bool) -> bool:
        """Whether a read must see the store (:meth:`CommandAttempts.fresh_read`)."""
        return self.attempts.fresh_read(cached)

    def answer_from_store(self) -> None:
        """Re-run on fresh reads if on a cached first run (:meth:`CommandAttempts.answer_from_store`)."""
        self.attempts.answer_from_store()

    def load(self, aggregate_id: UUID, fresh: bool) -> Any:
        """An aggregate from the repository (``fresh``: caught up with the store)."""
        repository = self.repository
        assert isinstance(repository, LedgerRepository)
        return repository.get(aggregate_id, projector_func=replay_events, fresh=fresh)

    def get_session(
        self, session_id: UUID | str, *, cached: bool = False, any_tenant: bool = False
    ) -> Session:
        """The session of this ledger's tenant, current (:class:`UnknownSessionError`
        if there is none; another tenant's is none).

        ``cached=True``: on a command's first attempt, the cached copy without
        a read of the store (it may be stale; the command's save conflicts then).
        ``any_tenant``: of whichever tenant (the store-wide retention job)."""
        sid = as_uuid(session_id)
        fresh = self.fresh_read(cached)
        try:
            try:
                session = self.load(sid, fresh)
            except ErasedSnapshotError:
                # Left by an erasure that stopped before deleting its snapshots (or
                # read just before it did): derived data; drop it and replay the log.
                table = getattr(getattr(self.snapshots, "recorder", None), "events_table_name", None)
                if not table:
                    raise
                self.recorder.delete_snapshots(table, [sid])  # type: ignore[attr-defined]
                session = self.load(sid, fresh)
        except AggregateNotFoundError as err:
            raise UnknownSessionError(session_id) from err
        if not isinstance(session, Session) or (session.tenant != self.tenant_id and not any_tenant):
            raise UnknownSessionError(session_id)  # another tenant's: as if there were none
        return session

    def kept_session(self, session_id: UUID, *, cached: bool = False) -> Session | None:
        """A session a visitor names, or None if log retention removed its events."""
        try:
            return self.get_session(session_id, cached=cached)
        except UnknownSessionError:
            return None

    def scope(self, all_tenants: bool, what: str = "all_tenants=True") -> str | None:
        """The tenant a store-wide-capable call works on: this one's, or None (every
        tenant): the operator's, the default tenant's ledger only; a named tenant's
        handle refuses it (:class:`InvalidCommandError`), reading nothing."""
        if all_tenants and self.tenant_id != DEFAULT_TENANT:
            raise InvalidCommandError(
                f"{what} reads every tenant of the store: only the default tenant's ledger "
                f"(the operator's) may; this one is tenant {self.tenant_id!r}'s."
            )
        return None if all_tenants else self.tenant_id

    def tenant(self, tenant: str, *, policy: SessionPolicy | None = None, limits: v.Limits | None = None) -> Self:
        """This ledger for ``tenant`` (``tenant_id``): the same store; its own data, policy and
        limits (see :mod:`~chatledger.application.tenancy`). A named tenant's handle gives
        only itself (its own tenant, no new policy or limits): it never leads to another
        tenant (:class:`InvalidCommandError`)."""
        if policy is None and limits is None and tenant == self.tenant_id:
            return self
        self.refuse_on_tenant_handle("tenant()")
        return tenant_handle(self, tenant, policy, limits)

    def refuse_on_tenant_handle(self, what: str) -> None:
        """:class:`InvalidCommandError` on a named tenant's handle (``ledger.tenant(id)``)
        for what is the operator's: another tenant's handle, the policy and limits of
        tenants, the store's API keys. (A ledger opened with ``tenant=`` owns the store:
        its opener holds the database URL.)"""
        if self._root is not self and self.tenant_id != DEFAULT_TENANT:
            raise InvalidCommandError(
                f"{what} is the operator's (the ledger that opened the store); this is "
                f"tenant {self.tenant_id!r}'s handle."
            )

    def get_visitor(self, visitor_id: str, *, cached: bool = False) -> Visitor | None:
        """The visitor, current, or None if never seen (``cached``: as for
        :meth:`get_session`)."""
        try:
            visitor = self.load(visitor_aggregate_id(visitor_id, self.tenant_id), self.fresh_read(cached))
        except AggregateNotFoundError:
            return None
        assert isinstance(visitor, Visitor)
        if visitor.tenant != self.tenant_id:  # pragma: no cover -- the tenants' namespaces differ
            raise InvalidCommandError(
                f"visitor id {visitor_id!r:.80} cannot be used in tenant {self.tenant_id!r}: another "
                "tenant's visitor has its aggregate id; nothing was written. Use another id."
            )
        return visitor

    def open_session(
        self, session_id: UUID | str, at: datetime | None
    ) -> tuple[Session, datetime]:
        """Load a session for a command that writes it (cached on the first
        attempt); a clock time never runs behind its log."""
        session = self.get_session(session_id, cached=True)
        now = self.now(at)
        if at is None and session.status == "active":
            now = max(now, session.latest_event_at)
        return session, now

    # ------------------------------------------------------------------ saving

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        """Record the pending events of ``objs`` in one transaction (through the group commit of
        :attr:`events`); a snapshot due is taken from the saved aggregate (:meth:`take_snapshot`), and
        a copy of each saved aggregate goes into the cache (committed state only, never over a newer
        version). On a command's first attempt (maybe decided on cached copies) a save with nothing
        to write raises a conflict, so the command is re-run on fresh reads."""
        return self._save(objs, kwargs, copy_to_cache=True)

    def save_and_hand_over(self, *objs: Any) -> Any:
        """:meth:`save` for a command done with ``objs`` (it only reads them afterwards, to answer):
        they go into the cache as they are, not copied (every read of the cache copies)."""
        return self._save(objs, {}, copy_to_cache=False)

    def _save(self, objs: tuple[Any, ...], kwargs: dict[str, Any], *, copy_to_cache: bool) -> Any:
        aggregates = {obj.id: obj for obj in objs if isinstance(obj, Aggregate)}
        items = [obj for obj in objs if obj is not None]
        if (
            self.attempts.first
            and len(aggregates) == len(items)
            and not any(a.pending_events for a in aggregates.values())
        ):
            raise FreshReadNeeded("nothing to write on cached reads: re-read and decide again")
        self._saving.aggregates = aggregates
        try:
            if kwargs or len(aggregates) != len(items):  # events or recorder arguments: the library's save
                recordings = super().save(*objs, **kwargs)
            else:
                recordings = self.save_aggregates(items, aggregates)
        except DataError as err:  # validation let through what the database refuses
            raise ValueRefusedError(str(err)) from err
        finally:
            self._saving.aggregates = None
        if recordings:
            self._written.position = max(r.notification.id for r in recordings)
            self.counters.add("commands")
            self.counters.add("events_appended", len(recordings))
        repository = self.repository
        if isinstance(repository, LedgerRepository):
            for aggregate in aggregates.values():
                repository.remember(deepcopy(aggregate) if copy_to_cache else aggregate)
        return recordings

    def save_aggregates(self, items: list[Aggregate], aggregates: dict[UUID, Aggregate]) -> Any:
        """The library's ``Application.save`` for aggregates without its per-object runtime Protocol
        checks (tens of µs each): pending events in one ``events.put``, then the snapshots its
        interval rule makes due. Its ``notify`` hooks are no-ops here and its cache write is off."""
        events = [event for obj in items for event in obj.collect_events()]
        recordings = self.events.put(events)
        intervals = self.snapshotting_intervals
        if self.snapshots is not None and intervals:
            for event in events:
                cls = type(aggregates[event.originator_id])
                interval = intervals.get(cls)
                if interval is not None and event.originator_version % interval == 0:
                    projector = self.snapshotting_projectors.get(cls, project_aggregate)
                    self.take_snapshot(event.originator_id, event.originator_version, projector)
        return recordings

    def construct_repository(self) -> LedgerRepository:
        """The library's repository, with reads that may skip the store (see
        :class:`~chatledger.application.repository.LedgerRepository`)."""
        maxsize = self.env.get(self.AGGREGATE_CACHE_MAXSIZE)
        return LedgerRepository(
            event_store=self.events,
            snapshot_store=self.snapshots,
            cache_maxsize=int(maxsize) if maxsize else None,
            deepcopy_from_cache=True,
        )

    def construct_event_store(self) -> GroupCommitEventStore:
        """The library's event store, committing concurrent saves together (see
        :class:`~chatledger.application.commit_queue.GroupCommitEventStore`)."""
        return GroupCommitEventStore(self.mapper, self.recorder)

    def construct_snapshot_store(self) -> SnapshotStore:
        """Snapshots at another version than their class's are passed over
        (see :class:`~chatledger.infrastructure.snapshots.SnapshotStore`)."""
        return bootstrap.build_snapshot_store(self.mapper, self.factory, self.events)

    def take_snapshot(
        self,
        aggregate_id: UUID,
        version: int | None = None,
        projector_func: Any = project_aggregate,
    ) -> None:
        """Snapshot an aggregate at ``version``: while :meth:`save` runs, from the aggregate being
        saved (at exactly that version, every event recorded), where the library would rebuild it
        from the previous snapshot and up to ``snapshot_interval`` events."""
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
