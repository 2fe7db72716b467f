"""Connections of our own to PostgreSQL, outside eventsourcing's pool: the DDL lock that lets
processes opening one store take turns, and the check that a store exists."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from ...domain.errors import ConfigurationError
from ..settings import Settings


def conninfo(settings: Settings) -> str:
    target = settings.postgres_target
    return psycopg.conninfo.make_conninfo(**target._asdict(), connect_timeout=10)


def connect(settings: Settings) -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection, or a ConfigurationError that says what to check."""
    target = settings.postgres_target
    try:
        return psycopg.connect(conninfo(settings), autocommit=True)
    except psycopg.Error as err:
        raise ConfigurationError(
            f"Cannot reach PostgreSQL database {target.dbname!r} on {target.host}: "
            f"{err}. Check that the server runs and the URL (--database or "
            "CHATLEDGER_DATABASE_URL) is right."
        ) from err


@contextmanager
def ddl_lock(settings: Settings) -> Iterator[None]:
    """A session-level advisory lock keyed by the schema (created here if missing)."""
    key = f"chatledger-ddl:{settings.postgres_schema or 'public'}"
    with connect(settings) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
        try:
            if settings.postgres_schema:
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                        sql.Identifier(settings.postgres_schema)
                    )
                )
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))


def table_exists(settings: Settings, table: str) -> bool:
    schema = settings.postgres_schema or "public"
    with connect(settings) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = %s",
            (schema, table),
        ).fetchone()
    return found is not None
