"""SQLAlchemy engines for the read models, on the same database as the event log."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL

from ..domain.table_prefix import DEFAULT_PREFIX, PREFIX_OPTION
from .settings import Settings


def read_model_url(settings: Settings) -> URL:
    if settings.backend == "sqlite":
        return URL.create("sqlite", database=settings.sqlite_path or ":memory:")
    target = settings.postgres_target
    return URL.create(
        "postgresql+psycopg",
        username=target.user,
        password=target.password,
        host=target.host,
        port=target.port,
        database=target.dbname,
    )


def make_engine(settings: Settings, **kwargs: Any) -> Engine:
    """An engine for ``settings.database_url``; PostgreSQL honours ``?schema=``.
    Under another table prefix than the default, the engine carries it (the
    execution option ``PREFIX_OPTION``; see ``projections/prefixes.py``)."""
    engine = _make_engine(settings, **kwargs)
    if settings.table_prefix != DEFAULT_PREFIX:
        engine = engine.execution_options(**{PREFIX_OPTION: settings.table_prefix})
    return engine


def _make_engine(settings: Settings, **kwargs: Any) -> Engine:
    url = read_model_url(settings)
    if settings.backend == "sqlite":
        engine = create_engine(
            url, connect_args={"timeout": settings.sqlite_lock_timeout_s}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA secure_delete=ON")  # erased content leaves no bytes in free pages
            cursor.close()

        return engine
    connect_args: dict[str, Any] = {"connect_timeout": 10}
    schema = settings.postgres_schema
    if schema:
        connect_args["options"] = f"-csearch_path={schema}"
    return create_engine(url, connect_args=connect_args, pool_pre_ping=True, **kwargs)
