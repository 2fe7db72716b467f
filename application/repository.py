"""The aggregate repository: a cache that commands write against without a read.

:class:`LedgerRepository` is eventsourcing's ``Repository`` (installed through
the Application's public ``construct_repository`` hook) with ``get``
replaced, so that one read can skip the store and the cache only moves
forward:

- ``get(id)`` (``fresh=True``, the default, what queries use): the cached
  copy fast-forwarded with the events stored after it, as the library's
  ``AGGREGATE_CACHE_FASTFORWARD`` does: one read of the store.
- ``get(id, fresh=False)`` (what commands use on their first attempt): the
  cached copy as it is, no read at all. It may be stale if another process
  (or a thread of this one) wrote since; the command's save then conflicts
  on the aggregate's version and the command is re-run with fresh reads
  (:meth:`~chatledger.application.unit_of_work.UnitOfWork.retrying`). See
  docs/architecture.md, "No read before write", for why every decision a stale
  copy could make wrongly ends in a conflict.
- a miss reconstructs from the snapshot and the events and caches the result.

Cached objects are never mutated: a fast-forward replays onto a copy, and
:meth:`remember` replaces the cached object only by one at a newer version
(two threads that saved or read the same aggregate in either order leave the
newest). Every read returns a copy of its own. :meth:`evict` (an erasure) wins
over a read or a save that began before it and caches its copy after: a copy
older than the eviction's version is not cached again.
"""

from __future__ import annotations

import threading
from copy import deepcopy
from itertools import chain
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Repository, project_aggregate


class LedgerRepository(Repository[UUID]):
    """eventsourcing's repository with reads that may skip the store (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._remember_lock = threading.Lock()
        self._evicted_at: dict[UUID, int] = {}  # an erased aggregate: the version it was erased at

    def get(
        self,
        aggregate_id: UUID,
        *,
        version: int | None = None,
        projector_func: Any = project_aggregate,
        fastforward_skipping: bool = False,
        deepcopy_from_cache: bool = True,
        fresh: bool = True,
    ) -> Any:
        cache = self.cache
        if cache is None or version is not None:
            return self.reconstruct(aggregate_id, version, projector_func)
        try:
            cached = cache.get(aggregate_id)
        except KeyError:
            aggregate = self.reconstruct(aggregate_id, None, projector_func)
            self.remember(deepcopy(aggregate))
            return aggregate
        aggregate = deepcopy(cached)
        if fresh:
            new_events = list(self.event_store.get(originator_id=aggregate_id, gt=aggregate.version))
            if new_events:
                aggregate = projector_func(aggregate, new_events)
                if aggregate is None:
                    raise AggregateNotFoundError(aggregate_id)
                self.remember(deepcopy(aggregate))
        return aggregate

    def reconstruct(self, aggregate_id: UUID, version: int | None, projector_func: Any) -> Any:
        """The aggregate from its newest snapshot (at or below ``version``) and the events after it."""
        snapshots: list[Any] = []
        if self.snapshot_store is not None:
            snapshots = list(self.snapshot_store.get(originator_id=aggregate_id, desc=True, limit=1, lte=version))
        gt = snapshots[0].originator_version if snapshots else None
        events = self.event_store.get(originator_id=aggregate_id, gt=gt, lte=version)
        aggregate = projector_func(None, chain(snapshots, events))
        if aggregate is None:
            msg = f"Aggregate {aggregate_id!r} version {version!r} not found."
            raise AggregateNotFoundError(msg)
        return aggregate

    def remember(self, aggregate: Any) -> None:
        """Cache ``aggregate`` (an object nobody else holds, at a committed
        version) unless the cache holds the same aggregate at this version or a newer one."""
        cache = self.cache
        if cache is None:
            return
        with self._remember_lock:
            try:
                cached = cache.get(aggregate.id)
            except KeyError:
                cached = None
            if aggregate.version < self._evicted_at.get(aggregate.id, 0):
                return  # read or saved before an erasure that evicted it since
            if cached is None or cached.version < aggregate.version:
                cache.put(aggregate.id, aggregate)

    def evict(self, aggregate_id: UUID, version: int) -> None:
        """Drop the cached copy of an aggregate erased at ``version``, and
        refuse to cache a copy older than that version from now on (a read or
        a save of this process that began before the erasure committed)."""
        cache = self.cache
        if cache is None:
            return
        with self._remember_lock:
            self._evicted_at[aggregate_id] = max(version, self._evicted_at.get(aggregate_id, 0))
            try:
                cache.get(aggregate_id, evict=True)
            except KeyError:
                pass


__all__ = ["LedgerRepository"]
