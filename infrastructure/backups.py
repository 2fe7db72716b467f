"""Copies of a store: SQLite's online backup API, PostgreSQL's COPY, in one consistent snapshot.

- **SQLite**: :func:`sqlite_copy` runs ``sqlite3.Connection.backup`` (the online
  backup API): a consistent copy of the whole file while writers go on (WAL
  mode), including the key tables; the read models' tables are then dropped from
  the copy and the file rewritten (``VACUUM``), since they hold message texts and
  slot values in plaintext, which no erasure could reach in a backup.
- **PostgreSQL**: :func:`postgres_dump` copies every table of the ledger's
  schema but the read models' with ``COPY … TO STDOUT (FORMAT binary)``, all in one ``REPEATABLE
  READ READ ONLY`` transaction (one snapshot: the tables agree with each other
  and with the seal read in it). :func:`postgres_load` loads them into the
  tables of an empty store (created by opening a ledger there) with ``COPY …
  FROM STDIN`` in one transaction, and moves the events table's sequence past
  the restored ids. No ``pg_dump`` is needed (nor its version to match the
  server's); ``pg_dump -n SCHEMA`` works too, see docs/operations.md.

Each returns what the manifest records: the newest seal (``ROOT@POSITION``) in
the copy, its head position and event count, and per file its size and SHA-256.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sqlite3
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..domain.table_prefix import DEFAULT_PREFIX, event_table_name, table_name
from .sealing import SEALS, Anchor
from .settings import Settings

SQLITE_EVENTS = "stored_events"
POSTGRES_EVENTS = "chatledger_events"
CHUNK = 1 << 20


@dataclass(frozen=True)
class CopiedStore:
    """What a copy holds: its newest seal, head, event count and files."""

    anchor: str | None
    head: int
    events: int
    files: dict[str, dict[str, Any]]
    """``file name -> {"bytes", "sha256"[, "table", "rows", "columns"]}``."""


def file_digest(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}


def _anchor(root: Any, last_id: Any) -> str:
    return str(Anchor(bytes(root), int(last_id)))


def is_derived(table: str, derived: Collection[str]) -> bool:
    """Is ``table`` a read model's (one of ``derived``, or a shadow rebuild's ``<table>__g<N>``)?"""
    return table in derived or "__g" in table


def sqlite_strip(conn: sqlite3.Connection, derived: Collection[str]) -> list[str]:
    """Drop the read models' tables from the SQLite copy ``conn`` and rewrite the file
    (``secure_delete`` and ``VACUUM``: no freed page keeps their rows); the tables dropped."""
    names = [
        r[0]
        for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        if is_derived(r[0], derived)
    ]
    conn.execute("PRAGMA secure_delete=ON")
    for name in names:
        conn.execute(f'DROP TABLE "{name}"')
    conn.commit()
    conn.execute("VACUUM")
    return names


def sqlite_place(copy: Path, target: str, derived: Collection[str]) -> None:
    """Copy the backup file ``copy`` to ``target``, without read-model tables (a backup
    made before they were left out holds them)."""
    shutil.copyfile(copy, target)
    with contextlib.closing(sqlite3.connect(target)) as conn:
        sqlite_strip(conn, derived)


def sqlite_copy(
    source: str, target: Path, derived: Collection[str] = (), prefix: str = DEFAULT_PREFIX
) -> CopiedStore:
    """Copy the SQLite store ``source`` to ``target`` with the online backup API, without
    the read models' tables ``derived`` (they hold plaintext; a restore rebuilds them)."""
    with (
        contextlib.closing(sqlite3.connect(f"{Path(source).as_uri()}?mode=ro", uri=True)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        sqlite_strip(dst, derived)
    with contextlib.closing(sqlite3.connect(f"{target.as_uri()}?mode=ro", uri=True)) as conn:
        return sqlite_facts(conn, {target.name: file_digest(target)}, prefix)


def sqlite_facts(conn: sqlite3.Connection, files: dict[str, dict[str, Any]], prefix: str = DEFAULT_PREFIX) -> CopiedStore:
    """The seal and head of the ledger of table prefix ``prefix`` in the copy (the file holds
    every ledger that shares it)."""
    seal = conn.execute(f"SELECT root, last_id FROM {table_name(prefix, SEALS)} ORDER BY seq DESC LIMIT 1").fetchone()
    head, count = conn.execute(
        f"SELECT coalesce(max(rowid), 0), count(*) FROM {event_table_name(prefix, 'events', SQLITE_EVENTS)}"
    ).fetchone()
    return CopiedStore(_anchor(*seal) if seal else None, int(head), int(count), files)


@contextlib.contextmanager
def _postgres(settings: Settings, **options: Any) -> Iterator[Any]:
    import psycopg

    t = settings.postgres_target
    with psycopg.connect(
        dbname=t.dbname, host=t.host, port=t.port, user=t.user, password=t.password, **options
    ) as conn:
        yield conn


def _schema(settings: Settings) -> str:
    return settings.postgres_schema or "public"


def _events(settings: Settings) -> str:
    return event_table_name(settings.table_prefix, "events", POSTGRES_EVENTS)


def _tables(conn: Any, schema: str, prefix: str = DEFAULT_PREFIX) -> list[str]:
    """The tables of the schema; under another prefix than the default, only those named after it
    (the default prefix's ledger has unprefixed read-model tables: it takes the schema's every table)."""
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
        "AND table_type = 'BASE TABLE' ORDER BY table_name",
        (schema,),
    ).fetchall()
    mine = prefix if prefix != DEFAULT_PREFIX else ""
    return [r[0] for r in rows if "__g" not in r[0] and r[0].startswith(mine)]  # not a shadow rebuild's tables


def _columns(conn: Any, schema: str, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
        "AND table_name = %s ORDER BY ordinal_position",
        (schema, table),
    ).fetchall()
    return [r[0] for r in rows]


def postgres_dump(
    settings: Settings, folder: Path, tables: list[str] | None = None, derived: Collection[str] = ()
) -> CopiedStore:
    """COPY every table of the ledger's schema (or ``tables``) into ``folder``, one snapshot,
    but the read models' tables ``derived`` (they hold plaintext; a restore rebuilds them)."""
    from psycopg import sql

    schema = _schema(settings)
    files: dict[str, dict[str, Any]] = {}
    with _postgres(settings) as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        names = tables if tables is not None else _tables(conn, schema, settings.table_prefix)
        names = [n for n in names if not is_derived(n, derived)]
        for table in names:
            columns = _columns(conn, schema, table)
            name = f"{table}.copy"
            path = folder / name
            query = sql.SQL("COPY {}.{} ({}) TO STDOUT (FORMAT binary)").format(
                sql.Identifier(schema),
                sql.Identifier(table),
                sql.SQL(", ").join(map(sql.Identifier, columns)),
            )
            with path.open("wb") as out, conn.cursor().copy(query) as copy:
                for data in copy:
                    out.write(data)
            rows = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(table)
                )
            ).fetchone()[0]
            files[name] = {
                **file_digest(path),
                "table": table,
                "rows": int(rows),
                "columns": columns,
            }
        seal = conn.execute(
            sql.SQL("SELECT root, last_id FROM {}.{} ORDER BY seq DESC LIMIT 1").format(
                sql.Identifier(schema), sql.Identifier(table_name(settings.table_prefix, SEALS))
            )
        ).fetchone()
        head, count = conn.execute(
            sql.SQL("SELECT coalesce(max(notification_id), 0), count(*) FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(_events(settings))
            )
        ).fetchone()
    return CopiedStore(_anchor(*seal) if seal else None, int(head), int(count), files)


