"""Generations of a read model's tables, for rebuilds without downtime.

Generation 0 is the tables as first created, with the canonical index names.
A shadow rebuild builds generation N into tables ``<table>__g<N>`` whose
indexes are named ``<index>__g<N>``; its swap renames the live tables away
(to their own generation's suffix) and the shadow's to the canonical names.
``chatledger_projection_generations`` records which generation is live and
which one a shadow is building (see ``shadow.py``).
"""

from __future__ import annotations

from sqlalchemy import Column, Integer, MetaData, String, Table

from .prefixes import renamed_copy
from .tracking import TRACKING

generations_table = Table(
    "chatledger_projection_generations",
    TRACKING,
    Column("projection", String(100), primary_key=True),
    # The generation of the live tables (0: as first created, canonical index names).
    Column("generation", Integer, nullable=False),
    # The generation a shadow rebuild is building (tables ``<table>__g<N>``), or NULL.
    Column("shadow", Integer, nullable=True),
)
"""Which generation of each read model's tables is live, and which one a
shadow rebuild is building (see :meth:`ProjectionRunner.rebuild_shadow`)."""

SHADOW_SUFFIX = "__shadow"
"""Added to a read model's name for its shadow's tracking and failure records."""


def generation_suffix(generation: int) -> str:
    """What the tables (while a shadow) and indexes of ``generation`` add to their names."""
    return "" if generation == 0 else f"__g{generation}"


_GENERATIONS: dict[tuple[int, int, bool], tuple[MetaData, dict[str, Table]]] = {}


def retired_suffix(generation: int) -> str:
    """The name suffix a swap gives the live tables it retires (dropped next)."""
    return f"__g{generation}"


def generation_metadata(
    metadata: MetaData, generation: int, *, rename_tables: bool
) -> tuple[MetaData, dict[str, Table]]:
    """A copy of ``metadata`` for ``generation``: every index named
    ``<canonical name>__g<N>`` and, with ``rename_tables`` (a shadow being
    built), every table ``<table>__g<N>``. Returns the copy and its tables by
    canonical name. (SQLite's index names are global to the database and it
    cannot rename an index, so each generation keeps its own.)"""
    key = (id(metadata), generation, rename_tables)
    cached = _GENERATIONS.get(key)
    if cached is not None:
        return cached
    suffix = generation_suffix(generation)
    copied = renamed_copy(
        metadata, lambda name: name + suffix if rename_tables else name, lambda name: f"{name}{suffix}"
    )
    _GENERATIONS[key] = copied
    return copied
