"""Reading the application's notification log in batches, for catch-ups.

On SQLite this reads eventsourcing's events table directly (:func:`read_sqlite`):
``select_notifications`` turns every originator id into a ``UUID``, which a
rebuild mostly never needs. Other recorders go through ``select_notifications``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder


def read_notifications(
    recorder: ApplicationRecorder, position: int, limit: int, stop: int
) -> Sequence[Any]:
    """Notifications after ``position`` up to ``stop`` (at most ``limit``)."""
    if isinstance(recorder, SQLiteApplicationRecorder):
        return read_sqlite(recorder, position, limit, stop)
    return recorder.select_notifications(
        start=position, limit=limit, stop=stop, inclusive_of_start=False
    )


class RawRecord:
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


def read_sqlite(recorder: SQLiteApplicationRecorder, position: int, limit: int, stop: int) -> list[RawRecord]:
    statement = (
        f"SELECT rowid, originator_id, originator_version, topic, state FROM {recorder.events_table_name} "
        "WHERE rowid>? AND rowid<=? ORDER BY rowid LIMIT ?"
    )
    with recorder.datastore.transaction(commit=False) as c:
        c.execute(statement, (position, stop, limit))
        convert = recorder.convert_originator_id
        return [RawRecord(convert, *row) for row in c.fetchall()]
