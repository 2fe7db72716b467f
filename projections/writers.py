"""Bulk writers for read-model handlers: ``executemany`` without SQLAlchemy's
per-row work on SQLite, ``COPY`` on PostgreSQL, and a per-batch row buffer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, Table, bindparam, select

from ..domain.batching import batched

_COMPILED: dict[tuple[Any, str, tuple[str, ...]], tuple[str, list[tuple[str, Any]]]] = {}


_INSERTS: dict[Table, Any] = {}


def executemany(
    conn: Connection, statement: Any, rows: Sequence[Any], keys: Sequence[str] | None = None
) -> None:
    """``conn.execute(statement, rows)``, minus SQLAlchemy's per-row work on SQLite.

    The statement is compiled once (per dialect and parameter names) and each
    row becomes a tuple through the columns' own bind processors, so the
    values stored are exactly what ``conn.execute`` stores; ``sqlite3`` gets
    one ``executemany``. Rows are dicts with the keys of the first, or, with
    ``keys``, sequences of values in that order (cheaper for a handler to
    build). Other dialects go through ``conn.execute`` (PostgreSQL batches the
    rows itself).
    """
    if not rows:
        return
    dialect = conn.dialect
    if dialect.name != "sqlite":
        if keys is not None:
            rows = [dict(zip(keys, row)) for row in rows]
        conn.execute(statement, list(rows))
        return
    names = tuple(keys) if keys is not None else tuple(rows[0])
    cache_key = (statement, dialect.name, names)
    entry = _COMPILED.get(cache_key)
    if entry is None:
        compiled = statement.compile(dialect=dialect, column_keys=list(names))
        params = []
        for name in compiled.positiontup or ():
            bind_type = compiled.binds[name].type
            params.append((name, bind_type.dialect_impl(dialect).bind_processor(dialect)))
        entry = _COMPILED[cache_key] = (compiled.string, params)
    sql, params = entry
    if keys is not None:
        index = {name: i for i, name in enumerate(names)}
        at = [(index[name], proc) for name, proc in params]
        data = [tuple([row[i] if proc is None else proc(row[i]) for i, proc in at]) for row in rows]
        conn.exec_driver_sql(sql, data)
        return
    plain = [name for name, proc in params if proc is None]
    if len(plain) == len(params):
        data = [tuple([row[name] for name in plain]) for row in rows]
    else:
        data = [
            tuple([row[name] if proc is None else proc(row[name]) for name, proc in params])
            for row in rows
        ]
    conn.exec_driver_sql(sql, data)


def insert_rows(
    conn: Connection, table: Table, rows: Sequence[Any], keys: Sequence[str] | None = None
) -> None:
    """Insert ``rows`` (dicts with the keys of the first, or sequences of
    values in the order of ``keys``) into ``table``.

    PostgreSQL: one ``COPY ... FROM STDIN`` (psycopg would otherwise send one
    pipelined INSERT per row); values go through the columns' bind processors
    as with ``conn.execute``. SQLite: :func:`executemany`.
    """
    if not rows:
        return
    dialect = conn.dialect
    if dialect.name != "postgresql" or dialect.driver != "psycopg":
        # One INSERT object per table: the compiled-statement cache is keyed by it.
        insert = _INSERTS.get(table)
        if insert is None:
            insert = _INSERTS[table] = table.insert()
        executemany(conn, insert, rows, keys)
        return
    from psycopg import sql

    names = list(keys) if keys is not None else list(rows[0])
    procs = [table.c[k].type.dialect_impl(dialect).bind_processor(dialect) for k in names]
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, names))
    )
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(statement) as copy:
            if keys is not None:
                for row in rows:
                    copy.write_row([v if p is None else p(v) for v, p in zip(row, procs)])
            else:
                for row in rows:
                    copy.write_row([row[k] if p is None else p(row[k]) for k, p in zip(names, procs)])
    finally:
        cursor.close()


class RowBuffer:
    """A per-batch write-back cache of one table keyed by a single column.

    Handlers read rows with :meth:`get` (loaded from the database once per
    batch), mutate the returned dicts and call :meth:`changed`; new rows go in
    with :meth:`add`. :meth:`flush` writes everything with one ``executemany``
    per statement kind (delete, update, insert), inside the batch transaction.
    """

    def __init__(self, table: Table, key: str) -> None:
        self.table = table
        self.key = key
        self._rows: dict[Any, dict[str, Any] | None] = {}
        self._in_db: set[Any] = set()
        self._dirty: set[Any] = set()
        self._columns = [c.name for c in table.columns if c.name != key]
        self._update = (
            table.update()
            .where(table.c[key] == bindparam("k_"))
            .values({c: bindparam("v_" + c) for c in self._columns})
        )
        self._delete = table.delete().where(table.c[key] == bindparam("k_"))

    def get(self, conn: Connection, key: Any) -> dict[str, Any] | None:
        if key in self._rows:
            return self._rows[key]
        row = conn.execute(select(self.table).where(self.table.c[self.key] == key)).mappings().first()
        value = dict(row) if row is not None else None
        if value is not None:
            self._in_db.add(key)
        self._rows[key] = value
        return value

    def load(self, conn: Connection, keys: Sequence[Any]) -> None:
        """Prefetch many rows in one query (keys already cached are skipped)."""
        missing = [k for k in dict.fromkeys(keys) if k not in self._rows]
        for chunk in batched(missing):
            found = {
                r[self.key]: dict(r)
                for r in conn.execute(
                    select(self.table).where(self.table.c[self.key].in_(chunk))
                ).mappings()
            }
            for k in chunk:
                self._rows[k] = found.get(k)
                if k in found:
                    self._in_db.add(k)

    def cached(self, key: Any) -> dict[str, Any] | None:
        """The row if this batch already has it (no database read)."""
        return self._rows.get(key)

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        key = row[self.key]
        self._rows[key] = row
        self._dirty.add(key)
        return row

    def changed(self, key: Any) -> None:
        self._dirty.add(key)

    def delete(self, key: Any) -> None:
        self._rows[key] = None
        self._dirty.add(key)

    def rows(self) -> Iterator[dict[str, Any]]:
        return (r for r in self._rows.values() if r is not None)

    def flush(self, conn: Connection) -> None:
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        deletes: list[dict[str, Any]] = []
        for key in self._dirty:
            row = self._rows[key]
            if row is None:
                if key in self._in_db:
                    deletes.append({"k_": key})
                    self._in_db.discard(key)
            elif key in self._in_db:
                values = {"v_" + c: row[c] for c in self._columns}
                values["k_"] = key
                updates.append(values)
            else:
                inserts.append(row)
                self._in_db.add(key)
        self._dirty.clear()
        executemany(conn, self._delete, deletes)
        executemany(conn, self._update, updates)
        insert_rows(conn, self.table, inserts)

    def clear(self) -> None:
        self._rows.clear()
        self._in_db.clear()
        self._dirty.clear()
