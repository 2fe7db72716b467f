"""Pydantic building blocks for event-sourced aggregates.

eventsourcing 9.5.6 ships no ``eventsourcing.pydantic`` module, so this is the
small adapter its ``examples/aggregate7``/``aggregate8`` describe: domain events
are frozen pydantic models (validated payloads, readable JSON), aggregates are
``eventsourcing.domain.BaseAggregate`` subclasses, snapshots are pydantic too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.domain import (
    BaseAggregate,
    CanInitAggregate,
    CanMutateAggregate,
    CanSnapshotAggregate,
    get_topic,
)
from pydantic import AwareDatetime, BaseModel, ConfigDict, TypeAdapter

from .errors import InvalidCommandError

_datetime = TypeAdapter(AwareDatetime)


def utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime; naive values are refused."""
    if value.tzinfo is None or value.utcoffset() is None:
        msg = f"datetime {value!r} has no timezone; pass an aware datetime (UTC)"
        raise InvalidCommandError(msg)
    return value.astimezone(UTC)


class Immutable(BaseModel):
    """A frozen value object. Sharing one instance is safe, so copies are free."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Immutable:
        return self


class DomainEvent(Immutable):
    """Base of every stored event.

    ``timestamp`` is the wall-clock time the event object was created (the
    library's recording time); ``occurred_at`` is the business time of the fact,
    from the injected clock or the caller's ``at``. Only ``occurred_at`` drives
    behaviour, so replay is the same whenever and wherever it runs.
    """

    originator_id: UUID
    originator_version: int
    timestamp: AwareDatetime
    occurred_at: AwareDatetime


class SnapshotState(Immutable):
    """Typed aggregate state inside a snapshot; subclasses declare the fields."""

    model_config = ConfigDict(frozen=True, extra="allow")

    def __init__(self, **kwargs: Any) -> None:
        for key in ("_created_on", "_modified_on"):
            if key in kwargs:
                kwargs[key] = _datetime.validate_python(kwargs[key])
        super().__init__(**kwargs)


class AggregateSnapshot(DomainEvent, CanSnapshotAggregate[UUID]):
    """A snapshot event whose ``state`` is a typed :class:`SnapshotState`."""

    topic: str
    state: Any
    occurred_at: AwareDatetime | None = None  # type: ignore[assignment]

    @classmethod
    def take(cls, aggregate: Any) -> AggregateSnapshot:
        state = dict(vars(aggregate))
        for key in ("_id", "_version", "_pending_events"):
            state.pop(key, None)
        return cls(
            originator_id=aggregate.id,
            originator_version=aggregate.version,
            timestamp=cls.create_timestamp(),
            topic=get_topic(type(aggregate)),
            state=state,
        )


class Aggregate(BaseAggregate[UUID]):
    """An aggregate whose events are pydantic :class:`DomainEvent` models."""

    @staticmethod
    def create_id(*_: Any, **__: Any) -> UUID:
        return uuid4()

    class Event(DomainEvent, CanMutateAggregate[UUID]):
        pass

    class Created(Event, CanInitAggregate[UUID]):
        originator_topic: str
