"""The bookkeeping tables' metadata and each read model's position.

``chatledger_projection_tracking`` holds, per read model and application,
the log position of the last event applied; it is written in the same
transaction as the read model's rows (:meth:`SQLView.advance_tracking`).
The failure and generation tables (``failures.py``, ``generations.py``)
share this metadata, so one ``TRACKING.create_all`` creates all three.
"""

from __future__ import annotations

from sqlalchemy import Column, Integer, MetaData, String, Table

TRACKING = MetaData()
tracking_table = Table(
    "chatledger_projection_tracking",
    TRACKING,
    Column("projection", String(100), primary_key=True),
    Column("application", String(100), primary_key=True),
    Column("notification_id", Integer, nullable=False),
)


class TrackingConflict(Exception):
    """Another runner advanced this projection first; the batch was rolled back."""

    def __init__(self, name: str) -> None:
        super().__init__(f"projection {name!r} was advanced by another runner")
        self.name = name
