"""Events a read model could not apply: the record kept of each, and which
errors count as the event's fault (skip and record it) rather than the
database's or the process's (stop and retry later)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from pydantic import ValidationError
from sqlalchemy import Column, Engine, Integer, String, Table, Text, func, select
from sqlalchemy import exc as sa_exc

from ..domain.errors import ConfigurationError, EventVersionError
from .drivers import PgDataError, PgError, PgIntegrityError
from .sqltypes import UTCDateTime
from .prefixes import on
from .tracking import TRACKING, TrackingConflict

failures_table = Table(
    "chatledger_projection_failures",
    TRACKING,
    Column("projection", String(100), primary_key=True),
    Column("application", String(100), primary_key=True),
    Column("notification_id", Integer, primary_key=True),
    Column("originator_id", String(100), nullable=False),
    Column("originator_version", Integer, nullable=False),
    Column("topic", Text, nullable=False),
    Column("error_type", String(200), nullable=False),
    Column("error_message", Text, nullable=False),
    Column("failed_at", UTCDateTime, nullable=False),
)
"""Events a read model could not apply (see :class:`ProjectionFailure`)."""


@dataclass(frozen=True)
class ProjectionFailure:
    """An event one read model could not apply; it was skipped by that read
    model only, and stays recorded until a rebuild applies it.

    Names the event (log position, aggregate id and version, topic) and the
    error (type and message), never the event's content."""

    projection: str
    notification_id: int
    originator_id: UUID
    originator_version: int
    topic: str
    error_type: str
    error_message: str
    failed_at: datetime


def failure_counts(engine: Engine, application_name: str) -> dict[str, int]:
    """How many events each read model (by name) could not apply."""
    table = on(engine, failures_table)
    with engine.connect() as conn:
        return dict(
            conn.execute(
                select(table.c.projection, func.count())
                .where(table.c.application == application_name)
                .group_by(table.c.projection)
            ).all()
        )


def read_failures(
    engine: Engine, application_name: str, names: Sequence[str], name: str | None = None
) -> list[ProjectionFailure]:
    """The failures of the read models ``names`` (or of ``name`` only), in log order."""
    table = on(engine, failures_table)
    query = select(table).where(
        table.c.application == application_name,
        table.c.projection.in_(list(names)),  # not a shadow's (yet)
    )
    if name is not None:
        if name not in names:
            raise ConfigurationError(
                f"No read model named {name!r} in this ledger; choose one of: "
                f"{', '.join(names)}."
            )
        query = query.where(table.c.projection == name)
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(table.c.notification_id, table.c.projection)).all()
    return [
        ProjectionFailure(
            projection=r.projection,
            notification_id=r.notification_id,
            originator_id=UUID(r.originator_id),
            originator_version=r.originator_version,
            topic=r.topic,
            error_type=r.error_type,
            error_message=r.error_message,
            failed_at=r.failed_at,
        )
        for r in rows
    ]


_STOPPING_ERRORS: tuple[type[BaseException], ...] = (
    # The database or the process failed, not one event: stop and retry later.
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,  # no connection from the pool
    OSError,
    MemoryError,
    TrackingConflict,
    # An event written by a newer release: this process cannot read it, and a
    # read model must not skip it; stop until this process is upgraded.
    EventVersionError,
)
_DATA_ERRORS: tuple[type[BaseException], ...] = (
    # What a database says of the values it was given.
    sa_exc.DataError,
    sa_exc.IntegrityError,
    PgDataError,
    PgIntegrityError,
    sqlite3.DataError,
    sqlite3.IntegrityError,
)


def is_event_error(error: BaseException) -> bool:
    """Whether ``error`` is one an event causes when a read model applies it:
    data the database refuses (``DataError``, ``IntegrityError``: a NUL, a
    NaN in JSON, a value too long), a value the driver cannot send (a lone
    surrogate), or an exception of the read model's own code. Every other
    database error (a lost connection, a lock or statement timeout, a
    deadlock, a missing table, a corrupt file), any other SQLAlchemy error,
    ``OSError``, ``MemoryError`` and any ``BaseException`` is not: a catch-up
    stops on it, as before, and retries later."""
    if not isinstance(error, Exception) or isinstance(error, _STOPPING_ERRORS):
        return False
    if isinstance(error, _DATA_ERRORS):
        return True
    if isinstance(error, sa_exc.StatementError) and not isinstance(error, sa_exc.DBAPIError):
        # A value SQLAlchemy could not bind: judge what it raised.
        cause = error.orig
        return isinstance(cause, Exception) and is_event_error(cause)
    return not isinstance(error, (sa_exc.SQLAlchemyError, PgError, sqlite3.Error))


def error_summary(error: BaseException, limit: int = 500) -> str:
    """The message of ``error`` as a failure record keeps it: without the
    values the database or pydantic would quote (SQLAlchemy's statement and
    parameters, PostgreSQL's detail and context, pydantic's inputs, the
    character a codec could not take), at most ``limit`` characters, and
    storable (no NUL, no lone surrogate)."""
    cause = getattr(error, "orig", None)
    if isinstance(error, sa_exc.StatementError) and isinstance(cause, BaseException):
        return error_summary(cause, limit)
    if isinstance(error, PgError) and error.diag.message_primary:
        text = error.diag.message_primary
    elif isinstance(error, (UnicodeEncodeError, UnicodeDecodeError)):
        verb = "encode" if isinstance(error, UnicodeEncodeError) else "decode"
        text = f"{error.encoding!r} codec can't {verb} position {error.start}: {error.reason}"
    elif isinstance(error, ValidationError):
        parts = [
            f"{'.'.join(map(str, e['loc'])) or '(event)'}: {e['msg']}"
            for e in error.errors(include_input=False, include_url=False)
        ]
        text = f"{len(parts)} validation error(s): " + "; ".join(parts)
    else:
        text = str(error)
    return clean_text(text, limit)


def error_type_name(error: BaseException) -> str:
    cls = type(error)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def clean_text(text: str, limit: int) -> str:
    """``text`` storable in any database: lone surrogates and NULs escaped."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return text if len(text) <= limit else text[: limit - 1] + "…"

