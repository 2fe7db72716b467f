"""The composition root: what a ledger is built from, made from its settings.

One place builds the parts of a :class:`~chatledger.ChatLedger`: its
settings, policy and clock (checked, with defaults), the event store's
environment and schema lock, the key ring of the encrypting mapper, the
snapshot store, the read-model runner (:class:`ProjectionRunner`) and the background
jobs. Nothing here holds state; :class:`~chatledger.application.unit_of_work.UnitOfWork`
and the facade call these once each.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from ..domain.actors import Cause
from ..domain.errors import ConfigurationError, InvalidPolicyError
from ..domain.policy import SessionPolicy
from ..domain.table_prefix import event_table_name
from ..domain.tenancy import DEFAULT_TENANT
from ..infrastructure.database import make_engine
from ..infrastructure.key_providers import provider_from_settings
from ..infrastructure.key_ring import KeyRing
from ..infrastructure.ledger_recorders import as_ledger_recorder
from ..infrastructure.persistence import PydanticMapper, eventsourcing_env, postgres_table_exists, schema_lock
from ..infrastructure.scheduler import BackgroundJobs
from ..infrastructure.settings import Settings
from ..infrastructure.shredding_mapper import ShreddingMapper
from ..infrastructure.snapshots import SnapshotStore
from ..projections import DEFAULT_READ_MODELS
from ..projections.read_model import ReadModel
from ..projections.runner import ProjectionRunner
from .clock import Clock, system_clock
from .tenancy import tenant_handle


def components(
    settings: Settings | None,
    policy: SessionPolicy | None,
    clock: Clock | None,
    read_models: Sequence[type[ReadModel]] | None,
) -> tuple[Settings, SessionPolicy, Clock, list[type[ReadModel]]]:
    """The ledger's settings, policy, clock and read models: the given ones,
    checked, or the defaults."""
    if settings is not None and not isinstance(settings, Settings):
        raise ConfigurationError(f"settings must be a chatledger Settings, not {type(settings).__name__}.")
    if policy is not None and not isinstance(policy, SessionPolicy):
        raise InvalidPolicyError(f"policy must be a SessionPolicy, not {type(policy).__name__}.")
    if clock is not None and not callable(clock):
        raise ConfigurationError(f"clock must be a callable returning an aware datetime, not {type(clock).__name__}.")
    return (
        settings or Settings(),
        policy or SessionPolicy(),
        clock or system_clock,
        list(DEFAULT_READ_MODELS if read_models is None else read_models),
    )


def open_settings(database_url: str | None, **settings: Any) -> Settings:
    """The settings of ``ChatLedger.open(database_url, **settings)``."""
    if database_url is not None:
        settings["database_url"] = database_url
    return Settings(**settings)


def store_env(settings: Settings) -> dict[str, str]:
    """The eventsourcing environment (persistence module, URL, tables) of the store."""
    return eventsourcing_env(settings)


def store_lock(settings: Settings) -> AbstractContextManager[Any]:
    """Held while tables are created, so processes opening one store do not race."""
    return schema_lock(settings)


def unopenable_sqlite_store(settings: Settings, err: Exception) -> ConfigurationError:
    """The error for a SQLite path that cannot hold a store (a folder, a file that is
    not SQLite, a path under a file, no permission)."""
    path = settings.sqlite_path or os.path.abspath("")
    return ConfigurationError(
        f"Cannot open the SQLite database at {path} ({type(err).__name__}: {err}). Check "
        "--database (or CHATLEDGER_DATABASE_URL): it must name a chatledger SQLite file, "
        "or a new one in a folder this process can write to."
    )


def install_key_ring(mapper: Any, recorder: Any) -> None:
    """Give the encrypting mapper its per-visitor keys (kept in the same database)."""
    ours = as_ledger_recorder(recorder)
    if isinstance(mapper, ShreddingMapper) and ours is not None:
        mapper.key_ring = KeyRing(ours)


def configure_actor(mapper: Any, settings: Settings) -> None:
    """The actor of events appended with none set (the ``actor`` setting)."""
    if isinstance(mapper, PydanticMapper):
        mapper.default_cause = Cause(settings.actor)


def install_key_provider(recorder: Any, settings: Settings) -> None:
    """Wrap the content keys with the master key provider the settings name, if any."""
    ours = as_ledger_recorder(recorder)
    if ours is not None:
        ours.key_provider = provider_from_settings(settings)


def close_key_provider(recorder: Any) -> None:
    ours = as_ledger_recorder(recorder)
    close = getattr(ours.key_provider, "close", None) if ours is not None else None
    if close is not None:
        close()


def configure_sealer(recorder: Any, settings: Settings) -> None:
    """How often this process seals the log in-process (see :mod:`~chatledger.infrastructure.sealing`)."""
    ours = as_ledger_recorder(recorder)
    if ours is not None:
        ours.seal_every = settings.seal_every_events


def build_snapshot_store(mapper: Any, factory: Any, events: Any = None) -> SnapshotStore:
    """Snapshots at another version than their class's are passed over
    (see :class:`~chatledger.infrastructure.snapshots.SnapshotStore`)."""
    return SnapshotStore(mapper=mapper, recorder=factory.aggregate_recorder(purpose="snapshots"), events=events)


def build_projector(
    name: str, recorder: Any, mapper: Any, settings: Settings, read_models: Sequence[type[ReadModel]]
) -> ProjectionRunner:
    """The read-model runner: ``read_models``' tables in the store's database."""
    with schema_lock(settings):
        return ProjectionRunner(
            name,
            recorder,
            mapper,
            make_engine(settings),
            read_models,
            ddl_lock=lambda: schema_lock(settings),
        )


def start_jobs(
    ledger: Any, interval: float, retention: Any, projections_interval: float | None
) -> BackgroundJobs:
    """The background jobs of ``ledger`` (the facade: its ``sweep``, ``catch_up`` and, with a
    :class:`~chatledger.application.retention.RetentionPolicy` as ``retention``, ``archive_closed_sessions``
    run as the jobs), started once: ``ledger.background`` until :func:`stop_jobs`. Typed loosely
    so that this module imports no use case. The store's jobs are the operator's: a named
    tenant's handle refuses them (they would hand it the operator's ledger)."""
    ledger.refuse_on_tenant_handle("start_background_jobs()")
    if ledger.background is None:
        jobs = BackgroundJobs(  # the store's jobs, run as the operator's (default tenant's) ledger
            tenant_handle(ledger, DEFAULT_TENANT), interval=interval, retention=retention, projections_interval=projections_interval
        )
        jobs.start()
        ledger.background = jobs
    return ledger.background  # type: ignore[no-any-return]


def stop_jobs(ledger: Any) -> None:
    """Stop the background jobs of ``ledger``, if started."""
    jobs, ledger.background = ledger.background, None
    if jobs is not None:
        jobs.stop()


@contextmanager
def jobs_running(
    ledger: Any, interval: float, retention: Any, projections_interval: float | None
) -> Iterator[BackgroundJobs]:
    """The background jobs of ``ledger``, running while the ``with`` block runs."""
    jobs = start_jobs(ledger, interval, retention, projections_interval)
    try:
        yield jobs
    finally:
        stop_jobs(ledger)


def require_existing_store(database: str | None) -> None:
    """Refuse a SQLite file that does not exist (before anything opens, and so creates, it).

    The read-only commands of the command line call this: a mistyped path must not become a new empty
    database (and new folders) that then reports "no session" or zeros.
    ``sqlite:///:memory:`` passes unchecked. On PostgreSQL the schema (``public``
    without ``?schema=``) must hold a chatledger store: a mistyped schema would
    otherwise be created, with empty tables that verify "OK" and read as zeros.
    """
    settings = Settings(database_url=database) if database is not None else Settings()
    if settings.backend != "sqlite":
        require_existing_postgres_store(settings)
        return
    path = settings.sqlite_path
    if path is None:
        return
    if not os.path.isfile(path):
        raise ConfigurationError(
            f"No SQLite database at {path}; nothing was created. Check --database "
            "(or CHATLEDGER_DATABASE_URL); only demo, worker, events deliver "
            "and projections catch-up/rebuild/run create a new database."
        )
    try:
        with contextlib.closing(sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True)) as conn:
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                (event_table_name(settings.table_prefix, "events", "stored_events"),),
            ).fetchone()
    except sqlite3.Error as err:
        raise ConfigurationError(f"Cannot read the SQLite database at {path} ({err}); check --database.") from err
    if found is None:
        raise ConfigurationError(
            f"No chatledger store in the SQLite file {path}; nothing was written to it. Check "
            "--database (or CHATLEDGER_DATABASE_URL)."
        )


def require_existing_postgres_store(settings: Settings) -> None:
    schema = settings.postgres_schema or "public"
    found = postgres_table_exists(settings, event_table_name(settings.table_prefix, "events", "chatledger_events"))
    if not found:
        raise ConfigurationError(
            f"No chatledger store in schema {schema!r} of PostgreSQL database "
            f"{settings.postgres_target.dbname!r}; "
            "nothing was created. Check --database (or CHATLEDGER_DATABASE_URL) and its ?schema=; "
            "only demo, worker, events deliver and projections catch-up/rebuild/run create a new store."
        )


__all__ = [
    "build_projector",
    "build_snapshot_store",
    "close_key_provider",
    "components",
    "configure_actor",
    "install_key_provider",
    "install_key_ring",
    "jobs_running",
    "open_settings",
    "require_existing_postgres_store",
    "require_existing_store",
    "start_jobs",
    "stop_jobs",
    "store_env",
    "store_lock",
    "unopenable_sqlite_store",
]
