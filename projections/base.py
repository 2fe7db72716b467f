"""Former home of the projection machinery, kept as a re-export module.

What it held now lives in modules named after it: ``view.py`` (SQLView),
``read_model.py`` (ReadModel bases), ``runner.py`` (ProjectionRunner, alias
``Projector``), ``catch_up.py``, ``shadow.py`` and ``generations.py`` (shadow
rebuilds), ``failures.py``, ``tracking.py``, ``status.py``, ``log_reader.py``,
``writers.py`` and ``gc_pause.py``. Import from those; this module goes away
once nothing imports it.
"""

from __future__ import annotations

from .catch_up import CatchUp
from .failures import ProjectionFailure, error_summary, failures_table, is_event_error
from .gc_pause import gc_paused
from .generations import (
    SHADOW_SUFFIX,
    generation_metadata,
    generation_suffix,
    generations_table,
)
from .log_reader import RawRecord, read_notifications
from .read_model import (
    HandlerTableReadModel,
    ReadModel,
    batch_ids,
    personal_set,
    topic_set,
)
from .runner import ProjectionRunner, Projector
from .shadow import SWAP_ATTEMPTS, SWAP_LOCK_TIMEOUT_MS, ShadowRebuilds
from .status import Progress, ProjectionStatus
from .tracking import TRACKING, TrackingConflict, tracking_table
from .view import BULK_WAL_PAGES, SQLView
from .writers import RowBuffer, executemany, insert_rows

__all__ = [
    "BULK_WAL_PAGES",
    "SHADOW_SUFFIX",
    "SWAP_ATTEMPTS",
    "SWAP_LOCK_TIMEOUT_MS",
    "TRACKING",
    "CatchUp",
    "HandlerTableReadModel",
    "Progress",
    "ProjectionFailure",
    "ProjectionRunner",
    "ProjectionStatus",
    "Projector",
    "RawRecord",
    "ReadModel",
    "RowBuffer",
    "SQLView",
    "ShadowRebuilds",
    "TrackingConflict",
    "batch_ids",
    "error_summary",
    "executemany",
    "failures_table",
    "gc_paused",
    "generation_metadata",
    "generation_suffix",
    "generations_table",
    "insert_rows",
    "is_event_error",
    "personal_set",
    "read_notifications",
    "topic_set",
    "tracking_table",
]
