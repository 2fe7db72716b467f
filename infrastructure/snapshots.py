"""Snapshots that do not pile up: each aggregate keeps only its newest one.

eventsourcing stores a snapshot as one more row per aggregate and version, and
never removes the older ones. A snapshot of a session holds its whole state, so
a conversation of n messages snapshotted every k events would store about
n²/2k messages' worth of snapshots (the unbounded checkpoint growth LangGraph
users run into). Only the newest snapshot is ever read for the current state,
so these recorders delete the older ones of the same aggregate in the
transaction that inserts the new one. Snapshots stay derived data: reads at an
older version (``Repository.get(version=…)``) replay from the events, and
point-in-time reads always do.

The recorders are per dialect (``sqlite/snapshots.py``, ``postgres/snapshots.py``),
selected with eventsourcing's ``PERSISTENCE_MODULE`` (a factory class topic),
see :func:`chatledger.infrastructure.persistence.eventsourcing_env`; this
module holds what they share and the snapshot store.

Snapshots carry the version of their class (``Session.Snapshot.class_version``,
stored as ``class_version`` when above 1, like an event's). A snapshot stored
at another version than its class has now is never upcast and never mis-read:
:class:`SnapshotStore` passes over it, the aggregate is replayed from its
events, and the next snapshot due replaces it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import EventStore, StoredEvent

from ..domain.pydantic_aggregates import StaleSnapshot
from .recording import KeyedStoredEvent


class SnapshotKeyGone(Exception):
    """A snapshot's key is not (or no longer) in the store: the snapshot is not written."""


def used_keys(stored_events: Sequence[StoredEvent]) -> dict[str, str]:
    """``kid -> visitor`` of the keys the snapshots' envelopes were made with."""
    return {s.kid: s.visitor_id for s in stored_events if isinstance(s, KeyedStoredEvent) and s.kid is not None}


def newest_versions(stored_events: Sequence[StoredEvent]) -> dict[UUID, int]:
    """``aggregate -> newest version`` among the snapshots (older ones are pruned)."""
    newest: dict[UUID, int] = {}
    for stored in stored_events:
        oid = UUID(str(stored.originator_id))
        newest[oid] = max(newest.get(oid, 0), stored.originator_version)
    return newest


class SnapshotStore(EventStore[UUID]):
    """The snapshot store: a snapshot stored at another version than its class's
    (:class:`~chatledger.domain.pydantic_aggregates.StaleSnapshot`) is passed over, so the
    repository replays the aggregate from its events instead."""

    def get(
        self,
        originator_id: UUID,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Iterator[Any]:
        decode = self.mapper.to_domain_event
        for stored in self.recorder.select_events(originator_id, gt=gt, lte=lte, desc=desc, limit=limit):
            try:
                yield decode(stored)
            except StaleSnapshot:
                continue

