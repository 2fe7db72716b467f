"""Read models derived from the event log; each can be rebuilt from scratch.

``DEFAULT_READ_MODELS`` lists the projections every :class:`ChatLedger` keeps.
"""

from __future__ import annotations

from .base import ReadModel

DEFAULT_READ_MODELS: list[type[ReadModel]] = []

__all__ = ["DEFAULT_READ_MODELS", "ReadModel"]
