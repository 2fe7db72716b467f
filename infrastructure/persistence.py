"""Persistence wiring for eventsourcing's own recorders.

Turns :class:`Settings` into the environment eventsourcing reads
(``PERSISTENCE_MODULE``, ``SQLITE_DBNAME``, ``POSTGRES_*``), and provides the
pydantic mapper that stores every event as readable JSON.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg
from chatledger.domain.errors import ConfigurationError
from chatledger.domain.model import DomainEvent
from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import get_topic, resolve_topic
from psycopg import sql

from .settings import Settings


class PydanticMapper(Mapper[UUID]):
    """Stores a pydantic event as its JSON dump; reads it back with validation.

    Without compression or a cipher the stored ``state`` column is plain UTF-8
    JSON, so an auditor can read it with ``CAST(state AS TEXT)`` (SQLite) or
    ``convert_from(state, 'UTF8')`` (PostgreSQL), without this code.
    """

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        if not isinstance(domain_event, DomainEvent):
            msg = f"{type(domain_event).__qualname__} is not a chatledger DomainEvent"
            raise TypeError(msg)
        stored = domain_event.model_dump_json().encode()
        if self.compressor:
            stored = self.compressor.compress(stored)
        if self.cipher:
            stored = self.cipher.encrypt(stored)
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=get_topic(type(domain_event)),
            state=stored,
        )

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        stored = stored_event.state
        if self.cipher:
            stored = self.cipher.decrypt(stored)
        if self.compressor:
            stored = self.compressor.decompress(stored)
        cls = resolve_topic(stored_event.topic)
        return cls.model_validate_json(stored)


def eventsourcing_env(settings: Settings) -> dict[str, str]:
    """The eventsourcing environment for ``settings`` (database, cache, mapper)."""
    url = settings.url()
    env: dict[str, str] = {
        "MAPPER_TOPIC": "chatledger.infrastructure.shredding:ShreddingMapper",
        "AGGREGATE_CACHE_FASTFORWARD": "y",
        "IS_SNAPSHOTTING_ENABLED": "y",
    }
    if settings.cache_size > 0:  # eventsourcing reads 0 as "unbounded"; ours means "off"
        env["AGGREGATE_CACHE_MAXSIZE"] = str(settings.cache_size)
    if settings.backend == "sqlite":
        database = url.database or ":memory:"
        if database == ":memory:":
            database = "file::memory:?mode=memory&cache=shared"
        else:
            database = os.path.abspath(database)
            os.makedirs(os.path.dirname(database), exist_ok=True)
        env.update(
            PERSISTENCE_MODULE="chatledger.infrastructure.snapshots:LedgerSQLiteFactory",
            APPLICATION_RECORDER_TOPIC="chatledger.infrastructure.recorders:SQLiteLedgerRecorder",
            SQLITE_DBNAME=database,
            SQLITE_LOCK_TIMEOUT=str(settings.sqlite_lock_timeout_s),
        )
    else:
        env.update(
            PERSISTENCE_MODULE="chatledger.infrastructure.snapshots:LedgerPostgresFactory",
            APPLICATION_RECORDER_TOPIC="chatledger.infrastructure.recorders:PostgresLedgerRecorder",
            POSTGRES_DBNAME=url.database or "postgres",
            POSTGRES_HOST=url.host or "127.0.0.1",
            POSTGRES_PORT=str(url.port or 5432),
            POSTGRES_USER=url.username or "postgres",
            POSTGRES_PASSWORD=url.password or "",
            POSTGRES_POOL_SIZE=str(settings.postgres_pool_size),
            POSTGRES_MAX_OVERFLOW=str(settings.postgres_max_overflow),
            POSTGRES_CONNECT_TIMEOUT="10",
            POSTGRES_LOCK_TIMEOUT="10",
        )
        schema = settings.postgres_schema
        if schema:
            env["POSTGRES_SCHEMA"] = schema  # created under schema_lock()
    return env


def psycopg_conninfo(settings: Settings) -> str:
    url = settings.url()
    return psycopg.conninfo.make_conninfo(
        dbname=url.database or "postgres",
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password or None,
        connect_timeout=10,
    )


@contextmanager
def schema_lock(settings: Settings) -> Iterator[None]:
    """Serialise table creation between processes opening one PostgreSQL store.

    eventsourcing and SQLAlchemy create their tables with ``CREATE … IF NOT
    EXISTS``; two servers starting at the same moment can still collide inside
    PostgreSQL's catalog ("tuple concurrently updated"). A session-level
    advisory lock, keyed by the schema, makes them take turns. SQLite needs
    nothing: its writers are serialised already.
    """
    if settings.backend != "postgresql":
        yield
        return
    key = f"chatledger-ddl:{settings.postgres_schema or 'public'}"
    try:
        conn = psycopg.connect(psycopg_conninfo(settings), autocommit=True)
    except psycopg.Error as err:
        raise ConfigurationError(
            f"Cannot reach PostgreSQL for {settings.database_url!r}: {err}. "
            "Check that the server runs and the URL is right."
        ) from err
    with conn:
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
