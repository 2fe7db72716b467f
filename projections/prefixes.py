"""The read models' tables under the ledger's table prefix (see ``domain/table_prefix.py``).

The tables are declared once, under the default prefix's names (the module-level
``Table`` objects). A ledger with another prefix works on copies of them, made
with SQLAlchemy's public ``Table.to_metadata(name=...)`` and cached per prefix;
its engine carries the prefix as the execution option
:data:`PREFIX_OPTION`, so any code holding a connection finds its tables with
:func:`on`. Under the default prefix every function returns what it is given.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Engine, Index, MetaData, Table
from sqlalchemy.sql.elements import conv

from ..domain.errors import ConfigurationError
from ..domain.table_prefix import DEFAULT_PREFIX, PREFIX_OPTION, table_name

_COPIES: dict[tuple[int, str], tuple[MetaData, dict[str, Table]]] = {}


def prefix_of(bind: Connection | Engine) -> str:
    """The table prefix ``bind``'s engine was made with (the default if none)."""
    prefix = bind.get_execution_options().get(PREFIX_OPTION, DEFAULT_PREFIX)
    return str(prefix)


def prefixed_metadata(metadata: MetaData, prefix: str) -> tuple[MetaData, dict[str, Table]]:
    """``metadata`` under ``prefix``: every table and index renamed
    (:func:`~chatledger.domain.table_prefix.table_name`); and its tables by their
    default-prefix name."""
    if prefix == DEFAULT_PREFIX:
        return metadata, dict(metadata.tables)
    key = (id(metadata), prefix)
    cached = _COPIES.get(key)
    if cached is not None:
        return cached
    copied = renamed_copy(metadata, lambda name: table_name(prefix, name), lambda name: table_name(prefix, name))
    _COPIES[key] = copied
    return copied


def renamed_copy(
    metadata: MetaData, table_named: Callable[[str], str], index_named: Callable[[str], str]
) -> tuple[MetaData, dict[str, Table]]:
    """A copy of ``metadata`` (SQLAlchemy's ``Table.to_metadata``) with each table and index
    renamed; and its tables by their original name. Shared by table prefixes and the shadow
    rebuild's generations."""
    copy = MetaData()
    tables: dict[str, Table] = {}
    for table in metadata.sorted_tables:
        new = table.to_metadata(copy, name=table_named(table.name))
        for index in list(new.indexes):
            new.indexes.discard(index)
        for index in table.indexes:
            columns = [new.c[c.name] for c in index.columns]
            if len(columns) != len(index.expressions):  # pragma: no cover - none today
                raise ConfigurationError(f"index {index.name} is not on plain columns")
            Index(conv(index_named(str(index.name))), *columns, unique=index.unique)
        tables[table.name] = new
    return copy, tables


def prefixed(table: Table, prefix: str) -> Table:
    """``table`` (declared under the default prefix) under ``prefix``."""
    if prefix == DEFAULT_PREFIX:
        return table
    return prefixed_metadata(table.metadata, prefix)[1][table.name]


def on(bind: Connection | Engine, table: Table) -> Table:
    """``table`` as the ledger of ``bind`` names it."""
    return prefixed(table, prefix_of(bind))
