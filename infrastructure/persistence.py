"""Persistence wiring for eventsourcing's own recorders.

Turns :class:`Settings` into the environment eventsourcing reads
(``PERSISTENCE_MODULE``, ``SQLITE_DBNAME``, ``POSTGRES_*``), and provides the
pydantic mapper that stores every event as readable JSON.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from typing import Any
from uuid import UUID

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import get_topic, resolve_topic
from pydantic import ValidationError
from pydantic_core import from_json

from ..domain.actors import UNKNOWN, Cause, current_cause
from ..domain.errors import ConfigurationError
from ..domain.pydantic_aggregates import AggregateSnapshot, DomainEvent, upcast
from .event_actors import PREFIX, drop_cause, split, stamp
from .settings import Settings

_VERSION_SUFFIXES: dict[int, bytes] = {}


def version_suffix(version: int) -> bytes:
    """How a stored state at ``version`` > 1 ends: ``,"class_version":N}``
    (the writers put the key last, so a reader at that version strips it
    without parsing)."""
    suffix = _VERSION_SUFFIXES.get(version)
    if suffix is None:
        suffix = _VERSION_SUFFIXES[version] = b',"class_version":%d}' % version
    return suffix


def current_body(state: bytes, version: int) -> bytes | None:
    """``state`` without its version key if it was stored at ``version`` (the
    class's current one), ready for ``model_validate_json``; None if it was
    stored at another version (decode it as a dict and :func:`upcast` it)."""
    if version == 1:
        return state  # a stored class_version, if any, fails validation (extra field)
    suffix = version_suffix(version)
    if state.endswith(suffix):
        return state[: -len(suffix)] + b"}"
    return None


class PydanticMapper(Mapper[UUID]):
    """Stores a pydantic event as its JSON dump; reads it back with validation.

    Without compression or a cipher the stored ``state`` column is plain UTF-8
    JSON, so an auditor can read it with ``CAST(state AS TEXT)`` (SQLite) or
    ``convert_from(state, 'UTF8')`` (PostgreSQL), without this code.

    Versions (eventsourcing's ``class_version``, see ``DomainEvent``): an event
    class at version ``n > 1`` is stored with ``"class_version": n`` as the last
    key; one at version 1 without it, as the library does. An event read at its
    class's version is validated straight from the bytes (no extra cost); one
    stored at an older version is decoded, upcast and validated; one stored at a
    newer version raises ``EventVersionError``, and a snapshot at any other
    version is ``StaleSnapshot`` (ignored by the snapshot store).

    Actors (:mod:`.event_actors`): every event but a snapshot is stored with
    the actor in effect (``acting_as``, else :attr:`default_cause`) as its
    first key, taken off before validation.
    """

    default_cause: Cause = Cause(UNKNOWN)
    """The actor of events appended with none set (the ``actor`` setting)."""

    def stamped(self, domain_event: Any, body: bytes) -> bytes:
        """``body`` with the current actor in it (a snapshot's as it is)."""
        if isinstance(domain_event, AggregateSnapshot):
            return body
        return stamp(body, current_cause() or self.default_cause)

    def cause_of(self, stored_event: StoredEvent) -> Cause:
        """Who appended ``stored_event`` (``unrecorded`` before actors were)."""
        stored = stored_event.state
        if self.cipher:
            stored = self.cipher.decrypt(stored)
        if self.compressor:
            stored = self.compressor.decompress(stored)
        return split(stored)[0]

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        if not isinstance(domain_event, DomainEvent):
            msg = f"{type(domain_event).__qualname__} is not a chatledger DomainEvent"
            raise TypeError(msg)
        stored = self.stamped(domain_event, domain_event.model_dump_json().encode())
        version = type(domain_event).class_version
        if version != 1:
            stored = stored[:-1] + version_suffix(version)
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
        if stored.startswith(PREFIX):
            stored = split(stored)[1]
        cls = resolve_topic(stored_event.topic)
        body = current_body(stored, cls.class_version)
        if body is not None:
            try:
                return cls.model_validate_json(body)
            except ValidationError:
                if b'"class_version"' not in stored and b'"$actor"' not in stored:
                    raise
        return self.upcast_and_validate(cls, from_json(stored), stored_event)

    @staticmethod
    def upcast_and_validate(event_class: Any, state: dict[str, Any], stored_event: StoredEvent) -> Any:
        """Validate a decoded (and decrypted) stored state as ``event_class``, upcast first
        (the actor keys dropped, wherever they were)."""
        return event_class.model_validate(
            upcast(event_class, drop_cause(state), stored_event.originator_id, stored_event.originator_version)
        )


def eventsourcing_env(settings: Settings) -> dict[str, str]:
    """The eventsourcing environment for ``settings`` (database, cache, mapper)."""
    env: dict[str, str] = {
        "MAPPER_TOPIC": "chatledger.infrastructure.shredding_mapper:ShreddingMapper",
        "AGGREGATE_CACHE_FASTFORWARD": "y",
        "IS_SNAPSHOTTING_ENABLED": "y",
        "CHATLEDGER_TABLE_PREFIX": settings.table_prefix,  # read by the factories (prefixed_factory.py)
    }
    if settings.cache_size > 0:  # eventsourcing reads 0 as "unbounded"; ours means "off"
        env["AGGREGATE_CACHE_MAXSIZE"] = str(settings.cache_size)
    if settings.backend == "sqlite":
        path = settings.sqlite_path
        if path is not None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        database = path or "file::memory:?mode=memory&cache=shared"
        env.update(
            PERSISTENCE_MODULE="chatledger.infrastructure.sqlite:LedgerSQLiteFactory",
            APPLICATION_RECORDER_TOPIC="chatledger.infrastructure.sqlite:SQLiteLedgerRecorder",
            SQLITE_DBNAME=database,
            SQLITE_LOCK_TIMEOUT=str(settings.sqlite_lock_timeout_s),
        )
    else:
        require_postgres_driver()
        target = settings.postgres_target
        env.update(
            PERSISTENCE_MODULE="chatledger.infrastructure.postgres:LedgerPostgresFactory",
            APPLICATION_RECORDER_TOPIC="chatledger.infrastructure.postgres:PostgresLedgerRecorder",
            POSTGRES_DBNAME=target.dbname,
            POSTGRES_HOST=target.host,
            POSTGRES_PORT=str(target.port),
            POSTGRES_USER=target.user,
            POSTGRES_PASSWORD=target.password or "",
            POSTGRES_POOL_SIZE=str(settings.postgres_pool_size),
            POSTGRES_MAX_OVERFLOW=str(settings.postgres_max_overflow),
            POSTGRES_CONNECT_TIMEOUT="10",
            POSTGRES_LOCK_TIMEOUT="10",
        )
        schema = settings.postgres_schema
        if schema:
            env["POSTGRES_SCHEMA"] = schema  # created under schema_lock()
    return env


def require_postgres_driver() -> None:
    """PostgreSQL needs the ``postgres`` extra (psycopg); without it, say so."""
    if find_spec("psycopg") is None:
        raise ConfigurationError(
            "A postgresql:// store needs the PostgreSQL driver: pip install 'chatledger[postgres]'."
        )


def postgres_table_exists(settings: Settings, table: str) -> bool:
    """Whether ``table`` exists in the store's schema (a ConfigurationError if unreachable)."""
    require_postgres_driver()
    from .postgres.admin import table_exists  # the [postgres] extra: only for a PostgreSQL store

    return table_exists(settings, table)


@contextmanager
def schema_lock(settings: Settings) -> Iterator[None]:
    """Serialise table creation between processes opening one store.

    eventsourcing and SQLAlchemy create their tables with ``CREATE … IF NOT
    EXISTS`` (eventsourcing) or check-then-create (SQLAlchemy's
    ``create_all``); two processes opening a fresh store at the same moment
    still collide: PostgreSQL inside its catalog ("tuple concurrently
    updated"), SQLite with ``table … already exists``. They take turns:

    - PostgreSQL: a session-level advisory lock, keyed by the schema;
    - SQLite file: an exclusive lock on the side file ``<database>.lock``
      (:func:`_sqlite_file_lock`; the file is left in place: removing it
      would let a waiting process lock a file nobody else sees). An
      in-memory database belongs to one process and needs none.
    """
    if settings.backend != "postgresql":
        with _sqlite_schema_lock(settings):
            yield
        return
    require_postgres_driver()
    from .postgres.admin import ddl_lock  # the [postgres] extra: only for a PostgreSQL store

    with ddl_lock(settings):
        yield


_held = threading.local()  # lock paths this thread holds (schema_lock may nest)


@contextmanager
def _sqlite_schema_lock(settings: Settings) -> Iterator[None]:
    database = settings.sqlite_path
    if database is None or (settings.url().database or "").startswith("file:"):
        yield
        return
    path = database + ".lock"
    held: set[str] = _held.__dict__.setdefault("paths", set())
    if path in held or not os.path.isdir(os.path.dirname(path)):
        # Nested in this thread; or no folder, so no database to race on
        # (opening it fails on its own, with its own message).
        yield
        return
    with _sqlite_file_lock(path):
        held.add(path)
        try:
            yield
        finally:
            held.discard(path)


@contextmanager
def _sqlite_file_lock(path: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing), blocking until
    it is free. POSIX: ``flock``, which belongs to the open file, so threads
    of one process take turns too, and which is independent of the POSIX
    record locks SQLite takes on the database file. Windows: ``msvcrt.locking``
    of the first byte (not tested here)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        # A folder we may not write to: no lock file, and no tables could be
        # created there by anyone; SQLite reports whatever else is wrong.
        yield
        return
    try:
        _lock_file(fd)
        try:
            yield
        finally:
            _unlock_file(fd)
    finally:
        os.close(fd)


if fcntl is not None:

    def _lock_file(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)

    def _unlock_file(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

else:  # pragma: no cover - Windows
    import msvcrt

    def _lock_file(fd: int) -> None:
        while True:  # LK_LOCK gives up after ten 1-second tries; keep waiting
            try:
                msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                return
            except OSError:
                continue

    def _unlock_file(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
