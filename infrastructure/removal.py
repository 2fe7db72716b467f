"""What retention's removal of sessions from the live log shares across dialects.

The removal (``application/log_retention.py``) is one write transaction per
batch: the ``RetentionRecord.Removed`` event is written as any event is (its
hash row included, with the dialect's own write statements), the sessions'
events and snapshots are deleted, and each session must still be at the version
the record names (else :class:`RemovalConflictError`, nothing written: a
command appended to it meanwhile). The sessions' hash rows stay: they are the
leaves of the seals, so every seal and every anchor taken before still verifies.
"""

from __future__ import annotations

from collections.abc import Mapping
from uuid import UUID

from eventsourcing.persistence import RecordConflictError
from eventsourcing.utils import get_topic

from ..domain.retention import RetentionRecord

REMOVED_TOPIC = get_topic(RetentionRecord.Removed)


class RemovalConflictError(RecordConflictError):
    """A session to remove is no longer at the version its record names."""

    def __init__(self, changed: Mapping[UUID, int | None]) -> None:
        super().__init__(f"sessions changed since they were checked for removal: {sorted(map(str, changed))}")
        self.changed = dict(changed)


def check_versions(expected: Mapping[UUID, int], found: Mapping[UUID, int]) -> None:
    """Raise :class:`RemovalConflictError` unless every session is at its expected version."""
    changed = {sid: found.get(sid) for sid, version in expected.items() if found.get(sid) != version}
    if changed:
        raise RemovalConflictError(changed)
