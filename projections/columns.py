"""Columns a release adds to a read model's existing tables.

``metadata.create_all`` creates missing tables, never missing columns. A column
added to a read model's table with a ``server_default`` (0.5's ``tenant``) is
added to a store's existing table here, on open, with that default: every row
written before it gets the value that is true of it (before tenants, every row
was the default tenant's), so the read model stays current without a rebuild. A string column a release
widens (0.5: the memory and webhook keys, to hold a named tenant's scoped key) is
widened likewise on PostgreSQL (SQLite does not enforce a ``VARCHAR`` length).
"""

from __future__ import annotations

from sqlalchemy import Engine, MetaData, String, inspect

from ..domain.errors import ConfigurationError


def add_missing_columns(engine: Engine, metadata: MetaData) -> list[str]:
    """Add the columns of ``metadata``'s tables that the database's tables lack;
    ``table.column`` of each one added. A missing column without a
    ``server_default`` is a :class:`ConfigurationError` (the read model must be
    rebuilt: ``chatledger projections rebuild``)."""
    added: list[str] = []
    inspector = inspect(engine)
    missing = []
    for table in metadata.sorted_tables:
        if not inspector.has_table(table.name, schema=table.schema):
            continue
        have = {c["name"] for c in inspector.get_columns(table.name, schema=table.schema)}
        missing += [(table, c) for c in table.columns if c.name not in have]
    if not missing:
        return added
    with engine.begin() as conn:
        quote = conn.dialect.identifier_preparer
        for table, column in missing:
            default = getattr(column.server_default, "arg", None)
            if not isinstance(default, str):
                raise ConfigurationError(
                    f"The read-model table {table.name} lacks column {column.name}: rebuild it "
                    "(chatledger projections rebuild)."
                )
            literal = "'" + default.replace("'", "''") + "'"
            conn.exec_driver_sql(
                f"ALTER TABLE {quote.format_table(table)} ADD COLUMN {quote.format_column(column)} "
                f"{column.type.compile(dialect=conn.dialect)} NOT NULL DEFAULT {literal}"
            )
            added.append(f"{table.name}.{column.name}")
    return added


def widen_columns(engine: Engine, metadata: MetaData) -> list[str]:
    """On PostgreSQL, widen each ``VARCHAR`` column of ``metadata``'s existing tables
    that is narrower in the database than in the model (``ALTER COLUMN ... TYPE``: a
    wider ``varchar`` rewrites nothing); ``table.column`` of each one widened."""
    if engine.dialect.name != "postgresql":
        return []
    inspector = inspect(engine)
    narrow = []
    for table in metadata.sorted_tables:
        if not inspector.has_table(table.name, schema=table.schema):
            continue
        have = {c["name"]: c["type"] for c in inspector.get_columns(table.name, schema=table.schema)}
        for column in table.columns:
            want, got = column.type, have.get(column.name)
            if (
                isinstance(want, String) and want.length is not None
                and isinstance(got, String) and got.length is not None and got.length < want.length
            ):
                narrow.append((table, column))
    if not narrow:
        return []
    with engine.begin() as conn:
        quote = conn.dialect.identifier_preparer
        for table, column in narrow:
            conn.exec_driver_sql(
                f"ALTER TABLE {quote.format_table(table)} ALTER COLUMN {quote.format_column(column)} "
                f"TYPE {column.type.compile(dialect=conn.dialect)}"
            )
    return [f"{t.name}.{c.name}" for t, c in narrow]


__all__ = ["add_missing_columns", "widen_columns"]
