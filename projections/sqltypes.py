"""Column types shared by the read models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on both databases (``timestamptz`` on PostgreSQL,
    ISO text on SQLite), always read back as aware UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # The generic chain (this decorator, then SQLite's DATETIME formatting
        # through a dict) is a third of a rebuild's write time; this gives the
        # same text in one C call: 'YYYY-MM-DD HH:MM:SS.ffffff', naive UTC.
        def process(value: Any) -> str | None:
            if value is None:
                return None
            offset = value.utcoffset()
            if offset is not None and not offset:
                # Already UTC (every event time is): drop the "+00:00".
                return str(value.isoformat(" ", "microseconds")[:26])
            return str(value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds"))

        return process

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        stamp: datetime = value  # the DateTime impl has parsed it already
        if stamp.tzinfo is None:
            return stamp.replace(tzinfo=UTC)
        return stamp.astimezone(UTC)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def to_micros(value: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (exact)."""
    return (value - EPOCH) // MICROSECOND


def from_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


def seconds_to_micros(seconds: float) -> int:
    """``timedelta(seconds=...)`` in microseconds: the rounding Session.expiry uses."""
    return timedelta(seconds=seconds) // MICROSECOND


class UTCMicros(TypeDecorator[datetime]):
    """An aware UTC datetime stored as BIGINT microseconds since the epoch."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> int | None:
        return None if value is None else to_micros(value)

    def process_result_value(self, value: int | None, dialect: Dialect) -> datetime | None:
        return None if value is None else from_micros(value)