def postgres_event_count(settings: Settings) -> int:
    from psycopg import sql

    with _postgres(settings) as conn:
        found = conn.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
            (_schema(settings), _events(settings)),
        ).fetchone()
        if found is None:
            return 0
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(_schema(settings)), sql.Identifier(_events(settings))
        )
        return int(conn.execute(query).fetchone()[0])


def postgres_load(
    settings: Settings, folder: Path, files: dict[str, dict[str, Any]], derived: Collection[str] = ()
) -> list[str]:
    """Load the dumped tables into the (empty) store at ``settings``, in one transaction;
    the tables it does not have (a read model this process does not define) are
    returned, not loaded. Read models' tables (``derived``; in backups made before
    they were left out) are not loaded either: the restore rebuilds them from the log."""
    from psycopg import sql

    schema = _schema(settings)
    skipped: list[str] = []
    with _postgres(settings) as conn, conn.transaction():
        present = set(_tables(conn, schema, settings.table_prefix))
        for name, facts in files.items():
            table = facts["table"]
            if is_derived(table, derived):
                continue
            if table not in present:
                skipped.append(table)
                continue
            target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
            conn.execute(sql.SQL("TRUNCATE {}").format(target))
            query = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
                target, sql.SQL(", ").join(map(sql.Identifier, facts["columns"]))
            )
            with (folder / name).open("rb") as src, conn.cursor().copy(query) as copy:
                while chunk := src.read(CHUNK):
                    copy.write(chunk)
        for table in present:
            for (column,) in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                "AND table_name = %s AND column_default LIKE 'nextval%%'",
                (schema, table),
            ).fetchall():
                conn.execute(
                    sql.SQL(
                        "SELECT setval(pg_get_serial_sequence(%s, %s), coalesce(max({}), 0) + 1, false) FROM {}"
                    ).format(
                        sql.Identifier(column),
                        sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table)),
                    ),
                    (f'"{schema}"."{table}"', column),
                )
    return skipped


def postgres_drop_schema(settings: Settings) -> None:
    from psycopg import sql

    with _postgres(settings, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(_schema(settings)))
        )


__all__ = [
    "CopiedStore",
    "file_digest",
    "is_derived",
    "postgres_drop_schema",
    "postgres_dump",
    "postgres_event_count",
    "postgres_load",
    "sqlite_copy",
    "sqlite_facts",
    "sqlite_place",
    "sqlite_strip",
]
