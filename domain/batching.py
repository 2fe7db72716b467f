"""Cutting a sequence into batches: the one helper every layer uses.

``itertools.batched`` arrived in Python 3.12; chatledger supports 3.11, and its
callers want slices of the sequence they hold (lists stay lists), so this is
the small version of it. It lives at the bottom layer because the read models,
the store and the use cases all bind ``IN (...)`` lists of ids.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

IN_LIST_BATCH = 500
"""Values bound in one ``IN (...)`` list: SQLite builds before 3.32 (still shipped
by some LTS distributions) bind at most 999 parameters per statement."""


def batched(items: Sequence[T], size: int = IN_LIST_BATCH) -> Iterator[Sequence[T]]:
    """Consecutive slices of ``items``, each at most ``size`` long (none if empty)."""
    if size < 1:
        raise ValueError(f"size={size} must be at least 1")
    for start in range(0, len(items), size):
        yield items[start : start + size]


__all__ = ["IN_LIST_BATCH", "batched"]
